"""The built-in echo agent: plays the caller back to themselves `delay_ms` later.

A fixed ring of exactly `delay_ms` of audio: each push reads out the bytes written `delay_ms`
ago and overwrites them with the new frame, so the steady state allocates nothing but the
returned frame.
"""

from __future__ import annotations

from media.frames import FRAME_MS, SAMPLE_WIDTH, ms_to_bytes, silence


class EchoAgent:
    """Pure echo logic: push(caller_frame) -> the frame to play now (silence until the delay)."""

    def __init__(self, delay_ms: int, rate: int = 16000) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms must be >= 0, got {delay_ms}")
        self.delay_ms = delay_ms
        self.rate = rate
        self.silence = silence(rate, FRAME_MS)
        self._ring = bytearray(ms_to_bytes(delay_ms, rate))
        self._pos = 0

    def push(self, caller_frame: bytes) -> bytes:
        """Store `caller_frame`; return the same number of bytes from `delay_ms` earlier."""
        n = len(caller_frame)
        if n % SAMPLE_WIDTH:
            raise ValueError(f"PCM16 frame must have an even length, got {n} bytes")
        cap = len(self._ring)
        if cap == 0:
            return bytes(caller_frame)
        if n > cap:
            # Frame longer than the delay: the ring drains fully and part of this frame plays now.
            older = self._ring[self._pos :] + self._ring[: self._pos]
            combined = older + caller_frame
            self._ring[:] = combined[n:]
            self._pos = 0
            return bytes(combined[:n])
        end = self._pos + n
        if end <= cap:
            out = bytes(self._ring[self._pos : end])
            self._ring[self._pos : end] = caller_frame
        else:
            first = cap - self._pos
            out = bytes(self._ring[self._pos :]) + bytes(self._ring[: n - first])
            self._ring[self._pos :] = caller_frame[:first]
            self._ring[: n - first] = caller_frame[first:]
        self._pos = end % cap
        return out
