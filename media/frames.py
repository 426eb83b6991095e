"""Frame constants for the media loop: every path moves 20 ms frames of 16-bit mono PCM (LE)."""

from __future__ import annotations

from functools import cache

FRAME_MS = 20
SAMPLE_WIDTH = 2  # bytes per PCM16 sample
SUPPORTED_RATES = (8000, 16000, 24000, 48000)


def samples_per_frame(rate: int, frame_ms: int = FRAME_MS) -> int:
    """Number of samples in one frame of `frame_ms` at `rate` Hz."""
    if rate <= 0 or (rate * frame_ms) % 1000:
        raise ValueError(f"{frame_ms} ms at {rate} Hz is not a whole number of samples")
    return rate * frame_ms // 1000


def bytes_per_frame(rate: int, frame_ms: int = FRAME_MS) -> int:
    """Number of PCM16 bytes in one frame of `frame_ms` at `rate` Hz."""
    return samples_per_frame(rate, frame_ms) * SAMPLE_WIDTH


def ms_to_bytes(ms: int, rate: int) -> int:
    """PCM16 byte count of `ms` milliseconds at `rate` Hz (rounded down to a whole sample)."""
    return rate * ms // 1000 * SAMPLE_WIDTH


def bytes_to_ms(n: int, rate: int) -> float:
    """Duration in milliseconds of `n` PCM16 bytes at `rate` Hz."""
    return n / SAMPLE_WIDTH * 1000 / rate


@cache
def silence(rate: int, frame_ms: int = FRAME_MS) -> bytes:
    """One frame of digital silence; cached, so the hot path never allocates it."""
    return bytes(bytes_per_frame(rate, frame_ms))
