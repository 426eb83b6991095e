"""The filler a caller hears while the agent reconnects: comfort noise or a looped WAV."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from media.filler import Filler


def test_comfort_noise_is_quiet_not_silent_and_frames_are_whole() -> None:
    filler = Filler("comfort_noise", 8000)
    frames = [filler.next_frame() for _ in range(120)]  # 2.4 s: past the 1 s loop
    assert {len(f) for f in frames} == {320}
    rms = [float(np.sqrt(np.mean(np.frombuffer(f, "<i2").astype(float) ** 2))) for f in frames]
    assert all(10 < r < 200 for r in rms)


def test_a_wav_loops_at_the_session_rate(tmp_path: Path) -> None:
    path = tmp_path / "hold.wav"
    tone = (3000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype("<i2")  # 1 s
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(tone.tobytes())
    filler = Filler(str(path), 16000)
    frames = [filler.next_frame() for _ in range(100)]  # 2 s at 16 kHz
    assert {len(f) for f in frames} == {640}
    assert frames[0] == frames[50]  # looped after its 1 s


def test_a_stereo_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(3200))
    with pytest.raises(ValueError, match="mono 16-bit"):
        Filler(str(path), 8000)
