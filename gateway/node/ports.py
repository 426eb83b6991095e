"""Before a node starts: is every port it binds free? If not, name the key, the port and, when
this machine lets us see it, the process holding it (`mqtt.port 1883 is already in use ...`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from gateway.config import Config, Listener, listeners
from gateway.errors import SipedgeError

# Checked in the order the node binds them; RTP ports are taken per call from a range, so a
# few busy ones are skipped by pjsua and not a reason to refuse the start.
_ORDER = ("mqtt.port", "sip.port", "sip.front.port", "sip.front.worker_ports_start", "api.port")


class PortInUse(SipedgeError):
    """A port the node needs is bound by another process."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def check_ports_free(config: Config) -> None:
    """Raise PortInUse naming each busy listener (key, port, protocol and holder)."""
    # An external front owns sip.port and its socket for the workers (it may well run on
    # this machine): not ours to bind. The workers' ports are.
    external = config.sip.front.mode == "external"
    skip = {"sip.port", "sip.front.port"} if external else set()
    wanted = sorted(
        (b for b in listeners(config) if b.key in _ORDER and b.key not in skip),
        key=lambda b: _ORDER.index(b.key),
    )
    problems = [_describe(b) for b in wanted if not _bindable(b)]
    if problems:
        raise PortInUse(problems)


def _bindable(listener: Listener) -> bool:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    kind = socket.SOCK_STREAM if listener.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            # A connection of a stopped node in TIME_WAIT does not stop a new listener.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.first))
        except OSError:
            return False
    return True


def _describe(listener: Listener) -> str:
    where = f"{listener.protocol.upper()} {listener.host}:{listener.first}"
    holder = port_holder(listener.protocol, listener.first)
    by = f", by {holder}" if holder else ""
    return f"{listener.key} {listener.first} is already in use ({where}{by})"


def port_holder(protocol: str, port: int) -> str | None:
    """`pid 123 (mosquitto -c /tmp/...)` for a socket bound to `port`, when /proc shows it
    (processes of other users are not visible)."""
    inodes = _socket_inodes(protocol, port)
    if not inodes:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return f"pid {pid} ({_command(pid)})"
    return None


def _socket_inodes(protocol: str, port: int) -> set[str]:
    found: set[str] = set()
    for table in (protocol, protocol + "6"):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            listening = protocol == "udp" or state == "0A"  # TCP_LISTEN
            if listening and int(local.rsplit(":", 1)[1], 16) == port and inode != "0":
                found.add(inode)
    return found


def _command(pid: str) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv if a)
    return text if len(text) <= 80 else text[:77] + "..."
