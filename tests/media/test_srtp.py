"""SRTP both ways with SDES keys: what one side protects, the other unprotects, and a packet
that was tampered with, replayed or keyed wrongly is dropped (pure logic, libsrtp)."""

from __future__ import annotations

import base64
import os

import pytest

from media.rtp import RtpSender, parse
from media.srtp import SrtpError, SrtpStream

SUITE = "AES_CM_128_HMAC_SHA1_80"


def key() -> str:
    return base64.b64encode(os.urandom(30)).decode()


def pair(suite: str = SUITE) -> tuple[SrtpStream, SrtpStream]:
    ours, theirs = key(), key()
    return SrtpStream(suite, ours, theirs), SrtpStream(suite, theirs, ours)


@pytest.mark.parametrize("suite", ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"])
def test_what_one_side_protects_the_other_reads(suite: str) -> None:
    us, them = pair(suite)
    rtp = RtpSender(0, 160).audio(b"\xff" * 160)
    wire = us.protect(rtp)
    assert wire != rtp and b"\xff" * 16 not in wire  # the payload is not plain G.711
    assert len(wire) == len(rtp) + (10 if suite.endswith("80") else 4)  # the auth tag
    back = them.unprotect(wire)
    assert back == rtp and parse(back) is not None
    assert us.unprotect(them.protect(rtp)) == rtp


def test_a_tampered_replayed_or_wrongly_keyed_packet_is_dropped_and_counted() -> None:
    us, them = pair()
    wire = us.protect(RtpSender(0, 160).audio(b"\x7f" * 160))
    tampered = wire[:20] + bytes([wire[20] ^ 1]) + wire[21:]
    assert them.unprotect(tampered) is None
    assert them.unprotect(wire) is not None
    assert them.unprotect(wire) is None  # the same packet again: a replay
    stranger = SrtpStream(SUITE, key(), key())
    assert stranger.unprotect(us.protect(RtpSender(0, 160).audio(b"\x7f" * 160))) is None
    assert (them.unprotect_failures, stranger.unprotect_failures) == (2, 1)


def test_bad_keys_and_suites_are_named_without_the_key() -> None:
    short = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(SrtpError, match="16 bytes, not 30") as info:
        SrtpStream(SUITE, short, key())
    assert short not in str(info.value)
    with pytest.raises(SrtpError, match="not base64"):
        SrtpStream(SUITE, key(), "!!!")
    with pytest.raises(SrtpError, match="AES_256_CM_HMAC_SHA1_80"):
        SrtpStream("AES_256_CM_HMAC_SHA1_80", key(), key())
    assert "key" not in repr(SrtpStream(SUITE, key(), key())).lower().replace("srtpstream", "")
