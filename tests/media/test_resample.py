"""Resampler: streaming equals one block, tones pass or are stopped as a telephone band needs."""

from __future__ import annotations

import numpy as np
import pytest

from media.frames import bytes_per_frame
from media.resample import Resampler

PAIRS = [
    (8000, 16000),
    (16000, 8000),
    (8000, 24000),
    (24000, 8000),
    (16000, 24000),
    (24000, 16000),
    (8000, 48000),
    (48000, 8000),
    (16000, 48000),
    (48000, 16000),
    (24000, 48000),
    (48000, 24000),
]


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 10000) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def rms(pcm: bytes, skip_s: float, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)[int(skip_s * rate) :]
    return float(np.sqrt(np.mean(x**2)))


def gain_db(pcm_in: bytes, in_rate: int, pcm_out: bytes, out_rate: int) -> float:
    # Floor the output at a tenth of an LSB: a perfectly stopped tone rounds to digital zero.
    return 20 * np.log10(max(rms(pcm_out, 0.1, out_rate), 0.1) / rms(pcm_in, 0.1, in_rate))


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_twenty_ms_frames_one_by_one_equal_one_block(in_rate: int, out_rate: int) -> None:
    signal = tone(440, in_rate) + tone(1800, in_rate, amplitude=5000)
    frame = bytes_per_frame(in_rate)
    streamed = Resampler(in_rate, out_rate)
    pieces = [streamed.process(signal[i : i + frame]) for i in range(0, len(signal), frame)]
    assert b"".join(pieces) == Resampler(in_rate, out_rate).process(signal)
    assert {len(p) for p in pieces} == {bytes_per_frame(out_rate)}


def test_uneven_chunks_give_the_same_output_as_one_block() -> None:
    signal = tone(700, 16000, seconds=0.5)
    rng = np.random.default_rng(7)
    cuts = np.sort(rng.choice(np.arange(1, len(signal) // 2), size=40, replace=False)) * 2
    streamed = Resampler(16000, 24000)
    out = b"".join(streamed.process(p) for p in np.split(np.frombuffer(signal, np.uint8), cuts))
    assert out == Resampler(16000, 24000).process(signal)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_one_khz_tone_passes_at_unity_gain(in_rate: int, out_rate: int) -> None:
    signal = tone(1000, in_rate)
    out = Resampler(in_rate, out_rate).process(signal)
    assert abs(gain_db(signal, in_rate, out, out_rate)) < 0.1


@pytest.mark.parametrize("freq", [4200, 6000, 7500])
def test_tones_above_4khz_are_stopped_when_downsampling_to_8k(freq: int) -> None:
    signal = tone(freq, 16000)
    out = Resampler(16000, 8000).process(signal)
    assert gain_db(signal, 16000, out, 8000) < -40


def test_tone_above_new_nyquist_is_stopped_from_48k() -> None:
    signal = tone(9000, 48000)
    out = Resampler(48000, 16000).process(signal)
    assert gain_db(signal, 48000, out, 16000) < -40


def test_upsampling_leaves_no_image_above_the_old_nyquist() -> None:
    out = np.frombuffer(Resampler(8000, 16000).process(tone(3000, 8000)), "<i2")[1600:]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    freqs = np.fft.rfftfreq(len(out), 1 / 16000)
    wanted = spectrum[np.argmin(np.abs(freqs - 3000))]
    image = spectrum[np.argmin(np.abs(freqs - 5000))]
    assert 20 * np.log10(image / wanted) < -60


def test_frame_boundaries_make_no_clicks() -> None:
    signal = tone(440, 8000)
    resampler = Resampler(8000, 16000)
    frame = bytes_per_frame(8000)
    out = b"".join(resampler.process(signal[i : i + frame]) for i in range(0, len(signal), frame))
    y = np.frombuffer(out, "<i2").astype(np.float64)[800:]
    # A 440 Hz sine at 10000 peak moves at most 2*pi*440*10000/16000 ~ 1728 per sample.
    assert np.abs(np.diff(y)).max() < 1800


def test_equal_rates_pass_audio_through() -> None:
    signal = tone(440, 16000, seconds=0.02)
    assert Resampler(16000, 16000).process(signal) == signal


def test_unsupported_rate_and_odd_length_are_rejected() -> None:
    with pytest.raises(ValueError, match="unsupported sample rate"):
        Resampler(11025, 8000)
    with pytest.raises(ValueError, match="even length"):
        Resampler(8000, 16000).process(b"\x00")


def test_empty_chunk_returns_empty_bytes() -> None:
    assert Resampler(8000, 16000).process(b"") == b""
