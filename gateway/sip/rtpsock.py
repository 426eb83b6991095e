"""The UDP sockets the media plane serves a call's RTP on, bound here by the worker (its SDP
names them before the plane has heard of the call) and handed to the plane with the call.

A call takes an even port for RTP and the odd one above it for RTCP (RFC 3550 11) from the
worker's slice of sip.rtp_ports, which it shares with pjsua's own (unused, never advertised)
media sockets: a port either of them holds is skipped.
"""

from __future__ import annotations

import errno
import socket

from gateway.errors import SipedgeError


class NoRtpPort(SipedgeError):
    """Every port pair of the range is taken."""


class RtpSockets:
    def __init__(self, host: str, start: int, end: int) -> None:
        self.host = host
        self._first = start + (start % 2)  # an even port
        self._pairs = max(0, (end - self._first + 1) // 2)
        self._next = 0

    def bind(self) -> tuple[socket.socket, socket.socket]:
        """A bound (RTP, RTCP) pair; NoRtpPort when none is free."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        for _ in range(self._pairs):
            port = self._first + 2 * self._next
            self._next = (self._next + 1) % self._pairs
            rtp = socket.socket(family, socket.SOCK_DGRAM)
            rtcp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                rtp.bind((self.host, port))
                rtcp.bind((self.host, port + 1))
            except OSError as exc:
                rtp.close()
                rtcp.close()
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return rtp, rtcp
        raise NoRtpPort(f"no free RTP port pair in {self.host}:{self._first}-"
                        f"{self._first + 2 * self._pairs - 1}")  # fmt: skip
