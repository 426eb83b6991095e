"""The agent links, sans-IO: what each protocol sends the agent for caller audio, speech and
barge-in, what it makes of the agent's messages, and the playout latency it measures."""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.config import Agent, VadSettings
from gateway.session.link import (
    PcmLink,
    PlayoutLatency,
    TwilioLink,
    account_sid,
    barge_in_enabled,
    port_rate,
    stream_sid,
)
from media.agents.events import AgentAudio, AgentClear, AgentMark
from media.codecs import ulaw_decode, ulaw_encode
from media.vad import SpeechStarted, SpeechStopped
from tests.gateway.session.test_agent import CALL_ID, tone


def test_twilio_link_opens_with_connected_then_start_carrying_variables_and_parties() -> None:
    link = TwilioLink(CALL_ID, "+15550111", "+15550100", {"campaign": "x", "to": "spoof"}, "n1")
    connected, start = (json.loads(m) for m in link.opening())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    body = start["start"]
    assert body["customParameters"] == {"campaign": "x", "from": "+15550111", "to": "+15550100"}
    assert body["callSid"] == CALL_ID
    assert body["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    assert start["streamSid"] == stream_sid(CALL_ID) and len(start["streamSid"]) == 34
    assert body["accountSid"] == account_sid("n1") and body["accountSid"].startswith("AC")


def test_twilio_link_sends_20ms_mulaw_media_and_decodes_agent_media_to_pcm() -> None:
    link = TwilioLink(CALL_ID, "a", "b", {})
    link.opening()
    pcm = tone(440, 20)
    message = json.loads(link.caller_frame(pcm, 40))
    assert message["media"]["timestamp"] == "40" and message["media"]["chunk"] == "1"
    payload = base64.b64decode(message["media"]["payload"])
    assert payload == ulaw_encode(pcm) and len(payload) == 160
    agent_payload = ulaw_encode(tone(1000, 60))
    event = link.receive(
        json.dumps(
            {
                "event": "media",
                "streamSid": link.stream.stream_sid,
                "media": {"payload": base64.b64encode(agent_payload).decode()},
            }
        )
    )
    assert event == AgentAudio(ulaw_decode(agent_payload))
    assert link.receive('{"event":"mark","mark":{"name":"m1"}}') == AgentMark("m1")
    assert link.receive('{"event":"clear"}') == AgentClear()


def test_twilio_link_sends_the_ports_own_mulaw_without_encoding_the_pcm_again() -> None:
    link = TwilioLink(CALL_ID, "a", "b", {})
    link.opening()
    pcm = tone(440, 20)
    rtp_payload = ulaw_encode(pcm)  # what a PCMU caller sent; pcm is its decode
    as_given = json.loads(link.caller_frame(pcm, 0, rtp_payload))
    encoded = json.loads(link.caller_frame(pcm, 20))
    assert base64.b64decode(as_given["media"]["payload"]) == rtp_payload
    assert as_given["media"]["payload"] == encoded["media"]["payload"]
    marker = bytes(range(160))  # not pcm's encoding: proves the given bytes are what is sent
    sent = json.loads(link.caller_frame(pcm, 40, marker))["media"]["payload"]
    assert base64.b64decode(sent) == marker


def test_twilio_barge_in_returns_dropped_marks_and_nothing_else() -> None:
    link = TwilioLink(CALL_ID, "a", "b", {})
    sent = [json.loads(m) for m in link.barge_in(["a", "b"])]
    assert [(m["event"], m["mark"]["name"]) for m in sent] == [("mark", "a"), ("mark", "b")]
    assert link.caller_speech(SpeechStarted(100)) == []


def test_pcm_link_24k_agent_runs_the_port_at_16k_and_resamples_both_ways() -> None:
    link = PcmLink(CALL_ID, "a", "b", {"k": "v"}, sample_rate=24000)
    assert link.rate == 16000 == port_rate(24000) and port_rate(8000) == 8000
    start = json.loads(link.opening()[0])
    assert start["sample_rate"] == 24000 and start["variables"] == {"k": "v"}
    out = link.caller_frame(tone(440, 20, 16000), 0)
    assert isinstance(out, bytes) and abs(len(out) - 960) <= 64  # 20 ms at 24 kHz, filter delay
    back = link.receive(tone(440, 100, 24000))
    assert isinstance(back, AgentAudio) and abs(len(back.pcm) - 3200) <= 64


def test_pcm_link_tells_the_agent_about_barge_in_and_caller_speech() -> None:
    link = PcmLink(CALL_ID, "a", "b", {}, sample_rate=16000)
    assert [json.loads(m) for m in link.barge_in(["m"])] == [
        {"event": "clear"},
        {"event": "mark", "name": "m"},
    ]
    assert json.loads(link.caller_speech(SpeechStopped(900, 500))[0]) == {
        "event": "speech_stopped",
        "offset_ms": 900,
        "duration_ms": 500,
    }


def test_barge_in_is_off_for_twilio_agents_unless_the_agent_or_vad_turns_it_on() -> None:
    def agent(kind: str, **extra: Any) -> Agent:
        return Agent.model_validate({"id": "a", "type": kind, "url": "ws://127.0.0.1:9", **extra})

    default = VadSettings()
    assert default.barge_in is None
    assert not barge_in_enabled(agent("twilio-ws"), default)
    assert barge_in_enabled(agent("pcm-ws"), default)
    assert barge_in_enabled(agent("webrtc", url="http://127.0.0.1:9/whip"), default)
    assert barge_in_enabled(agent("twilio-ws", barge_in=True), default)
    assert not barge_in_enabled(agent("pcm-ws", barge_in=False), default)
    assert barge_in_enabled(agent("twilio-ws"), VadSettings(barge_in=True))
    assert not barge_in_enabled(agent("pcm-ws"), VadSettings(barge_in=False))
    assert not barge_in_enabled(agent("pcm-ws", barge_in=False), VadSettings(barge_in=True))


def test_playout_latency_counts_each_chunk_once_and_forgets_cleared_chunks() -> None:
    lat = PlayoutLatency()
    lat.received(0, 1_000_000)
    lat.received(320, 2_000_000)
    assert lat.played(320, 6_000_000) == [5.0]
    assert lat.played(640, 9_000_000) == [7.0]
    lat.received(640, 10_000_000, queued_ahead_ns=40_000_000)  # 40 ms of audio ahead of it
    assert lat.played(700, 52_000_000) == [2.0]
    lat.received(960, 60_000_000)
    lat.cleared()
    assert lat.played(10_000, 20_000_000) == []
