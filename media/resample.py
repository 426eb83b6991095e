"""Rational-ratio PCM16 resampling (8/16/24/48 kHz) with a polyphase windowed-sinc FIR.

The prototype low-pass runs at in_rate * up and is Kaiser-windowed for ~80 dB stopband
attenuation; its stopband starts at the lower rate's Nyquist frequency, so downsampling
does not alias and upsampling does not image. Filter history is carried across calls:
feeding 20 ms frames one at a time yields the same samples as one large block.
"""

from __future__ import annotations

from math import ceil, gcd, pi

import numpy as np
import numpy.typing as npt

from media.frames import SUPPORTED_RATES

STOPBAND_DB = 80.0
# Transition band as a fraction of the lower Nyquist frequency: the passband ends at 0.84 of it
# (3.36 kHz for 8 kHz audio) and the stopband starts at Nyquist, so nothing folds back.
TRANSITION = 0.16


def _design_lowpass(fs: int, cutoff_hz: float, transition_hz: float) -> npt.NDArray[np.float64]:
    """Kaiser-windowed sinc low-pass at sample rate `fs`, unity DC gain."""
    beta = 0.1102 * (STOPBAND_DB - 8.7)
    width = 2 * pi * transition_hz / fs
    taps = ceil((STOPBAND_DB - 8.0) / (2.285 * width)) + 1
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff_hz / fs * n) * np.kaiser(taps, beta)
    result: npt.NDArray[np.float64] = h / h.sum()
    return result


class Resampler:
    """Streaming PCM16 LE resampler from `in_rate` to `out_rate`; process(bytes) -> bytes."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for rate in (in_rate, out_rate):
            if rate not in SUPPORTED_RATES:
                raise ValueError(f"unsupported sample rate {rate}; use one of {SUPPORTED_RATES}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = gcd(in_rate, out_rate)
        self.up = out_rate // g
        self.down = in_rate // g
        nyquist = min(in_rate, out_rate) / 2
        h = _design_lowpass(
            in_rate * self.up,
            cutoff_hz=nyquist * (1 - TRANSITION / 2),
            transition_hz=nyquist * TRANSITION,
        )
        per_phase = ceil(len(h) / self.up)
        h = np.concatenate([h, np.zeros(per_phase * self.up - len(h))]) * self.up
        # phases[p] holds h[p], h[p + up], ... reversed, so it dots with x[i-K+1 .. i].
        self._phases = np.ascontiguousarray(h.reshape(per_phase, self.up).T[:, ::-1])
        self._history = np.zeros(per_phase - 1)
        self._consumed = 0  # input samples seen so far
        self._next_out = 0  # index of the next output sample
        self.taps_per_phase = per_phase

    @property
    def delay_ms(self) -> float:
        """Group delay of the filter in milliseconds."""
        return (self.taps_per_phase * self.up - 1) / 2 / (self.in_rate * self.up) * 1000

    def process(self, pcm: bytes) -> bytes:
        """Resample a chunk of PCM16 LE; returns every output sample it completes."""
        if len(pcm) % 2:
            raise ValueError(f"PCM16 data must have an even length, got {len(pcm)} bytes")
        if self.up == self.down:
            return bytes(pcm)
        x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if len(x) == 0:
            return b""
        total = self._consumed + len(x)
        end = (total * self.up + self.down - 1) // self.down
        n = np.arange(self._next_out, end, dtype=np.int64)
        position = n * self.down
        newest_input = position // self.up  # the latest input sample each output depends on
        phase = position % self.up
        extended = np.concatenate([self._history, x])
        windows = np.lib.stride_tricks.sliding_window_view(extended, self.taps_per_phase)
        y = np.einsum("nk,nk->n", windows[newest_input - self._consumed], self._phases[phase])
        keep = self.taps_per_phase - 1
        self._history = extended[len(extended) - keep :] if keep else extended[:0]
        self._consumed = total
        self._next_out = end
        out: bytes = np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()
        return out
