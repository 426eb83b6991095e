"""Twilio Media Streams, gateway side, sans-IO: we play Twilio's part so existing bots work.

Methods return the JSON text frame to send; receive() parses a frame from the agent into an
event or raises ProtocolError. Shapes follow twilio.com/docs/voice/media-streams/websocket-messages:
string sequenceNumber (1 on `start`, +1 per message; `connected` has none), string
media.chunk (+1 per media message) and media.timestamp (ms since stream start), base64 mu-law
8 kHz payloads. From the agent: `media`, `mark` and `clear`.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from media.agents.events import AgentClear, AgentEvent, AgentMark, AgentMedia
from media.agents.wire import dumps, loads
from media.errors import ProtocolError

MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class TwilioStream:
    """One call's Media Stream: serialises what the agent hears, parses what it sends back."""

    def __init__(
        self,
        stream_sid: str,
        call_sid: str,
        account_sid: str,
        tracks: Sequence[str] = ("inbound",),
        custom_parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.account_sid = account_sid
        self.tracks = list(tracks)
        self.custom_parameters = dict(custom_parameters or {})
        self._sequence = 0
        self._chunk = 0
        self._media_template: str | None = None
        self._media_track = ""

    def connected(self) -> str:
        return dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return self._send(
            "start",
            start={
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": self.tracks,
                "customParameters": self.custom_parameters,
                "mediaFormat": MEDIA_FORMAT,
            },
        )

    def media(self, payload_mulaw: bytes, timestamp_ms: int, track: str = "inbound") -> str:
        """Caller audio (mu-law 8 kHz) captured `timestamp_ms` after the stream started.

        Fifty of these a second per call: written from a template (the same JSON, byte for
        byte, that json.dumps gives for the message) rather than through json.dumps."""
        self._chunk += 1
        self._sequence += 1
        if self._media_template is None:
            self._media_template = (
                '{"event":"media","sequenceNumber":"%d","media":{"track":'
                + json.dumps(track).replace("%", "%%")
                + ',"chunk":"%d","timestamp":"%d","payload":"%s"},"streamSid":'
                + json.dumps(self.stream_sid).replace("%", "%%")
                + "}"
            )
            self._media_track = track
        if track != self._media_track:  # another track: the general path
            self._sequence -= 1
            return self._send("media", media={"track": track, "chunk": str(self._chunk),
                                              "timestamp": str(timestamp_ms),
                                              "payload": _b64(payload_mulaw)})  # fmt: skip
        return self._media_template % (self._sequence, self._chunk, timestamp_ms,
                                       _b64(payload_mulaw))  # fmt: skip

    def dtmf(self, digit: str) -> str:
        if digit not in DTMF_DIGITS:
            raise ValueError(f"not a DTMF digit: {digit!r}")
        return self._send("dtmf", dtmf={"track": "inbound_track", "digit": digit})

    def mark(self, name: str) -> str:
        """Echo a mark whose audio has been played (or dropped by a clear)."""
        return self._send("mark", mark={"name": name})

    def stop(self) -> str:
        return self._send("stop", stop={"accountSid": self.account_sid, "callSid": self.call_sid})

    def receive(self, frame: str | bytes) -> AgentEvent:
        """Parse one WebSocket frame from the agent."""
        if isinstance(frame, bytes):
            raise ProtocolError("Twilio Media Streams carries JSON text frames, got binary")
        message = loads(frame)
        stream_sid = message.get("streamSid")
        if stream_sid is not None and stream_sid != self.stream_sid:
            raise ProtocolError(f"streamSid {stream_sid!r} is not this stream ({self.stream_sid})")
        event = message.get("event")
        if event == "media":
            payload = _field(message, "media", "payload")
            try:
                # what base64.b64decode(payload, validate=True) does, one call less
                return AgentMedia(binascii.a2b_base64(payload, strict_mode=True))
            except (binascii.Error, ValueError) as exc:
                raise ProtocolError(f"media.payload is not valid base64: {exc}") from exc
        if event == "mark":
            return AgentMark(_field(message, "mark", "name"))
        if event == "clear":
            return AgentClear()
        raise ProtocolError(f"unexpected event {event!r}; agents may send media, mark or clear")

    def _send(self, event: str, **body: Any) -> str:
        self._sequence += 1
        return dumps(
            {
                "event": event,
                "sequenceNumber": str(self._sequence),
                **body,
                "streamSid": self.stream_sid,
            }
        )


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")  # base64.b64encode's core


def _field(message: Mapping[str, Any], obj: str, key: str) -> str:
    inner = message.get(obj)
    value = inner.get(key) if isinstance(inner, dict) else None
    if not isinstance(value, str):
        raise ProtocolError(f"{message.get('event')} message needs a string {obj}.{key}")
    return value
