"""SRTP with SDES keys (RFC 4568), end to end, per trunk: a caller that offers SRTP on a
trunk with `srtp: required` is answered with a key of the edge's own, and the audio both ways
is SRTP on the wire (libsrtp on our side as on the node's: what the node sends decrypts with
the key in its answer, and is not the plain G.711 of the caller's audio the echo agent sends
back); the same trunk refuses a plain offer with 488. Outbound, the trunk offers RTP/SAVP
with both suites, and the media uses the keys of the one the carrier's answer takes.

The caller is a raw SIP UAC with pylibsrtp for its RTP (SIPp, as Debian builds it, has no
SRTP); the node's echo agent plays the caller back, so each direction can be checked.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from gateway.sip.sdp import audio_crypto, audio_profile
from media.codecs import ulaw_encode
from media.rtp import RtpSender, parse
from media.srtp import SrtpStream
from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST
from tests.integration.rawsip import RawUac, SipMessage

pytestmark = pytest.mark.integration

SUITE = "AES_CM_128_HMAC_SHA1_80"


def srtp_offer(rtp_port: int, key: str) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
        f"a=crypto:1 {SUITE} inline:{key}\r\na=sendrecv\r\n"
    )


def tone_frames(count: int) -> list[bytes]:
    """`count` 20 ms PCMU frames of a 440 Hz tone (no two alike: the phase runs on)."""
    t = np.arange(count * 160) / 8000
    pcm = (9000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
    ulaw = ulaw_encode(pcm)
    return [ulaw[i * 160 : (i + 1) * 160] for i in range(count)]


def srtp_config(tmp_path: Path, mode: str, media: str = "plane") -> dict[str, object]:
    trunk = {"id": "loopback", "allowed_ips": ["127.0.0.0/8"], "allowed_destinations": ["+1555"],
             "max_concurrent_calls": 10, "srtp": mode}  # fmt: skip
    return base_config(tmp_path, trunks=[trunk], node={"id": "test-node", "media": media})


def exchange(
    rtp: socket.socket, stream: SrtpStream, to: tuple[str, int]
) -> tuple[list[bytes], list[bytes]]:
    """2 s of tone sent as SRTP, paced at 20 ms, and what came back meanwhile (and 0.5 s
    after: the echo's delay); returns (frames sent, packets received)."""
    sent = tone_frames(100)
    sender = RtpSender(0, 160)
    rtp.settimeout(0.02)
    wire: list[bytes] = []
    start = time.monotonic()
    for i, frame in enumerate(sent):
        rtp.sendto(stream.protect(sender.audio(frame)), to)
        while time.monotonic() < start + (i + 1) * 0.02:
            with contextlib.suppress(TimeoutError):
                wire.append(rtp.recv(2048))
    tail = time.monotonic() + 0.5  # RTP from the node never stops while the call is up
    while time.monotonic() < tail:
        with contextlib.suppress(TimeoutError):
            wire.append(rtp.recv(2048))
    return sent, wire


def assert_encrypted_echo(stream: SrtpStream, sent: list[bytes], wire: list[bytes]) -> None:
    clear = [stream.unprotect(packet) for packet in wire]
    assert wire and all(c is not None for c in clear), "a packet from the node is not SRTP"
    payloads = {parse(c).payload for c in clear if c is not None}  # type: ignore[union-attr]
    echoed = [frame for frame in sent if frame in payloads]
    assert len(echoed) >= 50, len(echoed)  # the echo agent heard us: we were decrypted
    on_the_wire = b"".join(wire)
    assert not any(frame[:40] in on_the_wire for frame in sent)  # nothing in the clear


@pytest.mark.parametrize("media", ["plane", "worker"])  # the plane's libsrtp, or pjmedia's
def test_an_srtp_call_is_answered_with_a_key_and_its_audio_is_encrypted_both_ways(
    tmp_path: Path, media: str
) -> None:
    ours = base64.b64encode(os.urandom(30)).decode()
    with (
        NodeProcess(tmp_path, srtp_config(tmp_path, "required", media)) as node,
        MqttWatch(node.mqtt_port) as mq,
        RawUac(node.sip_port) as uac,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
    ):
        rtp.bind((HOST, 0))
        dialog = uac.invite(body=srtp_offer(rtp.getsockname()[1], ours))
        final = uac.wait_final(dialog)
        assert final.status == 200, final.first_line
        uac.ack(dialog, final)
        answer = final.text.split("\r\n\r\n", 1)[1]
        assert audio_profile(answer) == "RTP/SAVP"
        (theirs,) = audio_crypto(answer)
        assert (theirs.tag, theirs.suite) == (1, SUITE) and theirs.key != ours
        stream = SrtpStream(SUITE, tx_key=ours, rx_key=theirs.key)
        media_port = int(answer.split("m=audio ", 1)[1].split(" ", 1)[0])
        node_rtp = (HOST, media_port)

        sent, wire = exchange(rtp, stream, node_rtp)
        assert_encrypted_echo(stream, sent, wire)

        uac.bye(dialog, final)
        done = mq.wait_event("call.completed")
        assert done["data"]["hangup_by"] == "caller"
        log = node.log()
        assert ours not in log and theirs.key not in log  # keys are never logged
        assert node.stop() == 0


def test_a_trunk_that_requires_srtp_refuses_a_plain_offer_with_488(tmp_path: Path) -> None:
    with (
        NodeProcess(tmp_path, srtp_config(tmp_path, "required")) as node,
        RawUac(node.sip_port) as uac,
    ):
        dialog = uac.invite()  # RTP/AVP, no a=crypto
        final = uac.wait_final(dialog)
        assert final.status == 488, final.first_line
        uac.ack(dialog, final)
        assert "srtp required" in node.wait_log("srtp required")
        assert node.stop() == 0


def test_an_outbound_call_on_a_trunk_that_requires_srtp_offers_keys_and_uses_the_answers(
    tmp_path: Path,
) -> None:
    ours = base64.b64encode(os.urandom(30)).decode()
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
    ):
        carrier.bind((HOST, 0))
        rtp.bind((HOST, 0))
        carrier.settimeout(10)
        trunk = {"id": "loopback", "proxy": f"sip:{HOST}:{carrier.getsockname()[1]}",
                 "allowed_destinations": ["+1555"], "srtp": "required"}  # fmt: skip
        with (
            NodeProcess(tmp_path, base_config(tmp_path, trunks=[trunk])) as node,
            MqttWatch(node.mqtt_port) as mq,
        ):
            reply = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})
            data, source = carrier.recvfrom(65535)
            invite = SipMessage(data.decode())
            offer = invite.text.split("\r\n\r\n", 1)[1]
            assert audio_profile(offer) == "RTP/SAVP"
            offered = audio_crypto(offer)
            assert [c.suite for c in offered] == [SUITE, "AES_CM_128_HMAC_SHA1_32"], offer
            # The answer takes the second suite the node offered, by its tag.
            chosen = offered[1]
            answer = srtp_offer(rtp.getsockname()[1], ours).replace(
                f"a=crypto:1 {SUITE}", f"a=crypto:{chosen.tag} {chosen.suite}"
            )
            head = [
                line
                for line in invite.text.split("\r\n\r\n")[0].split("\r\n")[1:]
                if line.split(":", 1)[0].lower() in ("via", "from", "call-id", "cseq")
            ]
            to = invite.header("to") + ";tag=carrier1"
            ok = "\r\n".join(["SIP/2.0 200 OK", *head, f"To: {to}",
                               f"Contact: <sip:carrier@{HOST}:{carrier.getsockname()[1]}>",
                               "Content-Type: application/sdp",
                               f"Content-Length: {len(answer)}", "", answer])  # fmt: skip
            carrier.sendto(ok.encode(), source)
            answered = mq.wait_event("call.answered", reply["data"]["id"])
            media_port = int(offer.split("m=audio ", 1)[1].split(" ", 1)[0])
            stream = SrtpStream(chosen.suite, tx_key=ours, rx_key=chosen.key)
            sent, wire = exchange(rtp, stream, (HOST, media_port))
            assert_encrypted_echo(stream, sent, wire)
            mq.command("call.hangup", {"call_id": answered["call_id"]})
            mq.wait_event("call.completed", answered["call_id"])
            assert node.stop() == 0
