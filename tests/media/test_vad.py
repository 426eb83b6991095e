"""Speech detection: the smoothing state machine with booleans, then webrtcvad on real samples."""

from __future__ import annotations

import numpy as np
import pytest

from media.frames import bytes_per_frame
from media.vad import SpeechDetector, SpeechSmoother, SpeechStarted, SpeechStopped


def run(smoother: SpeechSmoother, pattern: str) -> list[object]:
    """Feed one frame per character ('1' voiced, '0' not) starting at t=0."""
    events: list[object] = []
    for i, c in enumerate(pattern):
        events += smoother.update(c == "1", i * smoother.frame_ms)
    return events


def test_speech_starts_after_min_speech_at_the_first_voiced_frame() -> None:
    smoother = SpeechSmoother(frame_ms=20, min_speech_ms=60, hangover_ms=100)
    assert run(smoother, "00111") == [SpeechStarted(offset_ms=40)]
    assert smoother.in_speech


def test_voiced_blips_shorter_than_min_speech_are_ignored() -> None:
    smoother = SpeechSmoother(frame_ms=20, min_speech_ms=60, hangover_ms=100)
    assert run(smoother, "0110110100110") == []
    assert not smoother.in_speech


def test_speech_stops_after_hangover_at_the_end_of_the_last_voiced_frame() -> None:
    smoother = SpeechSmoother(frame_ms=20, min_speech_ms=40, hangover_ms=100)
    events = run(smoother, "0111100000")
    assert events == [SpeechStarted(20), SpeechStopped(offset_ms=100, duration_ms=80)]


def test_pauses_shorter_than_hangover_keep_one_segment() -> None:
    smoother = SpeechSmoother(frame_ms=20, min_speech_ms=40, hangover_ms=100)
    events = run(smoother, "11" + "0000" + "11" + "000" + "1" + "00000")
    assert events == [SpeechStarted(0), SpeechStopped(offset_ms=240, duration_ms=240)]


def test_stop_is_reported_exactly_hangover_after_its_offset() -> None:
    smoother = SpeechSmoother(frame_ms=10, min_speech_ms=20, hangover_ms=50)
    for i in range(5):
        smoother.update(True, i * 10)
    reported_at = None
    for t in range(50, 200, 10):
        if smoother.update(False, t):
            reported_at = t + 10  # the event is known once the frame at t has ended
            break
    assert reported_at == 50 + 50


def test_flush_closes_an_open_segment() -> None:
    smoother = SpeechSmoother(frame_ms=20, min_speech_ms=20, hangover_ms=300)
    run(smoother, "0111")
    assert smoother.flush() == [SpeechStopped(offset_ms=80, duration_ms=60)]
    assert smoother.flush() == []


def test_zero_min_speech_starts_on_the_first_voiced_frame() -> None:
    assert run(SpeechSmoother(20, 0, 0), "01") == [SpeechStarted(20)]


def voiced_signal(rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A vowel-like signal: 140 Hz harmonics, 4 Hz syllable envelope, a little noise."""
    t = np.arange(int(rate * seconds)) / rate
    harmonics = sum(
        np.sin(2 * np.pi * 140 * k * t + rng.uniform(0, 6)) / k
        for k in range(1, 20)
        if 140 * k < rate / 2
    )
    signal = harmonics * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    return signal / np.abs(signal).max() * 8000 + rng.normal(0, 300, len(t))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_detector_finds_one_utterance_between_silences(rate: int) -> None:
    rng = np.random.default_rng(1)
    silence = rng.normal(0, 20, rate)
    audio = np.concatenate([silence, voiced_signal(rate, 1.0, rng), silence])
    pcm = audio.astype("<i2").tobytes()
    detector = SpeechDetector(rate, aggressiveness=2, min_speech_ms=100, hangover_ms=300)
    frame = bytes_per_frame(rate)
    events = []
    for i in range(0, len(pcm), frame):
        events += detector.feed(pcm[i : i + frame], i // frame * 20)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert isinstance(started, SpeechStarted) and isinstance(stopped, SpeechStopped)
    assert abs(started.offset_ms - 1000) <= 100
    assert abs(stopped.offset_ms - 2000) <= 200
    assert stopped.duration_ms == stopped.offset_ms - started.offset_ms


def test_detector_splits_a_long_buffer_into_vad_frames() -> None:
    detector = SpeechDetector(8000, frame_ms=10)
    assert detector.feed(bytes(bytes_per_frame(8000, 10) * 6), 0) == []


def test_detector_rejects_bad_configuration_and_frame_sizes() -> None:
    with pytest.raises(ValueError, match="rate"):
        SpeechDetector(24000)
    with pytest.raises(ValueError, match="frame_ms"):
        SpeechDetector(8000, frame_ms=25)
    with pytest.raises(ValueError, match="aggressiveness"):
        SpeechDetector(8000, aggressiveness=4)
    with pytest.raises(ValueError, match="multiple of 320 bytes"):
        SpeechDetector(8000).feed(bytes(100), 0)
