"""webrtc: agents reached over WebRTC (WHIP-style offer/answer), gateway side, sans-IO.

Audio travels on one sendrecv audio track (Opus at 48 kHz preferred, PCMU as fallback); the
gateway sends 20 ms frames of 48 kHz mono and plays whatever the agent's track carries.
Control travels on a data channel named `events`, one JSON text message each, with exactly
the `pcm-ws` control messages (media/agents/pcmws.py): `start` (with `variables`), `dtmf`,
`mark`, `clear`, `speech_started`, `speech_stopped`, `stop` to the agent; `mark`, `clear`,
`hangup` from it. In `start`, `sample_rate` is 48000 and `encoding` the negotiated codec.

This module holds the pure parts: codec preference, reading the answer's codec, the events
channel messages and the per-call link with its resampling. gateway/session/webrtc.py is the
aiortc shell around them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

import numpy as np

from media.agents.events import AgentAudio, AgentEvent
from media.agents.pcmws import PcmStream
from media.errors import ProtocolError
from media.resample import Resampler
from media.vad import SpeechEvent, SpeechStarted

EVENTS_CHANNEL = "events"
TRACK_RATE = 48000  # what the gateway's track sends; Opus runs at 48 kHz whatever it carries
CODEC_PREFERENCE = ("audio/opus", "audio/PCMU")  # best first; nothing else is offered


class _Codec(Protocol):
    @property
    def mimeType(self) -> str: ...  # noqa: N802 - aiortc's RTCRtpCodecCapability spelling


C = TypeVar("C", bound=_Codec)


def prefer_codecs(codecs: Sequence[C], order: Sequence[str] = CODEC_PREFERENCE) -> list[C]:
    """The codecs to offer, for RTCRtpTransceiver.setCodecPreferences: those named in `order`,
    in that order (MIME types compare case-insensitively), everything else left out."""
    rank = {mime.lower(): i for i, mime in enumerate(order)}
    chosen = [c for c in codecs if c.mimeType.lower() in rank]
    return sorted(chosen, key=lambda c: rank[c.mimeType.lower()])


def answer_codec(sdp: str) -> str | None:
    """The audio codec an SDP answer selected: the encoding name of the first payload type on
    its first accepted `m=audio` line ("opus", "PCMU"), or None if audio was rejected."""
    in_audio = False
    first_pt: str | None = None
    for line in sdp.splitlines():
        if line.startswith("m="):
            if in_audio:
                break  # past the audio section without its rtpmap
            fields = line[2:].split()
            if fields and fields[0] == "audio" and len(fields) > 3 and fields[1] != "0":
                in_audio, first_pt = True, fields[3]
        elif in_audio and line.startswith(f"a=rtpmap:{first_pt} "):
            return line.split(" ", 1)[1].split("/", 1)[0]
    if in_audio and first_pt in ("0", "8"):  # static payload types may go without rtpmap
        return "PCMU" if first_pt == "0" else "PCMA"
    return None


class EventsChannel:
    """One call's `events` data channel: pcm-ws control messages, no audio."""

    def __init__(
        self, call_id: str, from_: str, to: str, variables: Mapping[str, str] | None = None
    ) -> None:
        # PcmStream serialises and parses the shared messages; its rate is not used here.
        self._pcm = PcmStream(call_id, from_, to, 16000, variables)

    def start(self, codec: str) -> str:
        pcm = self._pcm
        message = {
            "event": "start",
            "call_id": pcm.call_id,
            "from": pcm.from_,
            "to": pcm.to,
            "variables": pcm.variables,
            "sample_rate": TRACK_RATE,
            "encoding": codec,
        }
        return json.dumps(message, separators=(",", ":"))

    def dtmf(self, digit: str) -> str:
        return self._pcm.dtmf(digit)

    def mark(self, name: str) -> str:
        return self._pcm.mark(name)

    def clear(self) -> str:
        return self._pcm.clear()

    def speech_started(self, offset_ms: int) -> str:
        return self._pcm.speech_started(offset_ms)

    def speech_stopped(self, offset_ms: int, duration_ms: int) -> str:
        return self._pcm.speech_stopped(offset_ms, duration_ms)

    def stop(self) -> str:
        return self._pcm.stop()

    def receive(self, message: str | bytes) -> AgentEvent:
        """Parse one data-channel message from the agent: mark, clear or hangup."""
        if not isinstance(message, str):
            raise ProtocolError(
                "the events channel takes JSON text; audio travels on the audio track"
            )
        event = self._pcm.receive(message)
        if isinstance(event, AgentAudio):  # pragma: no cover - text never parses as audio
            raise ProtocolError("audio on the events channel")
        return event


def downmix(pcm: bytes, channels: int) -> bytes:
    """Interleaved PCM16 of `channels` channels -> mono (the channels' mean)."""
    if channels == 1:
        return pcm
    x = np.frombuffer(pcm, "<i2").reshape(-1, channels).astype(np.int32)
    mono: bytes = (x.sum(axis=1) // channels).astype("<i2").tobytes()
    return mono


class WebRtcLink:
    """The webrtc agent seen from the call's audio port: PCM16 at `rate` in and out.

    Caller frames leave as 48 kHz mono PCM for the gateway's track; the agent's decoded frames
    (48 kHz stereo from Opus, 8 kHz mono from PCMU) come back through `agent_frame` at `rate`.
    Binary messages are audio and text messages are the events channel, as in pcm-ws.
    """

    transport = "webrtc"

    def __init__(
        self,
        call_id: str,
        from_: str,
        to: str,
        variables: Mapping[str, str],
        rate: int = 16000,
    ) -> None:
        self.rate = rate
        self.codec = "opus"  # set from the answer before opening()
        self.events = EventsChannel(call_id, from_, to, dict(variables))
        self._to_track = Resampler(rate, TRACK_RATE)
        self._from_track: dict[int, Resampler] = {}

    def opening(self) -> list[str | bytes]:
        return [self.events.start(self.codec)]

    def caller_frame(self, pcm: bytes, offset_ms: int, mulaw: bytes | None = None) -> bytes:
        return self._to_track.process(pcm)

    def agent_frame(self, pcm: bytes, rate: int, channels: int) -> bytes:
        """A frame decoded from the agent's track (interleaved PCM16) as mono at `rate`."""
        mono = downmix(pcm, channels)
        if rate == self.rate:
            return mono
        resampler = self._from_track.get(rate)
        if resampler is None:
            resampler = self._from_track[rate] = Resampler(rate, self.rate)
        return resampler.process(mono)

    def receive(self, frame: str | bytes) -> AgentEvent:
        if isinstance(frame, bytes):
            return AgentAudio(frame)  # already at `rate`: agent_frame made it
        return self.events.receive(frame)

    def marks_played(self, names: Sequence[str]) -> list[str | bytes]:
        return [self.events.mark(name) for name in names]

    def barge_in(self, dropped_marks: Sequence[str]) -> list[str | bytes]:
        return [self.events.clear(), *self.marks_played(dropped_marks)]

    def caller_speech(self, event: SpeechEvent) -> list[str | bytes]:
        if isinstance(event, SpeechStarted):
            return [self.events.speech_started(event.offset_ms)]
        return [self.events.speech_stopped(event.offset_ms, event.duration_ms)]

    def dtmf(self, digit: str) -> str:
        return self.events.dtmf(digit)

    def closing(self) -> list[str | bytes]:
        return [self.events.stop()]
