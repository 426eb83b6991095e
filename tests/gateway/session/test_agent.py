"""AgentSession and the media parts it drives: speech/barge-in and recorder alignment; then
whole sessions against a real WebSocket agent on 127.0.0.1 with a thread standing in for
pjmedia's clock. (The agent links' wire formats: test_link.py.)"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve

from gateway.calls.events import CallEvent
from gateway.calls.model import CallRecord
from gateway.config import Agent, VadSettings
from gateway.node.ledger import media_event_data
from gateway.session.agent import AgentSession
from gateway.session.contract import CallControls
from media.codecs import ulaw_encode
from media.conversation import Conversation, FrameAligner

CALL_ID = "call_0123456789abcdef01234567"


def tone(freq: float, ms: int, rate: int = 8000, amp: float = 8000.0) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def voiced(ms: int, rate: int = 8000) -> bytes:
    """Harmonic 'vowel' that webrtcvad calls speech."""
    t = np.arange(rate * ms // 1000) / rate
    x = sum(np.sin(2 * np.pi * 140 * h * t) / h for h in range(1, 9))
    return (6000 * x).astype("<i2").tobytes()


def frames(pcm: bytes, rate: int = 8000) -> list[bytes]:
    size = rate // 50 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm) - size + 1, size)]


def record(**kw: Any) -> CallRecord:
    base: dict[str, Any] = {
        "id": CALL_ID,
        "direction": "inbound",
        "trunk": "t",
        "from_number": "+15550111",
        "to_number": "+15550100",
        "agent": "bot",
        "variables": {"campaign": "x"},
    }
    return CallRecord(**{**base, **kw})


# --- speech, barge-in, turns ---------------------------------------------------------------


def test_caller_speech_while_agent_plays_is_a_barge_in_and_starts_a_turn() -> None:
    conv = Conversation(8000, VadSettings(min_speech_ms=60, hangover_ms=100), barge_in=True)
    events = []
    barge = []
    for f in frames(bytes(8000) + voiced(400) + bytes(6400)):
        update = conv.caller_audio(f, agent_playing=True)
        events += update.speech
        barge.append(update.barge_in)
    assert [(s.party, s.started) for s in events] == [("caller", True), ("caller", False)]
    start = events[0]
    assert start.party == "caller" and 480 <= start.event.offset_ms <= 520
    assert barge.count(True) == 1 and conv.barge_ins == 1
    # the agent answers 10 frames after the last one fed: response latency is measured
    for _ in range(10 + len(frames(bytes(8000) + voiced(400) + bytes(6400)))):
        conv.agent_audio(bytes(320), had_audio=False)
    conv.agent_audio(tone(500, 20), had_audio=True)
    (turn,) = conv.turns.turns
    assert turn.caller_stopped_ms == events[1].event.offset_ms
    assert turn.latency_ms > 0


def test_no_barge_in_when_disabled_or_nothing_is_playing() -> None:
    for enabled, playing in ((False, True), (True, False)):
        conv = Conversation(8000, VadSettings(), barge_in=enabled)
        assert not any(conv.caller_audio(f, playing).barge_in for f in frames(voiced(500)))


def test_vad_frames_of_30ms_are_rechunked_from_20ms_frames_with_exact_offsets() -> None:
    conv = Conversation(
        16000, VadSettings(frame_ms=30, min_speech_ms=90, hangover_ms=90), barge_in=True
    )
    speech = []
    for f in frames(bytes(19200) + voiced(600, 16000) + bytes(19200), 16000):
        speech += conv.caller_audio(f, False).speech
    assert speech and speech[0].event.offset_ms % 30 == 0
    assert 570 <= speech[0].event.offset_ms <= 660


# --- recorder alignment ---------------------------------------------------------------------


def test_frame_aligner_pairs_ticks_and_gives_up_on_a_stalled_side() -> None:
    aligner = FrameAligner(max_skew=2)
    assert aligner.caller(b"c1") == []
    assert aligner.agent(b"a1") == [(b"c1", b"a1")]
    out = [p for f in (b"c2", b"c3", b"c4") for p in aligner.caller(f)]
    assert out == [(b"c2", None)]
    assert aligner.flush() == [(b"c3", None), (b"c4", None)]


# --- whole sessions against a real WebSocket agent -----------------------------------------


class FakeControls:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.hangups: list[str] = []

    def controls(self) -> CallControls:
        return CallControls(CALL_ID, self._emit, self.hangups.append)

    def _emit(self, event: CallEvent) -> None:
        """Kept as the public event the node makes of it: (type, data)."""
        data = media_event_data(event)
        assert data is not None, event
        self.events.append((data.event_type, data.model_dump(mode="json", exclude_none=True)))

    def types(self) -> list[str]:
        return [k for k, _ in self.events]


class Clock:
    """Stands in for pjmedia's clock thread: one caller frame in, one frame out, every 20 ms."""

    def __init__(self, session: AgentSession, caller: list[bytes]) -> None:
        self.session = session
        self.caller = caller
        self.out: list[bytes] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        for frame in self.caller:
            self.session.on_caller_frame(frame)
            self.out.append(self.session.next_frame())
            next_at += 0.02
            time.sleep(max(0.0, next_at - time.monotonic()))

    async def run(self) -> None:
        self.thread.start()
        await asyncio.to_thread(self.thread.join)


async def _agent_server(handler: Any) -> Any:
    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}/bot"


async def test_twilio_session_streams_caller_plays_agent_returns_marks_and_records(
    tmp_path: Path,
) -> None:
    got: list[dict[str, Any]] = []
    headers: dict[str, str] = {}

    async def bot(ws: ServerConnection) -> None:
        headers["Authorization"] = ws.request.headers.get("Authorization", "")
        sid = None
        async for raw in ws:
            msg = json.loads(raw)
            got.append(msg)
            if msg["event"] == "start":
                sid = msg["streamSid"]
                payload = base64.b64encode(ulaw_encode(tone(1000, 300))).decode()
                await ws.send(
                    json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                )
                await ws.send(
                    json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}})
                )

    server, url = await _agent_server(bot)
    agent = Agent.model_validate(
        {
            "id": "bot",
            "type": "twilio-ws",
            "url": url,
            "headers": {"Authorization": "Bearer s3cret"},
        }
    )
    fake = FakeControls()
    session = AgentSession(
        agent,
        record(),
        fake.controls(),
        asyncio.get_running_loop(),
        VadSettings(barge_in=False),
        recordings_dir=tmp_path,
        node_id="n",
    )
    await asyncio.sleep(0.3)  # connected before the audio starts
    caller = frames(bytes(3200) + voiced(600) + bytes(8000))
    await Clock(session, caller).run()
    session.close()
    await asyncio.sleep(0.5)
    server.close()

    assert headers.get("Authorization") == "Bearer s3cret"
    kinds = [m["event"] for m in got]
    assert kinds[:2] == ["connected", "start"] and kinds[-1] == "stop"
    media = [m for m in got if m["event"] == "media"]
    assert len(media) == len(caller)
    heard = b"".join(base64.b64decode(m["media"]["payload"]) for m in media)
    assert heard == ulaw_encode(b"".join(caller))
    marks = [m["mark"]["name"] for m in got if m["event"] == "mark"]
    assert marks == ["greeting"]
    seqs = [int(m["sequenceNumber"]) for m in got if "sequenceNumber" in m]
    assert seqs == list(range(1, len(seqs) + 1))

    types = fake.types()
    assert types[0] == "call.agent.connected"
    assert "call.speech.started" in types and "call.speech.stopped" in types
    assert (
        "call.agent.disconnected",
        {"agent": "bot", "transport": "twilio-ws", "reason": "call_ended"},
    ) in fake.events
    ready = [d for k, d in fake.events if k == "call.recording.ready"]
    assert ready and ready[0]["path"] == str(tmp_path / f"{CALL_ID}.wav")
    with wave.open(ready[0]["path"]) as w:
        assert w.getnchannels() == 2 and w.getframerate() == 8000
        assert abs(w.getnframes() - len(caller) * 160) <= 160
        stereo = np.frombuffer(w.readframes(w.getnframes()), "<i2").reshape(-1, 2)
    assert np.abs(stereo[:, 1]).max() > 4000  # the agent's tone on the right channel
    summary = session.latency_summary()
    assert "caller_to_agent_n=" in session.timing.log_fields()
    assert {"caller_to_agent_p50_ms", "agent_to_caller_p95_ms"} <= set(summary)
    assert summary["caller_to_agent_p95_ms"] < 20 and fake.hangups == []


async def test_caller_speech_barges_in_clears_playout_and_returns_the_mark() -> None:
    got: list[dict[str, Any]] = []

    async def bot(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            got.append(msg)
            if msg["event"] == "start":
                payload = base64.b64encode(ulaw_encode(tone(1000, 5000))).decode()
                await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
                await ws.send(json.dumps({"event": "mark", "mark": {"name": "long"}}))

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "twilio-ws", "url": url, "barge_in": True})
    fake = FakeControls()
    session = AgentSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings(min_speech_ms=60)
    )
    await asyncio.sleep(0.3)
    clock = Clock(session, frames(bytes(4800) + voiced(500) + bytes(1600)))
    await clock.run()
    await asyncio.sleep(0.1)
    assert [m["mark"]["name"] for m in got if m["event"] == "mark"] == ["long"]  # 4.x s early
    assert session.conversation.barge_ins == 1
    loud = [np.abs(np.frombuffer(f, "<i2")).max() > 1000 for f in clock.out]
    assert loud[0] and not any(loud[-10:])  # tone at first, silence after the barge-in
    session.close()
    await asyncio.sleep(0.2)
    server.close()


async def test_a_twilio_bot_keeps_its_queued_audio_when_the_caller_talks_by_default() -> None:
    # As on Twilio: the gateway never drops a Media Streams bot's audio; the bot hears the
    # caller in the media it gets and decides whether to send `clear`.
    got: list[dict[str, Any]] = []

    async def bot(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            got.append(msg)
            if msg["event"] == "start":
                payload = base64.b64encode(ulaw_encode(tone(1000, 5000))).decode()
                await ws.send(json.dumps({"event": "media", "media": {"payload": payload}}))
                await ws.send(json.dumps({"event": "mark", "mark": {"name": "long"}}))

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "twilio-ws", "url": url})
    fake = FakeControls()
    session = AgentSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings(min_speech_ms=60)
    )
    await asyncio.sleep(0.3)
    clock = Clock(session, frames(bytes(4800) + voiced(500) + bytes(1600)))
    await clock.run()
    await asyncio.sleep(0.1)
    assert "call.speech.started" in fake.types()  # the caller did talk over the bot
    assert session.conversation.barge_ins == 0
    assert [m for m in got if m["event"] == "mark"] == []  # 5 s of tone still queued
    loud = [np.abs(np.frombuffer(f, "<i2")).max() > 1000 for f in clock.out]
    assert all(loud[5:])  # the tone played on under the caller's speech
    session.close()
    await asyncio.sleep(0.2)
    server.close()


async def test_pcm_agent_clear_and_hangup(tmp_path: Path) -> None:
    got: list[Any] = []

    async def bot(ws: ServerConnection) -> None:
        async for raw in ws:
            got.append(raw)
            if isinstance(raw, str) and json.loads(raw)["event"] == "start":
                await ws.send(tone(500, 3000, 16000))
                await ws.send('{"event":"mark","name":"m"}')
                await asyncio.sleep(0.2)
                await ws.send('{"event":"clear"}')
                await asyncio.sleep(0.2)
                await ws.send('{"event":"hangup","reason":"done"}')

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "pcm-ws", "url": url, "sample_rate": 16000})
    fake = FakeControls()
    session = AgentSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    assert session.rate == 16000
    await asyncio.sleep(0.2)
    session.on_dtmf("5")  # from the SIP thread in real life
    await Clock(session, frames(bytes(32000), 16000)).run()
    texts = [json.loads(m) for m in got if isinstance(m, str)]
    assert texts[0]["event"] == "start" and texts[0]["sample_rate"] == 16000
    assert {"event": "mark", "name": "m"} in texts
    assert {"event": "dtmf", "digit": "5"} in texts
    assert any(isinstance(m, bytes) and len(m) == 640 for m in got)
    assert fake.hangups == ["agent"]
    session.close()
    await asyncio.sleep(0.2)
    server.close()


@pytest.mark.parametrize("policy,hangups", [("hangup", ["gateway"]), ("keep", [])])
async def test_unreachable_agent_is_reported_and_the_policy_applied(
    policy: str, hangups: list[str]
) -> None:
    server = await serve(lambda ws: ws.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    agent = Agent.model_validate(
        {
            "id": "bot",
            "type": "twilio-ws",
            "on_agent_failure": policy,
            "url": f"ws://127.0.0.1:{port}/gone",
        }
    )
    fake = FakeControls()
    session = AgentSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    await asyncio.sleep(0.3)
    (event,) = [d for k, d in fake.events if k == "call.agent.disconnected"]
    assert event["reason"].startswith("connect_failed")
    assert fake.hangups == hangups
    assert session.next_frame() == bytes(320)  # keep: silence
    session.close()
    assert len([k for k in fake.types() if k == "call.agent.disconnected"]) == 1


async def test_agent_rejecting_the_handshake_gives_its_http_status() -> None:
    from websockets.datastructures import Headers
    from websockets.http11 import Response

    async def reject(conn: ServerConnection, request: Any) -> Response:
        return Response(403, "Forbidden", Headers(), b"no")

    server = await serve(lambda ws: ws.close(), "127.0.0.1", 0, process_request=reject)
    port = server.sockets[0].getsockname()[1]
    agent = Agent.model_validate({"id": "bot", "type": "pcm-ws", "url": f"ws://127.0.0.1:{port}"})
    fake = FakeControls()
    AgentSession(agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings())
    await asyncio.sleep(0.3)
    server.close()
    assert (
        "call.agent.disconnected",
        {"agent": "bot", "transport": "pcm-ws", "reason": "rejected: HTTP 403"},
    ) in fake.events


async def test_agent_dropping_mid_call_is_reported_once_and_hangs_up() -> None:
    async def bot(ws: ServerConnection) -> None:
        async for raw in ws:
            if json.loads(raw)["event"] == "start":
                await ws.close(1011, "bot crashed")

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "twilio-ws", "url": url})
    fake = FakeControls()
    session = AgentSession(
        agent, record(), fake.controls(), asyncio.get_running_loop(), VadSettings()
    )
    await asyncio.sleep(0.3)
    session.close()
    server.close()
    gone = [d["reason"] for k, d in fake.events if k == "call.agent.disconnected"]
    assert fake.types()[0] == "call.agent.connected"
    assert gone == ["closed: code 1011"] and fake.hangups == ["gateway"]


async def test_when_closed_runs_after_the_speech_cut_off_by_the_hangup_and_the_recording(
    tmp_path: Path,
) -> None:
    # The engine sends call.completed from when_closed: nothing of the call may follow it.
    async def bot(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "pcm-ws", "url": url})
    fake = FakeControls()
    session = AgentSession(
        agent,
        record(),
        fake.controls(),
        asyncio.get_running_loop(),
        VadSettings(min_speech_ms=60),
        recordings_dir=tmp_path,
    )
    await asyncio.sleep(0.2)
    await Clock(session, frames(bytes(3200) + voiced(600))).run()  # hung up mid-sentence
    session.close()  # the SIP thread's part: returns at once
    done = asyncio.Event()
    session.when_closed(lambda: (fake.events.append(("final", {})), done.set()))
    await asyncio.wait_for(done.wait(), 5)
    types = fake.types()
    assert types[-1] == "final" and types.count("final") == 1
    assert "call.speech.stopped" in types and "call.recording.ready" in types
    later: list[str] = []
    session.when_closed(lambda: later.append("at once"))  # already closed: runs at once
    assert later == ["at once"]
    await session.wait_closed()
    assert fake.types()[-1] == "final"
    server.close()


async def test_on_the_planes_clock_frames_wait_for_the_tick_end_and_go_out_as_given_mulaw() -> None:
    started, two_frames = asyncio.Event(), asyncio.Event()
    media: list[bytes] = []

    async def bot(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["event"] == "start":
                started.set()
            elif msg["event"] == "media":
                media.append(base64.b64decode(msg["media"]["payload"]))
                if len(media) == 2:
                    two_frames.set()

    server, url = await _agent_server(bot)
    agent = Agent.model_validate({"id": "bot", "type": "twilio-ws", "url": url})
    handed: list[Any] = []  # what the plane would run once its tick is over
    session = AgentSession(agent, record(), FakeControls().controls(),
                           asyncio.get_running_loop(), VadSettings(),
                           after_tick=handed.append)  # fmt: skip
    await asyncio.wait_for(started.wait(), 5)
    pcm = tone(440, 20)
    rtp_payloads = [bytes(range(160)), bytes(range(1, 161))]  # not pcm's encoding: as given
    for payload in rtp_payloads:
        session.on_caller_frame(pcm, payload)
    session.next_frame()
    assert len(handed) == 1  # one hand-over for the tick's frames, in and out
    handed.pop()()
    await asyncio.wait_for(two_frames.wait(), 5)
    assert media == rtp_payloads
    session.next_frame()  # a tick with no caller frame (an RTP gap) still hands work over
    assert len(handed) == 1 and len(session._played) == 1
    handed.pop()()
    assert not session._played and session._tick is None  # no fallback timer on this clock
    session.close()
    await session.wait_closed()
    server.close()
