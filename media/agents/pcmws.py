"""pcm-ws: a raw 16-bit PCM WebSocket protocol for wideband agents, gateway side, sans-IO.

Audio travels as **binary** frames of PCM16 little-endian mono, both ways, at the sample rate
announced in `start` (8000, 16000 or 24000 Hz). The gateway sends 20 ms frames; the agent may
send audio in any even-length chunks, faster than real time (the gateway paces playout).
Control travels as **text** frames, one JSON object each, with an `"event"` key.

Gateway to agent:

    {"event": "start", "call_id": "call_...", "from": "+15550100", "to": "+15550199",
     "variables": {"any": "string"}, "sample_rate": 16000, "encoding": "pcm_s16le"}
    {"event": "dtmf", "digit": "5"}
    {"event": "mark", "name": "..."}         the audio sent before that agent mark was played
                                             (or dropped by a clear: marks always come back)
    {"event": "clear"}                       the gateway dropped queued agent audio itself
    {"event": "speech_started", "offset_ms": 1200}
    {"event": "speech_stopped", "offset_ms": 2480, "duration_ms": 1280}
    {"event": "stop"}                        the call ended; no more messages follow

Agent to gateway:

    binary                                   audio to play to the caller
    {"event": "mark", "name": "..."}         tell me when the audio sent so far has played
    {"event": "clear"}                       drop all queued audio now (barge-in)
    {"event": "hangup"}                      end the call (optional "reason": "...")

`offset_ms` values are milliseconds since the call's media started. Unknown events from the
agent are protocol errors.
"""

from __future__ import annotations

from collections.abc import Mapping

from media.agents.events import AgentAudio, AgentClear, AgentEvent, AgentHangup, AgentMark
from media.agents.wire import dumps, loads
from media.errors import ProtocolError

PCMWS_RATES = (8000, 16000, 24000)
ENCODING = "pcm_s16le"
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class PcmStream:
    """One call's pcm-ws session: serialises what the agent hears, parses what it sends back."""

    def __init__(
        self,
        call_id: str,
        from_: str,
        to: str,
        sample_rate: int = 16000,
        variables: Mapping[str, str] | None = None,
    ) -> None:
        if sample_rate not in PCMWS_RATES:
            raise ValueError(f"pcm-ws sample_rate must be one of {PCMWS_RATES}, got {sample_rate}")
        self.call_id = call_id
        self.from_ = from_
        self.to = to
        self.sample_rate = sample_rate
        self.variables = dict(variables or {})

    def start(self) -> str:
        return dumps(
            {
                "event": "start",
                "call_id": self.call_id,
                "from": self.from_,
                "to": self.to,
                "variables": self.variables,
                "sample_rate": self.sample_rate,
                "encoding": ENCODING,
            }
        )

    def audio(self, pcm: bytes) -> bytes:
        """Caller audio as the binary frame to send."""
        if len(pcm) % 2:
            raise ValueError(f"PCM16 audio must have an even length, got {len(pcm)} bytes")
        return bytes(pcm)

    def dtmf(self, digit: str) -> str:
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return dumps({"event": "dtmf", "digit": digit})

    def mark(self, name: str) -> str:
        return dumps({"event": "mark", "name": name})

    def clear(self) -> str:
        return dumps({"event": "clear"})

    def speech_started(self, offset_ms: int) -> str:
        return dumps({"event": "speech_started", "offset_ms": offset_ms})

    def speech_stopped(self, offset_ms: int, duration_ms: int) -> str:
        return dumps(
            {"event": "speech_stopped", "offset_ms": offset_ms, "duration_ms": duration_ms}
        )

    def stop(self) -> str:
        return dumps({"event": "stop"})

    def receive(self, frame: str | bytes) -> AgentEvent:
        """Parse one WebSocket frame from the agent: binary is audio, text is a JSON event."""
        if isinstance(frame, bytes | bytearray | memoryview):
            audio = bytes(frame)
            if len(audio) % 2:
                raise ProtocolError(
                    f"binary audio must be whole PCM16 samples, got {len(audio)} bytes"
                )
            return AgentAudio(audio)
        message = loads(frame)
        event = message.get("event")
        if event == "mark":
            name = message.get("name")
            if not isinstance(name, str):
                raise ProtocolError("mark event needs a string name")
            return AgentMark(name)
        if event == "clear":
            return AgentClear()
        if event == "hangup":
            reason = message.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise ProtocolError("hangup reason must be a string")
            return AgentHangup(reason)
        raise ProtocolError(f"unexpected event {event!r}; agents may send mark, clear or hangup")
