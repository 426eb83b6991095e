"""The per-call media contract between the SIP engine and the audio side.

The engine's audio port calls `on_caller_frame` and `next_frame` on pjmedia's clock thread,
every 20 ms: implementations only move bytes between buffers, never block and never do I/O.
"""

from __future__ import annotations

from typing import Protocol

from media.agents.echo import EchoAgent


class MediaSession(Protocol):
    rate: int

    def on_caller_frame(self, pcm: bytes) -> None: ...

    def next_frame(self) -> bytes: ...

    def close(self) -> None: ...


class EchoSession:
    """Plays the caller back to themselves after a delay (the built-in `echo` agent)."""

    def __init__(self, delay_ms: int, rate: int = 16000) -> None:
        self.rate = rate
        self._echo = EchoAgent(delay_ms=delay_ms, rate=rate)
        self._pending: bytes | None = None
        self.frames_in = 0
        self.frames_out = 0

    def on_caller_frame(self, pcm: bytes) -> None:
        self.frames_in += 1
        self._pending = self._echo.push(pcm)

    def next_frame(self) -> bytes:
        self.frames_out += 1
        frame, self._pending = self._pending, None
        return frame if frame is not None else self._echo.silence

    def close(self) -> None:
        self._pending = None
