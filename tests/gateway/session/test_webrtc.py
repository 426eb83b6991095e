"""webrtc agents: the sans-IO parts (codec preference, answer codec, events channel, link
resampling, config), then whole sessions against a real aiortc peer acting as the agent behind
a small WHIP endpoint on 127.0.0.1, with a thread standing in for pjmedia's clock."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from pydantic import ValidationError

from gateway.config import Agent, VadSettings
from gateway.session.webrtc import WebRtcSession, frame_pcm, ice_addresses
from media.agents.events import AgentAudio, AgentClear, AgentHangup, AgentMark
from media.agents.webrtc import (
    EventsChannel,
    WebRtcLink,
    answer_codec,
    downmix,
    prefer_codecs,
)
from media.errors import ProtocolError
from media.resample import Resampler
from media.vad import SpeechStarted, SpeechStopped
from tests.gateway.session.test_agent import CALL_ID, Clock, FakeControls, frames, record, voiced

HOST = "127.0.0.1"

# The audio section of an answer aiortc 1.16 wrote (Opus accepted; PCMU left as fallback).
ANSWER_OPUS = """v=0\r
o=- 3951 3951 IN IP4 0.0.0.0\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
m=audio 40265 UDP/TLS/RTP/SAVPF 96 0\r
c=IN IP4 127.0.0.1\r
a=sendrecv\r
a=mid:0\r
a=rtpmap:96 opus/48000/2\r
a=rtpmap:0 PCMU/8000\r
a=candidate:5f1e4b 1 udp 2130706431 127.0.0.1 40265 typ host\r
m=application 40265 DTLS/SCTP 5000\r
a=mid:1\r
"""


# --- pure parts ----------------------------------------------------------------------------


@dataclass
class Codec:
    mimeType: str  # noqa: N815 - aiortc's spelling


def test_codec_preference_is_opus_then_pcmu_and_nothing_else() -> None:
    offered = [Codec("audio/PCMA"), Codec("audio/PCMU"), Codec("audio/G722"), Codec("audio/opus")]
    assert [c.mimeType for c in prefer_codecs(offered)] == ["audio/opus", "audio/PCMU"]
    real = prefer_codecs(RTCRtpSender.getCapabilities("audio").codecs)
    assert [c.mimeType for c in real] == ["audio/opus", "audio/PCMU"]


def test_answer_codec_reads_the_first_payload_type_of_the_audio_section() -> None:
    assert answer_codec(ANSWER_OPUS) == "opus"
    pcmu = ANSWER_OPUS.replace("SAVPF 96 0", "SAVPF 0").replace("a=rtpmap:96 opus/48000/2\r\n", "")
    assert answer_codec(pcmu) == "PCMU"
    assert answer_codec(ANSWER_OPUS.replace("m=audio 40265", "m=audio 0")) is None
    assert answer_codec("v=0\r\nm=application 9 DTLS/SCTP 5000\r\n") is None


def test_events_channel_speaks_pcm_ws_control_messages_without_audio() -> None:
    events = EventsChannel(CALL_ID, "+15550111", "+15550100", {"campaign": "x"})
    assert json.loads(events.start("opus")) == {
        "event": "start",
        "call_id": CALL_ID,
        "from": "+15550111",
        "to": "+15550100",
        "variables": {"campaign": "x"},
        "sample_rate": 48000,
        "encoding": "opus",
    }
    assert json.loads(events.dtmf("#")) == {"event": "dtmf", "digit": "#"}
    assert events.receive('{"event":"mark","name":"m"}') == AgentMark("m")
    assert events.receive('{"event":"clear"}') == AgentClear()
    assert events.receive('{"event":"hangup","reason":"bye"}') == AgentHangup("bye")
    with pytest.raises(ProtocolError, match="audio track"):
        events.receive(b"\x00\x00")
    with pytest.raises(ProtocolError, match="unexpected event"):
        events.receive('{"event":"media"}')


def test_link_sends_48k_frames_and_plays_agent_frames_at_the_port_rate() -> None:
    link = WebRtcLink(CALL_ID, "a", "b", {}, rate=16000)
    assert link.transport == "webrtc" and link.rate == 16000
    out = link.caller_frame(bytes(640), 0)
    assert len(out) == 1920  # 20 ms at 48 kHz, mono
    stereo = np.repeat(np.full(960, 1000, "<i2"), 2).tobytes()
    back = link.agent_frame(stereo, 48000, 2)
    assert abs(len(back) - 640) <= 64  # 20 ms at 16 kHz
    assert len(link.agent_frame(bytes(320), 8000, 1)) == 640  # PCMU: 8 kHz mono, upsampled
    assert link.receive(b"\x01\x00") == AgentAudio(b"\x01\x00")
    assert [json.loads(m) for m in link.barge_in(["m"])] == [
        {"event": "clear"},
        {"event": "mark", "name": "m"},
    ]
    assert json.loads(link.caller_speech(SpeechStarted(40))[0])["event"] == "speech_started"
    assert json.loads(link.caller_speech(SpeechStopped(90, 50))[0])["duration_ms"] == 50
    link.codec = "PCMU"
    assert json.loads(link.opening()[0])["encoding"] == "PCMU"
    assert [json.loads(m) for m in link.closing()] == [{"event": "stop"}]


def test_downmix_averages_channels() -> None:
    pcm = np.array([100, 300, -200, 0], "<i2").tobytes()
    assert np.frombuffer(downmix(pcm, 2), "<i2").tolist() == [200, -100]


def test_frame_pcm_reads_packed_and_planar_frames() -> None:
    packed = AudioFrame.from_ndarray(np.array([[1, 2, 3, 4]], np.int16), "s16", "stereo")
    assert frame_pcm(packed) == (np.array([1, 2, 3, 4], "<i2").tobytes(), 2)
    planar = AudioFrame.from_ndarray(np.array([[1, 3], [2, 4]], np.int16), "s16p", "stereo")
    assert frame_pcm(planar) == (np.array([1, 2, 3, 4], "<i2").tobytes(), 2)


def test_webrtc_agent_config_ice_servers_and_addresses() -> None:
    agent = Agent.model_validate(
        {
            "id": "rtc",
            "type": "webrtc",
            "url": "http://127.0.0.1:9/whip",
            "ice_servers": [
                {"urls": "stun:stun.example.com:3478"},
                {"urls": ["turn:turn.example.com"], "username": "u", "credential": "t0ps3cret"},
            ],
            "ice_addresses": ["127.0.0.1"],
        }
    )
    assert agent.ice_servers[0].urls == ["stun:stun.example.com:3478"]
    assert "t0ps3cret" not in repr(agent.ice_servers[1])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"ice_servers": [{"urls": "http://x"}]}, "expected a STUN/TURN URL"),
        ({"ice_servers": [{"urls": "turn:t.example.com"}]}, "needs username and credential"),
        ({"ice_addresses": ["localhost"]}, "does not appear to be an IPv4 or IPv6 address"),
        ({"url": "ws://127.0.0.1/x"}, "WHIP endpoint"),
        ({"type": "pcm-ws", "url": "ws://x", "ice_addresses": ["127.0.0.1"]}, "webrtc agents"),
    ]
    for extra, message in bad:
        with pytest.raises(ValidationError, match=message):
            Agent.model_validate({"id": "rtc", "type": "webrtc", "url": "http://h/w", **extra})


# --- a real aiortc agent behind a WHIP endpoint --------------------------------------------


class ToneTrack(MediaStreamTrack):
    """The agent's voice: 20 ms frames at 48 kHz paced in real time; a tone when asked."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._tone: list[bytes] = []
        self._next = 0.0

    def play(self, hz: float, ms: int) -> None:
        t = np.arange(48 * ms) / 48000
        pcm = (9000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()
        self._tone = [pcm[i : i + 1920] for i in range(0, len(pcm), 1920)]

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._next = max(self._next + 0.02, now)
        await asyncio.sleep(self._next - now)
        pcm = self._tone.pop(0) if self._tone else bytes(1920)
        frame = AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm)
        frame.sample_rate, frame.time_base, frame.pts = 48000, Fraction(1, 48000), self._pts
        self._pts += 960
        return frame


@dataclass
class AgentPeer:
    pc: RTCPeerConnection
    voice: ToneTrack
    messages: list[dict[str, Any]] = field(default_factory=list)
    heard: list[bytes] = field(default_factory=list)  # the caller, 8 kHz mono
    codec_in: set[int] = field(default_factory=set)  # sample rates of received frames
    deleted: bool = False

    def events(self) -> list[str]:
        return [m["event"] for m in self.messages]


class WhipAgent:
    """A WHIP endpoint (a bare asyncio HTTP/1.1 server) whose peers are real aiortc peers.

    mode: "ok"; "pcmu" (accepts only PCMU); "reject" (403); "dead" (answers, then its peer
    vanishes and the answer's candidates point at a closed port); "bad-dtls" (the answer's
    fingerprint is not the peer's certificate)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.peers: dict[str, AgentPeer] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._ids = itertools.count(1)

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        return f"http://{HOST}:{self.server.sockets[0].getsockname()[1]}/whip"

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.pc.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((method, path, headers))
        status, extra, out = await self._handle(method, path, headers, body)
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
            + out
        )
        await writer.drain()
        writer.close()

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        if method == "DELETE":
            peer = self.peers.get(path.rsplit("/", 1)[-1])
            if peer is None:
                return 404, "", b""
            peer.deleted = True
            await peer.pc.close()
            return 200, "", b""
        if self.mode == "reject":
            return 403, "", b"no"
        assert method == "POST" and headers["content-type"] == "application/sdp"
        session_id = str(next(self._ids))
        peer = await self._answer(body.decode())
        self.peers[session_id] = peer
        sdp = peer.pc.localDescription.sdp
        if self.mode == "dead":
            await peer.pc.close()
            sdp = re.sub(r"(a=candidate:\S+ \d \S+ \d+ \S+ )\d+", r"\g<1>9", sdp)
        if self.mode == "bad-dtls":
            sdp = re.sub(r"(a=fingerprint:sha-256 )\S\S", r"\g<1>00", sdp)
        return (
            201,
            f"Location: /whip/{session_id}\r\nContent-Type: application/sdp\r\n",
            sdp.encode(),
        )

    async def _answer(self, offer: str) -> AgentPeer:
        pc = RTCPeerConnection()
        peer = AgentPeer(pc, ToneTrack())

        @pc.on("datachannel")
        def on_channel(channel: Any) -> None:
            @channel.on("message")
            def on_message(raw: str) -> None:
                message = json.loads(raw)
                peer.messages.append(message)
                if message["event"] == "start":
                    asyncio.ensure_future(greet(channel))

        async def greet(channel: Any) -> None:
            peer.voice.play(1000, 400)
            await asyncio.sleep(0.45)  # the tone is on its way; mark the end of it
            channel.send(json.dumps({"event": "mark", "name": "greeting"}))

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            asyncio.ensure_future(listen(track))

        async def listen(track: MediaStreamTrack) -> None:
            down: dict[int, Resampler] = {}
            try:
                while True:
                    frame = await track.recv()
                    assert isinstance(frame, AudioFrame)
                    pcm, channels = frame_pcm(frame)
                    rate = frame.sample_rate
                    peer.codec_in.add(rate)
                    resampler = down.setdefault(rate, Resampler(rate, 8000))
                    peer.heard.append(resampler.process(downmix(pcm, channels)))
            except MediaStreamError:
                pass

        if self.mode == "pcmu":
            offer = without_opus(offer)  # an agent built without Opus
        with ice_addresses([HOST]):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(peer.voice)
            await pc.setLocalDescription(await pc.createAnswer())
        return peer


def without_opus(sdp: str) -> str:
    (pt,) = re.findall(r"a=rtpmap:(\d+) opus/", sdp)
    sdp = re.sub(rf"(m=audio .*?) {pt}\b", r"\g<1>", sdp)
    return "".join(line for line in sdp.splitlines(True) if not re.match(rf"a=\S+:{pt} ", line))


def rtc_agent(url: str, **extra: Any) -> Agent:
    return Agent.model_validate(
        {
            "id": "rtc",
            "type": "webrtc",
            "url": url,
            "headers": {"Authorization": "Bearer s3cret"},
            "ice_addresses": [HOST],
            "sample_rate": 16000,
            **extra,
        }
    )


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def correlation(received: np.ndarray, reference: np.ndarray) -> float:
    """Peak normalised cross-correlation of `reference` inside `received`."""
    n = len(received) + len(reference)
    corr = np.fft.irfft(np.fft.rfft(received, n) * np.conj(np.fft.rfft(reference, n)), n)
    lags = len(received) - len(reference) + 1
    energy = np.concatenate([[0.0], np.cumsum(received**2)])
    local = energy[len(reference) : len(reference) + lags] - energy[:lags]
    valid = local > 1e-3 * float(np.sum(reference**2))
    scores = corr[:lags][valid] / np.sqrt(local[valid] * np.sum(reference**2))
    return float(scores.max()) if valid.any() else 0.0


async def test_webrtc_session_streams_both_ways_carries_events_and_deletes_at_hangup() -> None:
    whip = WhipAgent()
    url = await whip.start()
    fake = FakeControls()
    session = WebRtcSession(
        rtc_agent(url),
        record(),
        fake.controls(),
        asyncio.get_running_loop(),
        VadSettings(barge_in=False),
    )
    assert session.rate == 16000
    await wait_for(lambda: "call.agent.connected" in fake.types())
    speech = voiced(600, 16000)
    caller = frames(bytes(6400) + speech + bytes(19200), 16000)
    await wait_for(lambda: whip.peers and "start" in next(iter(whip.peers.values())).events())
    session.on_dtmf("5")
    clock = Clock(session, caller)
    await clock.run()
    (peer,) = whip.peers.values()
    await wait_for(lambda: {"event": "mark", "name": "greeting"} in peer.messages, 2.0)
    session.close()
    await wait_for(lambda: peer.deleted, 3.0)
    await whip.close()

    # signalling: the offer with our headers, then the DELETE of the Location at hangup
    (method, path, headers), *rest = whip.requests
    assert (method, path) == ("POST", "/whip") and headers["authorization"] == "Bearer s3cret"
    assert [(m, p) for m, p, _ in rest] == [("DELETE", "/whip/1")]
    connected = [d for k, d in fake.events if k == "call.agent.connected"]
    assert connected == [{"agent": "rtc", "transport": "webrtc", "codec": "opus"}]
    # events channel: start with variables, the DTMF digit, our mark back, stop at the end
    start = peer.messages[0]
    assert start["event"] == "start" and start["variables"] == {"campaign": "x"}
    assert start["sample_rate"] == 48000 and start["encoding"] == "opus"
    assert {"event": "dtmf", "digit": "5"} in peer.messages
    assert "speech_started" in peer.events() and peer.events()[-1] == "stop"
    # caller audio reached the agent's peer over Opus
    assert peer.codec_in == {48000}
    heard = np.frombuffer(b"".join(peer.heard), "<i2").astype(np.float64)
    reference = np.frombuffer(Resampler(16000, 8000).process(speech), "<i2").astype(np.float64)
    assert correlation(heard, reference[400:2800]) > 0.8
    # the agent's tone reached the caller's side of the port
    loud = [np.abs(np.frombuffer(f, "<i2")).max() > 3000 for f in clock.out]
    assert 12 <= sum(loud) <= 24, sum(loud)  # 400 ms of tone, give or take the codec's edges
    assert (
        "call.agent.disconnected",
        {"agent": "rtc", "transport": "webrtc", "reason": "call_ended"},
    ) in fake.events
    summary = session.latency_summary()
    # Latency is measured (bench/media_latency.py reports it); a test asserts no wall-clock time.
    assert summary["caller_to_agent_p95_ms"] > 0 and fake.hangups == []


async def test_an_agent_that_only_takes_pcmu_gets_pcmu() -> None:
    whip = WhipAgent("pcmu")
    url = await whip.start()
    fake = FakeControls()
    session = WebRtcSession(
        rtc_agent(url), record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    await wait_for(lambda: "call.agent.connected" in fake.types())
    await Clock(session, frames(voiced(400, 16000), 16000)).run()
    (peer,) = whip.peers.values()
    session.close()
    await wait_for(lambda: peer.deleted, 3.0)
    await whip.close()
    assert [d.get("codec") for k, d in fake.events if k == "call.agent.connected"] == ["PCMU"]
    assert peer.messages[0]["encoding"] == "PCMU" and peer.codec_in == {8000}
    assert len(peer.heard) >= 10


@pytest.mark.parametrize(
    "mode,timeout,reason",
    [
        ("reject", 2.0, r"rejected: HTTP 403"),
        ("dead", 1.0, r"ice_failed: no connectivity within 1s"),
        ("bad-dtls", 3.0, r"dtls_failed"),
    ],
)
async def test_failures_are_reported_with_the_reason_and_the_policy_applied(
    mode: str, timeout: float, reason: str
) -> None:
    whip = WhipAgent(mode)
    url = await whip.start()
    fake = FakeControls()
    agent = rtc_agent(url, connect_timeout=timeout, on_agent_failure="hangup")
    session = WebRtcSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    await wait_for(lambda: "call.agent.disconnected" in fake.types(), timeout + 2)
    (gone,) = [d for k, d in fake.events if k == "call.agent.disconnected"]
    assert re.match(reason, gone["reason"]), gone
    assert fake.hangups == ["gateway"] and "call.agent.connected" not in fake.types()
    assert session.next_frame() == bytes(640)
    session.close()
    if mode != "reject":  # a session the agent created is deleted even when it never came up
        await wait_for(lambda: any(m == "DELETE" for m, _, _ in whip.requests), 3.0)
    await whip.close()


async def test_unreachable_endpoint_is_a_connect_failure_and_keep_keeps_the_call() -> None:
    server = await asyncio.start_server(lambda r, w: None, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    fake = FakeControls()
    agent = rtc_agent(f"http://{HOST}:{port}/whip", on_agent_failure="keep")
    WebRtcSession(agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings())
    await wait_for(lambda: "call.agent.disconnected" in fake.types())
    (gone,) = [d for k, d in fake.events if k == "call.agent.disconnected"]
    assert gone["reason"].startswith("connect_failed") and fake.hangups == []


async def test_an_agent_dropping_mid_call_is_reported_once_and_hangs_up() -> None:
    whip = WhipAgent()
    url = await whip.start()
    fake = FakeControls()
    session = WebRtcSession(
        rtc_agent(url), record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    await wait_for(lambda: "call.agent.connected" in fake.types())
    (peer,) = whip.peers.values()
    await peer.pc.close()
    await wait_for(lambda: "call.agent.disconnected" in fake.types())
    session.close()
    await asyncio.sleep(0.1)
    await whip.close()
    gone = [d["reason"] for k, d in fake.events if k == "call.agent.disconnected"]
    assert gone in (["closed"], ["closed: events channel"]) and fake.hangups == ["gateway"]
