"""gateway/sip/sdp.py: pjsua's SDP pointed at the media plane's socket."""

from __future__ import annotations

from gateway.sip.sdp import point_audio_at

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
