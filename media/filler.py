"""What a caller hears while the agent is away (reconnecting): comfort noise, or a WAV file
played in a loop. Pure: 20 ms PCM16 frames out."""

from __future__ import annotations

import wave

import numpy as np

from media.frames import bytes_per_frame
from media.resample import Resampler

COMFORT_NOISE = "comfort_noise"
NOISE_LEVEL = 40.0  # RMS in PCM16 units: about -58 dBFS, a quiet line, not dead air


class Filler:
    def __init__(self, source: str, rate: int, seed: int = 0) -> None:
        """`source`: comfort_noise, or the path of a mono 16-bit WAV (resampled to `rate`)."""
        self.frame_bytes = bytes_per_frame(rate)
        if source == COMFORT_NOISE:
            noise = np.random.default_rng(seed).normal(0.0, NOISE_LEVEL, rate)  # 1 s, looped
            audio = np.clip(noise, -32768, 32767).astype("<i2").tobytes()
        else:
            audio = _wav(source, rate)
        # whole frames only, at least one
        frames = max(1, len(audio) // self.frame_bytes)
        self._audio = (audio * 2)[: frames * self.frame_bytes] if audio else bytes(self.frame_bytes)
        self._offset = 0

    def next_frame(self) -> bytes:
        start = self._offset
        self._offset = (start + self.frame_bytes) % len(self._audio)
        return self._audio[start : start + self.frame_bytes]


def _wav(path: str, rate: int) -> bytes:
    with wave.open(path, "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(f"{path}: a filler must be mono 16-bit PCM")
        source_rate = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    if source_rate != rate:
        pcm = Resampler(source_rate, rate).process(pcm)
    return pcm
