"""Agent-to-caller playout: a bounded queue of PCM16 paced out one frame per clock tick.

Agents send audio faster than real time; the call's media clock takes exactly one frame per
tick with next_frame(). Marks are positions in the byte stream (Twilio semantics): a mark is
reported once all audio written before it has been played, and clear() (barge-in) drops the
queued audio and hands back every pending mark so the agent is never left waiting for one.

An agent that streams in real time (an echo, a speech-to-speech model paced as it speaks)
never gets ahead again once a late frame has queued behind another: the frame it waited for
stays in the queue as latency for the rest of the call, one more each time the network or
the host hiccups. So when a whole window (TRIM_WINDOW frames, 1 s) never saw the queue hold
less than one frame beyond the one playing, and no more than TRIM_MAX_MS (it is jitter, not
an agent's lead: a TTS burst queued ahead is content), the next frame of silence at the head
is dropped (`trimmed` counts them): at most 20 ms a second, and never a voiced frame.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np

from media.errors import PlayoutOverflow
from media.frames import FRAME_MS, SAMPLE_WIDTH, bytes_per_frame, bytes_to_ms, ms_to_bytes, silence

DEFAULT_MAX_BUFFER_MS = 120_000
TRIM_WINDOW = 50  # frames (1 s at 20 ms) a standing backlog must last before a frame goes
TRIM_MAX_MS = 200  # a backlog up to this is latency to take back; above it, the agent's lead
SILENT_PEAK = 64  # |sample| at or below this (PCM16, about -54 dBFS) in every sample: silence


class PlayedFrame(NamedTuple):
    audio: bytes  # exactly one frame, silence-padded on underrun
    marks: list[str]  # marks whose audio has now been played, in the order they were set


class Playout:
    """Frame-paced buffer of agent audio with marks and clear."""

    def __init__(
        self,
        rate: int = 8000,
        frame_ms: int = FRAME_MS,
        max_buffer_ms: int = DEFAULT_MAX_BUFFER_MS,
    ) -> None:
        self.rate = rate
        self.frame_bytes = bytes_per_frame(rate, frame_ms)
        self.max_buffer_ms = max_buffer_ms
        self._max_bytes = ms_to_bytes(max_buffer_ms, rate)
        self._silence = silence(rate, frame_ms)
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already played
        self._buffered = 0
        self._written = 0  # absolute stream position of the end of the buffer
        self._played = 0  # absolute stream position of the next byte to play
        self._marks: deque[tuple[int, str]] = deque()
        self.underruns = 0  # frames that ran dry part-way and were padded with silence
        self.trimmed = 0  # silent frames dropped to take back a standing backlog
        self._trim_max = ms_to_bytes(TRIM_MAX_MS, rate)
        self._window = 0  # frames played in this window
        self._least = self._max_bytes  # the least backlog (beyond the frame playing) in it
        self._trim = False  # a standing backlog was seen: drop the next silent head frame

    @property
    def buffered_ms(self) -> float:
        return bytes_to_ms(self._buffered, self.rate)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    @property
    def is_playing(self) -> bool:
        return self._buffered > 0

    @property
    def pending_marks(self) -> list[str]:
        return [name for _, name in self._marks]

    def write(self, pcm: bytes) -> None:
        """Queue agent audio. Raises PlayoutOverflow (and keeps none of `pcm`) when full."""
        if len(pcm) % SAMPLE_WIDTH:
            raise ValueError(f"PCM16 audio must have an even length, got {len(pcm)} bytes")
        if not pcm:
            return
        if self._buffered + len(pcm) > self._max_bytes:
            raise PlayoutOverflow(
                f"playout buffer full: {self.buffered_ms:.0f} ms queued, "
                f"{bytes_to_ms(len(pcm), self.rate):.0f} ms more would exceed "
                f"max_buffer_ms={self.max_buffer_ms}; chunk dropped"
            )
        self._chunks.append(bytes(pcm))
        self._buffered += len(pcm)
        self._written += len(pcm)

    def mark(self, name: str) -> None:
        """Set a mark at the current end of the queued audio."""
        self._marks.append((self._written, name))

    def next_frame(self) -> PlayedFrame:
        """Take one frame for the caller, and the marks that its playing completes."""
        self._watch_backlog()
        audio = self._take(self.frame_bytes)
        if self._trim and self._buffered >= self.frame_bytes and _silent(audio):
            audio = self._take(self.frame_bytes)  # the silent one is never heard: its marks
            self.trimmed += 1  # are reported with this frame
            self._trim = False
        if not audio:
            audio = self._silence
        elif len(audio) < self.frame_bytes:
            self.underruns += 1
            audio += self._silence[len(audio) :]
        marks: list[str] = []
        while self._marks and self._marks[0][0] <= self._played:
            marks.append(self._marks.popleft()[1])
        return PlayedFrame(audio, marks)

    def _watch_backlog(self) -> None:
        """Arm a trim once a whole window kept at least one frame queued behind the one to
        play, and no more than TRIM_MAX_MS (see the module's docstring)."""
        self._least = min(self._least, max(self._buffered - self.frame_bytes, 0))
        self._window += 1
        if self._window < TRIM_WINDOW:
            return
        if self.frame_bytes <= self._least <= self._trim_max:
            self._trim = True
        self._window, self._least = 0, self._max_bytes

    def clear(self) -> list[str]:
        """Drop all queued audio (barge-in); return the pending marks, which are now void."""
        dropped = self.pending_marks
        self._trim, self._window, self._least = False, 0, self._max_bytes
        self._chunks.clear()
        self._marks.clear()
        self._offset = 0
        self._played = self._written
        self._buffered = 0
        return dropped

    def _take(self, size: int) -> bytes:
        if not self._chunks:
            return b""
        head = self._chunks[0]
        if len(head) - self._offset >= size:  # the common case: one slice of one chunk
            piece = head[self._offset : self._offset + size]
            self._advance(size)
            return piece
        parts: list[bytes] = []
        remaining = size
        while remaining and self._chunks:
            head = self._chunks[0]
            n = min(remaining, len(head) - self._offset)
            parts.append(head[self._offset : self._offset + n])
            self._advance(n)
            remaining -= n
        return b"".join(parts)

    def _advance(self, n: int) -> None:
        self._offset += n
        self._buffered -= n
        self._played += n
        if self._offset == len(self._chunks[0]):
            self._chunks.popleft()
            self._offset = 0


def _silent(frame: bytes) -> bool:
    """Every sample of the PCM16 frame within SILENT_PEAK of zero."""
    samples = np.frombuffer(frame, "<i2")
    return int(samples.max()) <= SILENT_PEAK and int(samples.min()) >= -SILENT_PEAK
