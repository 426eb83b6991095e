"""Twilio Media Streams messages, checked against the shapes in Twilio's WebSocket messages docs."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from media.agents.events import AgentClear, AgentMark, AgentMedia
from media.agents.twilio import TwilioStream
from media.errors import MediaError, ProtocolError

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA4d6f1f9f8b0a2c3e4d5f6a7b8c9d0e1f"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"


def stream() -> TwilioStream:
    return TwilioStream(STREAM, CALL, ACCOUNT, custom_parameters={"FirstName": "Jane"})


def shape(value: Any) -> Any:
    """The structure of a message: keys and value types, not values."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


# The documented examples (values shortened), one per message Twilio sends.
DOCUMENTED = {
    "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    "start": {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC...",
            "streamSid": "MZ...",
            "callSid": "CA...",
            "tracks": ["inbound"],
            "customParameters": {"FirstName": "Jane"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": "MZ...",
    },
    "media": {
        "event": "media",
        "sequenceNumber": "3",
        "media": {"track": "inbound", "chunk": "1", "timestamp": "5", "payload": "no+JhoaJ"},
        "streamSid": "MZ...",
    },
    "dtmf": {
        "event": "dtmf",
        "streamSid": "MZ...",
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "1"},
    },
    "mark": {
        "event": "mark",
        "sequenceNumber": "4",
        "streamSid": "MZ...",
        "mark": {"name": "my label"},
    },
    "stop": {
        "event": "stop",
        "sequenceNumber": "5",
        "streamSid": "MZ...",
        "stop": {"accountSid": "AC...", "callSid": "CA..."},
    },
}


def test_every_message_has_the_documented_shape() -> None:
    s = stream()
    sent = {
        "connected": s.connected(),
        "start": s.start(),
        "media": s.media(b"\xff" * 160, 0),
        "dtmf": s.dtmf("1"),
        "mark": s.mark("my label"),
        "stop": s.stop(),
    }
    for event, text in sent.items():
        assert shape(json.loads(text)) == shape(DOCUMENTED[event]), event


def test_start_carries_the_stream_metadata() -> None:
    start = json.loads(stream().start())
    assert start["start"] == {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"FirstName": "Jane"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    assert start["streamSid"] == STREAM


def test_sequence_counts_every_message_from_start_and_chunk_counts_media() -> None:
    s = stream()
    assert "sequenceNumber" not in json.loads(s.connected())
    messages = [s.start(), s.media(b"\x01", 0), s.dtmf("#"), s.media(b"\x02", 20), s.stop()]
    parsed = [json.loads(m) for m in messages]
    assert [m["sequenceNumber"] for m in parsed] == ["1", "2", "3", "4", "5"]
    assert [m["media"]["chunk"] for m in parsed if m["event"] == "media"] == ["1", "2"]
    assert [m["media"]["timestamp"] for m in parsed if m["event"] == "media"] == ["0", "20"]


def test_media_payload_is_base64_of_the_mulaw_bytes() -> None:
    payload = bytes(range(160))
    media = json.loads(stream().media(payload, 40))["media"]
    assert base64.b64decode(media["payload"]) == payload
    assert media["track"] == "inbound"


def test_invalid_dtmf_digit_is_rejected() -> None:
    with pytest.raises(ValueError):
        stream().dtmf("x")


def test_receive_media_from_the_agent() -> None:
    text = json.dumps(
        {
            "event": "media",
            "streamSid": STREAM,
            "media": {"payload": base64.b64encode(b"\x7f\xff").decode()},
        }
    )
    assert stream().receive(text) == AgentMedia(b"\x7f\xff")


def test_receive_mark_and_clear_from_the_agent() -> None:
    s = stream()
    mark = {"event": "mark", "streamSid": STREAM, "mark": {"name": "my label"}}
    assert s.receive(json.dumps(mark)) == AgentMark("my label")
    assert s.receive(json.dumps({"event": "clear", "streamSid": STREAM})) == AgentClear()


@pytest.mark.parametrize(
    ("frame", "complaint"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (b"\x00\x01", "binary"),
        ('{"event": "media", "media": {}}', "media.payload"),
        ('{"event": "media", "media": {"payload": "%%%"}}', "base64"),
        ('{"event": "mark", "mark": {"name": 3}}', "mark.name"),
        ('{"event": "mark"}', "mark.name"),
        ('{"event": "clear", "streamSid": "MZother"}', "not this stream"),
        ('{"event": "start"}', "unexpected event 'start'"),
        ("{}", "unexpected event None"),
    ],
)
def test_malformed_agent_frames_raise_protocol_error(frame: str | bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint) as raised:
        stream().receive(frame)
    assert isinstance(raised.value, MediaError)
