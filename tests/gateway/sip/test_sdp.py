"""gateway/sip/sdp.py: pjsua's SDP pointed at the media plane's socket."""

from __future__ import annotations

import pytest

from gateway.session.contract import SrtpKeys
from gateway.sip.call import srtp_keys
from gateway.sip.sdp import Crypto, audio_crypto, audio_profile, point_audio_at, srtp_refusal

PJSUA = "\r\n".join([
    "v=0", "o=- 3917 3917 IN IP4 127.0.0.1", "s=pjmedia", "b=AS:84", "t=0 0",
    "a=X-nat:0", "m=audio 4000 RTP/AVP 0 8 101", "c=IN IP4 127.0.0.1", "b=TIAS:64000",
    "a=rtcp:4001 IN IP4 127.0.0.1", "a=sendrecv", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "",
])  # fmt: skip


def test_the_audio_stream_moves_and_nothing_negotiated_changes() -> None:
    out = point_audio_at(PJSUA, "10.0.0.5", 20000).split("\r\n")
    assert "m=audio 20000 RTP/AVP 0 8 101" in out
    assert "c=IN IP4 10.0.0.5" in out and "c=IN IP4 127.0.0.1" not in out
    assert "a=rtcp:20001 IN IP4 10.0.0.5" in out
    assert "o=- 3917 3917 IN IP4 127.0.0.1" in out  # the origin is not where media goes
    kept = [
        line for line in PJSUA.split("\r\n") if line.startswith(("a=rtpmap", "a=fmtp", "a=send"))
    ]
    assert all(line in out for line in kept)


def test_without_a_host_only_the_ports_move() -> None:
    out = point_audio_at(PJSUA, None, 20000).split("\r\n")
    assert "m=audio 20000 RTP/AVP 0 8 101" in out and "c=IN IP4 127.0.0.1" in out
    assert "a=rtcp:20001 IN IP4 127.0.0.1" in out


def test_a_session_level_address_is_rewritten_for_the_only_stream() -> None:
    sdp = "v=0\r\nc=IN IP4 1.1.1.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n"
    out = point_audio_at(sdp, "2.2.2.2", 30000)
    assert "c=IN IP4 2.2.2.2" in out and "1.1.1.1" not in out and "m=audio 30000 " in out


def test_a_disabled_stream_and_an_sdp_without_audio_are_left_alone() -> None:
    disabled = PJSUA.replace("m=audio 4000", "m=audio 0")
    assert point_audio_at(disabled, "10.0.0.5", 20000) == disabled
    video = "v=0\r\nm=video 5000 RTP/AVP 96\r\n"
    assert point_audio_at(video, "10.0.0.5", 20000) == video


def test_ipv6_hosts_say_ip6() -> None:
    assert "c=IN IP6 ::1" in point_audio_at(PJSUA, "::1", 20000)


# -- SDES keys ---------------------------------------------------------------------------

KEY = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    "m=audio 4000 RTP/SAVP 0 101\r\n"
    f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4\r\n"
    f"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^31\r\n"
    f"a=crypto:3 AES_256_CM_HMAC_SHA1_80 inline:{KEY}\r\n"
    "m=video 4002 RTP/SAVP 96\r\n"
    f"a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
)


def test_the_audio_streams_keys_we_can_use_are_read_in_order() -> None:
    # tag 1 has an MKI, tag 3 a suite the plane does not speak, tag 4 is video's
    assert audio_crypto(OFFER) == [Crypto(2, "AES_CM_128_HMAC_SHA1_32", KEY)]
    assert audio_profile(OFFER) == "RTP/SAVP"
    assert KEY not in repr(audio_crypto(OFFER))


def test_an_sdp_without_crypto_has_no_keys() -> None:
    plain = "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    assert audio_crypto(plain) == [] and audio_profile(plain) == "RTP/AVP"
    assert audio_crypto("v=0\r\n") == [] and audio_profile("v=0\r\n") is None


@pytest.mark.parametrize(
    ("mode", "offer", "refused"),
    [
        ("required", OFFER, None),
        ("required", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "srtp required"),
        ("off", OFFER, "srtp off for this trunk"),
        ("off", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", None),
        ("optional", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", None),
        ("optional", "v=0\r\nm=audio 4000 RTP/SAVP 0\r\n", "no key the edge can use"),
    ],
)
def test_an_inbound_offer_is_refused_by_the_trunks_srtp_mode(
    mode: str, offer: str, refused: str | None
) -> None:
    reason = srtp_refusal(mode, offer)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def test_the_keys_of_a_call_are_the_pair_the_answer_names_by_tag() -> None:
    ours = [
        Crypto(1, "AES_CM_128_HMAC_SHA1_80", "a" * 40),
        Crypto(2, "AES_CM_128_HMAC_SHA1_32", "b" * 40),
    ]
    assert srtp_keys(ours, []) is None  # a plain answer
    keys = srtp_keys(ours, [Crypto(2, "AES_CM_128_HMAC_SHA1_32", "c" * 40)])
    assert keys == SrtpKeys("AES_CM_128_HMAC_SHA1_32", tx_key="b" * 40, rx_key="c" * 40)
    assert "b" * 40 not in repr(keys) and "c" * 40 not in repr(keys)
    assert srtp_keys(ours, [Crypto(2, "AES_CM_128_HMAC_SHA1_80", "c" * 40)]) is None
