"""Voice activity: webrtcvad per frame, smoothed into SpeechStarted / SpeechStopped events.

`SpeechSmoother` is the pure state machine (per-frame booleans in, events out) so it can be
tested without audio; `SpeechDetector` feeds it webrtcvad decisions for PCM16 frames.
Speech starts after `min_speech_ms` of consecutive voiced frames (its offset is the first of
them) and stops after `hangover_ms` of unvoiced frames (its offset is the end of the last
voiced frame, so the event is reported `hangover_ms` after the offset it carries).
"""

from __future__ import annotations

from dataclasses import dataclass

import webrtcvad

from media.frames import bytes_per_frame

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    offset_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    offset_ms: int
    duration_ms: int


SpeechEvent = SpeechStarted | SpeechStopped


class SpeechSmoother:
    """Debounce per-frame voiced/unvoiced decisions into speech start/stop events."""

    def __init__(
        self, frame_ms: int = 20, min_speech_ms: int = 100, hangover_ms: int = 300
    ) -> None:
        if frame_ms <= 0 or min_speech_ms < 0 or hangover_ms < 0:
            raise ValueError("frame_ms must be > 0; min_speech_ms and hangover_ms >= 0")
        self.frame_ms = frame_ms
        self.min_speech_ms = min_speech_ms
        self.hangover_ms = hangover_ms
        self.in_speech = False
        self._voiced_since: int | None = None  # first frame of the current voiced run
        self._speech_start = 0
        self._last_voiced_end = 0

    def update(self, voiced: bool, timestamp_ms: int) -> list[SpeechEvent]:
        """Take the decision for the frame starting at `timestamp_ms`; return new events."""
        frame_end = timestamp_ms + self.frame_ms
        if voiced:
            self._last_voiced_end = frame_end
            if self.in_speech:
                return []
            if self._voiced_since is None:
                self._voiced_since = timestamp_ms
            if frame_end - self._voiced_since >= self.min_speech_ms:
                self.in_speech = True
                self._speech_start = self._voiced_since
                self._voiced_since = None
                return [SpeechStarted(self._speech_start)]
            return []
        self._voiced_since = None
        if self.in_speech and frame_end - self._last_voiced_end >= self.hangover_ms:
            return [self._stop()]
        return []

    def flush(self) -> list[SpeechEvent]:
        """End of stream: close an open speech segment at its last voiced frame."""
        self._voiced_since = None
        return [self._stop()] if self.in_speech else []

    def _stop(self) -> SpeechStopped:
        self.in_speech = False
        return SpeechStopped(self._last_voiced_end, self._last_voiced_end - self._speech_start)


class SpeechDetector:
    """webrtcvad + smoothing for one call's caller audio (PCM16 LE at `rate`)."""

    def __init__(
        self,
        rate: int = 8000,
        aggressiveness: int = 2,
        frame_ms: int = 20,
        min_speech_ms: int = 100,
        hangover_ms: int = 300,
    ) -> None:
        if rate not in VAD_RATES:
            raise ValueError(f"webrtcvad needs a rate in {VAD_RATES}, got {rate}")
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"webrtcvad needs frame_ms in {VAD_FRAME_MS}, got {frame_ms}")
        if aggressiveness not in range(4):
            raise ValueError(f"aggressiveness must be 0..3, got {aggressiveness}")
        self.rate = rate
        self.frame_ms = frame_ms
        self._frame_bytes = bytes_per_frame(rate, frame_ms)
        self._vad = webrtcvad.Vad(aggressiveness)
        self.smoother = SpeechSmoother(frame_ms, min_speech_ms, hangover_ms)

    @property
    def in_speech(self) -> bool:
        return self.smoother.in_speech

    def feed(self, frame: bytes, timestamp_ms: int) -> list[SpeechEvent]:
        """Classify audio starting at `timestamp_ms`, a whole number of `frame_ms` frames long."""
        size = self._frame_bytes
        if len(frame) == size:  # the media path's case: one frame
            voiced = self._vad.is_speech(frame, self.rate)
            return self.smoother.update(bool(voiced), timestamp_ms)
        if not frame or len(frame) % size:
            raise ValueError(
                f"expected a multiple of {size} bytes ({self.frame_ms} ms), got {len(frame)}"
            )
        events: list[SpeechEvent] = []
        view = memoryview(frame)
        for k in range(len(frame) // size):
            voiced = bool(self._vad.is_speech(view[k * size : (k + 1) * size], self.rate))
            events += self.smoother.update(voiced, timestamp_ms + k * self.frame_ms)
        return events

    def flush(self) -> list[SpeechEvent]:
        return self.smoother.flush()
