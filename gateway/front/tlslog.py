"""TLS handshakes the front refused, read from its log: Kamailio's tls module logs a failed
handshake as OpenSSL's reason, then the peer's address, on lines of their own. Pure: lines in,
refusals out.

    tls_err_ret(): TLS accept:error:0A000086:SSL routines::certificate verify failed (sni: ...)
    tls_h_read_f(): src addr: 127.0.0.1:45671
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.config import Config

_ERROR = re.compile(
    r"tls_err_ret\(\): TLS (?P<op>\w+):error:[0-9A-Fa-f]+:[^:]*:[^:]*:(?P<reason>.+?)"
    r"(?: \(sni: [^)]*\))?$"
)
_PEER = re.compile(r"tls_h_read_f\(\): src addr: (?P<peer>\S+)$")


@dataclass(frozen=True)
class TlsRefusal:
    """One refused handshake: `in` when a peer connected to the front (its certificate, if
    it sent one, did not verify), `out` when the front connected to a carrier."""

    direction: str
    reason: str  # OpenSSL's, e.g. "certificate verify failed", "unsupported protocol"
    peer: str  # ip:port, or "unknown"
    trunk: str | None = None  # the TLS trunk whose registrar or proxy the peer is

    def log_line(self) -> str:
        trunk = f" trunk={self.trunk}" if self.trunk else ""
        return (
            f"event=front_tls_refused direction={self.direction} peer={self.peer}{trunk} "
            f'reason="{self.reason}"'
        )


class TlsRefusals:
    """Turns the front's log lines into TlsRefusal, naming the trunk of an outbound peer."""

    def __init__(self, config: Config) -> None:
        self._pending: tuple[str, str] | None = None
        self._trunks = _tls_targets(config)

    def feed(self, message: str) -> TlsRefusal | None:
        """The refusal this line completes, if any (a reason waits for its peer line)."""
        error = _ERROR.search(message)
        if error is not None:
            direction = "in" if error.group("op") == "accept" else "out"
            self._pending = (direction, error.group("reason").strip())
            return None
        peer = _PEER.search(message)
        if peer is not None and self._pending is not None:
            direction, reason = self._pending
            self._pending = None
            where = peer.group("peer")
            trunk = self._trunks.get(where) if direction == "out" else None
            return TlsRefusal(direction, reason, where, trunk)
        return None


def _tls_targets(config: Config) -> dict[str, str]:
    """host:port of each TLS trunk's registrar and proxy -> its id (port 5061 when none)."""
    targets: dict[str, str] = {}
    for trunk in config.trunks:
        if trunk.transport != "tls":
            continue
        for uri in (trunk.registrar, trunk.proxy):
            if uri is None:
                continue
            hostport = uri.split(":", 1)[1].split(";", 1)[0]
            if not re.search(r":\d+$", hostport):
                hostport += ":5061"
            targets.setdefault(hostport, trunk.id)
    return targets
