"""pcm-ws: the messages in the module's protocol doc, both directions."""

from __future__ import annotations

import json

import pytest

from media.agents.events import AgentAudio, AgentClear, AgentHangup, AgentMark
from media.agents.pcmws import PcmStream
from media.errors import ProtocolError


def stream(rate: int = 16000) -> PcmStream:
    return PcmStream("call_01", "+15550100", "+15550199", rate, variables={"lang": "en"})


def test_start_announces_call_and_audio_format() -> None:
    assert json.loads(stream().start()) == {
        "event": "start",
        "call_id": "call_01",
        "from": "+15550100",
        "to": "+15550199",
        "variables": {"lang": "en"},
        "sample_rate": 16000,
        "encoding": "pcm_s16le",
    }


def test_control_messages_to_the_agent() -> None:
    s = stream()
    assert json.loads(s.dtmf("*")) == {"event": "dtmf", "digit": "*"}
    assert json.loads(s.mark("m1")) == {"event": "mark", "name": "m1"}
    assert json.loads(s.clear()) == {"event": "clear"}
    assert json.loads(s.speech_started(1200)) == {"event": "speech_started", "offset_ms": 1200}
    assert json.loads(s.speech_stopped(2480, 1280)) == {
        "event": "speech_stopped",
        "offset_ms": 2480,
        "duration_ms": 1280,
    }
    assert json.loads(s.stop()) == {"event": "stop"}


def test_caller_audio_is_sent_as_binary_pcm() -> None:
    frame = bytes(640)
    assert stream().audio(frame) == frame
    with pytest.raises(ValueError):
        stream().audio(b"\x00")


def test_agent_binary_frames_are_audio() -> None:
    assert stream().receive(b"\x01\x00\x02\x00") == AgentAudio(b"\x01\x00\x02\x00")
    assert stream().receive(bytearray(4)) == AgentAudio(bytes(4))


def test_agent_control_messages() -> None:
    s = stream()
    assert s.receive('{"event": "mark", "name": "greeting"}') == AgentMark("greeting")
    assert s.receive('{"event": "clear"}') == AgentClear()
    assert s.receive('{"event": "hangup"}') == AgentHangup()
    assert s.receive('{"event": "hangup", "reason": "done"}') == AgentHangup("done")


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        (b"\x00\x01\x02", "whole PCM16 samples"),
        ("{", "not JSON"),
        ('"clear"', "JSON object"),
        ('{"event": "mark"}', "string name"),
        ('{"event": "hangup", "reason": 5}', "reason"),
        ('{"event": "start"}', "unexpected event 'start'"),
    ],
)
def test_malformed_agent_frames_raise_protocol_error(frame: str | bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        stream().receive(frame)


def test_unsupported_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        stream(rate=48000)
