"""What an agent can ask of the call, whichever protocol carried it (Twilio or raw PCM)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AgentMedia:
    """Audio to play to the caller as G.711 mu-law at 8 kHz (Twilio Media Streams)."""

    mulaw: bytes


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Audio to play to the caller as PCM16 LE at the stream's sample rate (pcm-ws)."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class AgentMark:
    """Report back `name` once the audio sent before this mark has been played."""

    name: str


@dataclass(frozen=True, slots=True)
class AgentClear:
    """Drop all queued audio now (barge-in); pending marks are reported back."""


@dataclass(frozen=True, slots=True)
class AgentHangup:
    """End the call."""

    reason: str | None = None


AgentEvent = AgentMedia | AgentAudio | AgentMark | AgentClear | AgentHangup
