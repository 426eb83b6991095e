"""G.711 mu-law and A-law on whole frames, bit-exact with the ITU-T G.191 reference software.

Encoding looks every int16 sample up in a 65536-entry table (indexed by the sample viewed as
uint16); decoding looks each code up in a 256-entry table. The tables are built once at import.
Negative samples are mapped with one's complement, as G.191 does, so x and ~x encode to codes
that differ only in the sign bit.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)


def _segment(value: npt.NDArray[np.int32], first_edge: int) -> npt.NDArray[np.int32]:
    """Segment number 1..8 of a magnitude: 1 below `first_edge`, +1 per doubling above it."""
    seg = np.ones_like(value)
    edge = first_edge
    for _ in range(7):
        seg += value >= edge
        edge <<= 1
    return seg


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    x = _ALL_INT16
    magnitude = np.minimum(np.where(x < 0, ~x, x) >> 2, 0x1FFF - 33) + 33
    seg = _segment(magnitude, 0x40)
    high = 8 - seg
    low = 0x0F - ((magnitude >> seg) & 0x0F)
    code = (high << 4) | low
    code = np.where(x >= 0, code | 0x80, code)
    return _index_by_uint16(code.astype(np.uint8))


def _build_alaw_encode() -> npt.NDArray[np.uint8]:
    x = _ALL_INT16
    ix = np.where(x < 0, ~x, x) >> 4  # 12-bit magnitude
    exponent = _segment(ix, 16) - 1  # 0..7
    mantissa = (ix >> np.maximum(exponent - 1, 0)) & 0x0F
    code = (exponent << 4) | mantissa
    code = np.where(x >= 0, code | 0x80, code) ^ 0x55
    return _index_by_uint16(code.astype(np.uint8))


def _index_by_uint16(codes_in_int16_order: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Reorder a table built for -32768..32767 so it is indexed by the sample's uint16 bits."""
    return np.roll(codes_in_int16_order, -32768)


def _build_ulaw_decode() -> npt.NDArray[np.int16]:
    inverted = ~_ALL_CODES & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    step = 4 << (exponent + 1)
    magnitude = (0x80 << exponent) + step * mantissa + step // 2 - 4 * 33
    return np.where(_ALL_CODES < 0x80, -magnitude, magnitude).astype("<i2")


def _build_alaw_decode() -> npt.NDArray[np.int16]:
    code = _ALL_CODES ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    base = (mantissa << 4) + 8
    magnitude = np.where(exponent == 0, base, (base + 0x100) << np.maximum(exponent - 1, 0))
    return np.where(code < 0x80, -magnitude, magnitude).astype("<i2")


ULAW_ENCODE = _build_ulaw_encode()
ALAW_ENCODE = _build_alaw_encode()
ULAW_DECODE = _build_ulaw_decode()
ALAW_DECODE = _build_alaw_decode()
# A-law code -> the mu-law code of the same decoded sample (what decode + ulaw_encode gives):
# one 256-entry lookup instead of a decode and an encode.
ALAW_TO_ULAW = ULAW_ENCODE[ALAW_DECODE.view("<u2")]
for _table in (ULAW_ENCODE, ALAW_ENCODE, ULAW_DECODE, ALAW_DECODE, ALAW_TO_ULAW):
    _table.flags.writeable = False


def _pcm_as_uint16(pcm: bytes) -> npt.NDArray[np.uint16]:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 data must have an even length, got {len(pcm)} bytes")
    return np.frombuffer(pcm, dtype="<u2")


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian -> mu-law codes, one byte per sample."""
    return ULAW_ENCODE[_pcm_as_uint16(pcm)].tobytes()


def ulaw_decode(codes: bytes) -> bytes:
    """Mu-law codes -> PCM16 little-endian."""
    return ULAW_DECODE[np.frombuffer(codes, dtype=np.uint8)].tobytes()


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian -> A-law codes, one byte per sample."""
    return ALAW_ENCODE[_pcm_as_uint16(pcm)].tobytes()


def alaw_decode(codes: bytes) -> bytes:
    """A-law codes -> PCM16 little-endian."""
    return ALAW_DECODE[np.frombuffer(codes, dtype=np.uint8)].tobytes()
