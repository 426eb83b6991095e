"""A private mosquitto on 127.0.0.1, for `mqtt.embedded: true` and for tests.

The broker gets a generated config in its own temp dir; start() returns once it accepts TCP
connections, stop() terminates it by PID. It can be stopped and started again on the same
port (and, with persistence, with the same sessions and queued messages).
"""

from __future__ import annotations

import ctypes
import getpass
import logging
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.errors import SipedgeError

log = logging.getLogger("gateway.broker")  # the name it logged under before the move

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerError(SipedgeError):
    """The embedded broker could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_mosquitto() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for path in MOSQUITTO_PATHS:
        if Path(path).exists():
            return path
    raise BrokerError("mosquitto not found; install the Debian package `mosquitto`")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent's starting thread ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EmbeddedBroker:
    """mosquitto bound to `host:port` (a free port when port is None)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        persistence: bool = False,
        binary: str | None = None,
        start_timeout: float = 5.0,
        die_with_parent: bool = False,
    ) -> None:
        """`die_with_parent`: the kernel ends mosquitto when the thread that starts it ends
        (PR_SET_PDEATHSIG): the node starts it on its main thread, so a node killed -9 does
        not leave its broker holding the port. Off for brokers started from other threads."""
        self.host = host
        self._auto_port = port is None
        self.port = port or free_port(host)
        self.persistence = persistence
        self.binary = binary or find_mosquitto()
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._dir = tempfile.TemporaryDirectory(prefix="sipedge-mosquitto-")
        self.config_path = Path(self._dir.name) / "mosquitto.conf"
        self.log_path = Path(self._dir.name) / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            # mosquitto started as root drops to user `mosquitto`, which cannot write our dir.
            f"user {getpass.getuser()}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "max_queued_messages 100000",
        ]
        if self.persistence:
            lines += [f"persistence_location {self._dir.name}/", "autosave_interval 1"]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            return
        for _attempt in range(3):
            if self._spawn_and_wait():
                return
            if not self._auto_port:
                break
            self.port = free_port(self.host)  # someone took the free port first; pick another
        if not _port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} is already in use (TCP {self.host}:{self.port}); "
                "mosquitto was not started"
            )
        raise BrokerError(
            f"mosquitto did not start on {self.host}:{self.port}; log: {self._log_tail()}"
        )

    def _spawn_and_wait(self) -> bool:
        if not _port_free(self.host, self.port):
            # Connecting would reach whoever holds the port and look like success.
            log.warning("event=broker_port_busy host=%s port=%d", self.host, self.port)
            return False
        self._write_config()
        proc = self._proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            # Its own process group: Ctrl-C at the terminal must not take the broker down
            # before the node has drained and published its last events.
            process_group=0,
            preexec_fn=_end_with_parent if self.die_with_parent else None,  # noqa: PLW1509
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    log.info("event=broker_started host=%s port=%d pid=%d",
                             self.host, self.port, proc.pid)  # fmt: skip
                    return True
            except OSError:
                time.sleep(0.02)
        self.stop()
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after `timeout`)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("event=broker_stopped port=%d pid=%d", self.port, proc.pid)

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-400:].strip()
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
