"""Fast access to a pjsua2 ByteVector's contiguous buffer.

SWIG's element-by-element conversion (`bytes(frame.buf)`) costs ~250 µs per 20 ms frame, which
alone would cap a core at a few dozen calls. A `std::vector<unsigned char>` keeps its data as
three pointers (begin, end, capacity end) at the start of the object; reading begin/end through
ctypes gives the buffer in under 1 µs. The layout is verified once at import; if it ever differs
(another C++ runtime), the slow but always-correct SWIG path is used instead.
"""

from __future__ import annotations

import ctypes
import logging

import pjsua2 as pj

log = logging.getLogger(__name__)

_Pointers = ctypes.c_void_p * 2


def _read_fast(vector: pj.ByteVector) -> bytes:
    begin, end = _Pointers.from_address(int(vector.this))
    if not begin or not end:
        return b""
    return ctypes.string_at(begin, end - begin)


def _write_fast(vector: pj.ByteVector, data: bytes) -> None:
    if vector.size() != len(data):
        vector.resize(len(data))
    begin, end = _Pointers.from_address(int(vector.this))
    if not begin:  # an empty vector has no buffer
        if data:
            raise ValueError(f"vector has no buffer for {len(data)} bytes")
        return
    held = (end or 0) - begin
    if held != len(data):  # never write past what the vector owns
        raise ValueError(f"vector holds {held} bytes, cannot write {len(data)}")
    ctypes.memmove(begin, data, len(data))


def fit_frame(data: bytes, size: int) -> bytes:
    """`data` cut or padded with silence to exactly `size` bytes: a frame handed to pjmedia
    must fill the buffer it is copied into and never overrun it."""
    if len(data) >= size:
        return data[:size]
    return data + bytes(size - len(data))


def _read_slow(vector: pj.ByteVector) -> bytes:
    return bytes(vector)


def _write_slow(vector: pj.ByteVector, data: bytes) -> None:
    vector.resize(len(data))
    for i, value in enumerate(data):
        vector[i] = value


def _layout_is_std_vector() -> bool:
    probe = pj.ByteVector()
    sample = bytes(range(256)) * 3
    try:
        _write_slow(probe, sample)
        if _read_fast(probe) != sample:
            return False
        _write_fast(probe, sample[::-1])
        return _read_slow(probe) == sample[::-1]
    except (ValueError, OSError, TypeError):
        return False


FAST_PATH = _layout_is_std_vector()
read_vector = _read_fast if FAST_PATH else _read_slow
write_vector = _write_fast if FAST_PATH else _write_slow
if not FAST_PATH:
    log.warning("event=bytevector_slow_path reason=unexpected_layout")
