"""WebSocket data frames (RFC 6455 5.2) on the fast path of an open connection, sans-IO: a
client's masked text/binary frame out, and the scan of what a server sent for the frames the
session reads fifty times a second. Everything else (the opening and closing handshakes,
ping/pong, fragments, errors) stays with websockets' protocol (gateway/session/wschannel.py
hands it those bytes): these two functions only save its per-frame Python.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask  # websockets' C helper, as its frames use
except ImportError:  # a build without it
    from websockets.utils import apply_mask

TEXT, BINARY = 0x1, 0x2
_FIN = 0x80
_MASKED = 0x80
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
_LEN_16 = struct.Struct("!H")
_LEN_64 = struct.Struct("!Q")
MASK_KEYS = 256  # mask keys drawn from the OS at a time (one getrandom per 256 frames)


class MaskKeys:
    """Masking keys from os.urandom (RFC 6455 5.3: a strong source of entropy), drawn in
    blocks so that a frame costs no system call."""

    def __init__(self) -> None:
        self._block = b""
        self._next = 0

    def take(self) -> bytes:
        if self._next >= len(self._block):
            self._block, self._next = os.urandom(4 * MASK_KEYS), 0
        key = self._block[self._next : self._next + 4]
        self._next += 4
        return key


def client_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """One final, unfragmented frame from a client, its payload masked with `key`."""
    size = len(payload)
    if size < 126:
        head = bytes((_FIN | opcode, _MASKED | size))
    elif size < 65536:
        head = _HEAD_16.pack(_FIN | opcode, _MASKED | 126, size)
    else:
        head = _HEAD_64.pack(_FIN | opcode, _MASKED | 127, size)
    return head + key + apply_mask(payload, key)


class Scan(NamedTuple):
    """What the bytes at a position hold.

    - `end == 0`: not a whole frame yet (wait for more bytes);
    - `data`: a whole final text/binary frame, unmasked, no reserved bits, within the size
      limit: its payload is buffer[start:end];
    - otherwise (a control frame, a fragment, anything odd) buffer[pos:end] is a whole frame
      for websockets to handle; `end == -1`: give websockets everything from pos on (a
      frame too big to wait for, which it refuses as soon as it reads the header)."""

    data: bool
    opcode: int
    start: int
    end: int


NEED_MORE = Scan(False, 0, 0, 0)
HAND_OVER = Scan(False, 0, 0, -1)


def scan(buffer: bytes | bytearray, pos: int, max_size: int) -> Scan:
    """The frame a server sent starting at buffer[pos]."""
    available = len(buffer) - pos
    if available < 2:
        return NEED_MORE
    first, second = buffer[pos], buffer[pos + 1]
    size = second & 0x7F
    start = pos + 2
    if size == 126:
        if available < 4:
            return NEED_MORE
        (size,) = _LEN_16.unpack_from(buffer, start)
        start += 2
    elif size == 127:
        if available < 10:
            return NEED_MORE
        (size,) = _LEN_64.unpack_from(buffer, start)
        start += 8
    if size > max_size:
        return HAND_OVER
    if second & _MASKED:
        start += 4  # a masked frame from a server is an error: websockets says so
    end = start + size
    if end > len(buffer):
        return NEED_MORE
    opcode = first & 0x0F
    plain = first & 0xF0 == _FIN and not second & _MASKED  # final, no RSV bits, unmasked
    return Scan(plain and opcode in (TEXT, BINARY), opcode, start, end)
