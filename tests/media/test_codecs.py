"""G.711 against the ITU-T G.191 reference algorithm, transcribed sample by sample."""

from __future__ import annotations

import numpy as np
import pytest

from media.codecs import ALAW_TO_ULAW, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2")


def g191_ulaw_compress(x: int) -> int:
    absno = ((~x) >> 2) + 33 if x < 0 else (x >> 2) + 33
    absno = min(absno, 0x1FFF)
    i, segno = absno >> 6, 1
    while i:
        segno += 1
        i >>= 1
    code = ((8 - segno) << 4) | (0x0F - ((absno >> segno) & 0x0F))
    return code | 0x80 if x >= 0 else code


def g191_alaw_compress(x: int) -> int:
    ix = (~x) >> 4 if x < 0 else x >> 4
    if ix > 15:
        iexp = 1
        while ix > 16 + 15:
            ix >>= 1
            iexp += 1
        ix = ix - 16 + (iexp << 4)
    if x >= 0:
        ix |= 0x80
    return ix ^ 0x55


def g191_ulaw_expand(code: int) -> int:
    sign = -1 if code < 0x80 else 1
    inverted = ~code & 0xFF
    exponent = (inverted >> 4) & 0x07
    step = 4 << (exponent + 1)
    return sign * ((0x80 << exponent) + step * (inverted & 0x0F) + step // 2 - 4 * 33)


def g191_alaw_expand(code: int) -> int:
    ix = code ^ 0x55
    sign = 1 if ix & 0x80 else -1
    ix &= 0x7F
    iexp = ix >> 4
    mant = ix & 0x0F
    if iexp > 0:
        mant += 16
    mant = (mant << 4) + 8
    if iexp > 1:
        mant <<= iexp - 1
    return sign * mant


def codes(data: bytes) -> list[int]:
    return list(data)


def samples(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i2").tolist()


def test_ulaw_known_values() -> None:
    assert ulaw_encode(b"\x00\x00") == b"\xff"
    assert samples(ulaw_decode(b"\x7f\xff")) == [0, 0]
    assert samples(ulaw_decode(b"\x80\x00")) == [32124, -32124]
    assert ulaw_encode(np.array([32767, -32768], dtype="<i2").tobytes()) == b"\x80\x00"


def test_alaw_known_values() -> None:
    assert alaw_encode(b"\x00\x00") == b"\xd5"
    assert samples(alaw_decode(b"\xd5\x55")) == [8, -8]
    assert samples(alaw_decode(b"\xaa\x2a")) == [32256, -32256]


def test_ulaw_encode_matches_g191_for_every_int16() -> None:
    expected = bytes(g191_ulaw_compress(int(x)) for x in ALL_SAMPLES)
    assert ulaw_encode(ALL_SAMPLES.tobytes()) == expected


def test_alaw_encode_matches_g191_for_every_int16() -> None:
    expected = bytes(g191_alaw_compress(int(x)) for x in ALL_SAMPLES)
    assert alaw_encode(ALL_SAMPLES.tobytes()) == expected


def test_decode_matches_g191_for_every_code() -> None:
    every_code = bytes(range(256))
    assert samples(ulaw_decode(every_code)) == [g191_ulaw_expand(c) for c in range(256)]
    assert samples(alaw_decode(every_code)) == [g191_alaw_expand(c) for c in range(256)]


def test_decode_then_encode_is_identity_for_every_code() -> None:
    every_code = bytes(range(256))
    assert alaw_encode(alaw_decode(every_code)) == every_code
    # 0x7F is mu-law's "negative zero": it decodes to 0, which encodes as 0xFF.
    expected = bytes(0xFF if c == 0x7F else c for c in range(256))
    assert ulaw_encode(ulaw_decode(every_code)) == expected


def test_negative_samples_use_ones_complement_symmetry() -> None:
    positive = np.arange(0, 32768, dtype="<i2")
    negative = ~positive
    assert codes(ulaw_encode(negative.tobytes())) == [
        c ^ 0x80 for c in ulaw_encode(positive.tobytes())
    ]


def test_alaw_matches_stdlib_audioop_where_available() -> None:
    audioop = pytest.importorskip("audioop")
    pcm = ALL_SAMPLES.tobytes()
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm, 2)
    # audioop (Sun g711.c) differs from G.191 only for negative mu-law input, so compare >= 0.
    positive = ALL_SAMPLES[ALL_SAMPLES >= 0].tobytes()
    assert ulaw_encode(positive) == audioop.lin2ulaw(positive, 2)


def test_odd_length_pcm_is_rejected() -> None:
    with pytest.raises(ValueError, match="even length"):
        ulaw_encode(b"\x00\x00\x00")


def test_frame_sized_round_trip_keeps_length() -> None:
    frame = np.linspace(-20000, 20000, 160).astype("<i2").tobytes()
    assert len(ulaw_encode(frame)) == 160
    assert len(ulaw_decode(ulaw_encode(frame))) == 320
    error = np.abs(
        np.frombuffer(ulaw_decode(ulaw_encode(frame)), "<i2").astype(int)
        - np.frombuffer(frame, "<i2")
    )
    assert error.max() <= 1024  # largest mu-law step is 1024


def test_alaw_to_ulaw_is_decode_then_encode_for_every_code() -> None:
    codes = bytes(range(256))
    assert ALAW_TO_ULAW[np.frombuffer(codes, np.uint8)].tobytes() == ulaw_encode(alaw_decode(codes))
