"""Stereo WAV recordings, read back with the stdlib wave module."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from media.errors import MediaError
from media.recorder import RecorderError, StereoWavRecorder


def pcm(value: int, samples: int = 160) -> bytes:
    return np.full(samples, value, dtype="<i2").tobytes()


def read_channels(path: Path) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(str(path), "rb") as reader:
        frames = np.frombuffer(reader.readframes(reader.getnframes()), dtype="<i2")
        return reader.getparams(), frames.reshape(-1, reader.getnchannels())


def test_caller_left_agent_right_and_header_sizes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    recorder = StereoWavRecorder(path, rate=8000)
    for _ in range(50):
        recorder.write_frame(pcm(100), pcm(-200))
    recording = recorder.close()
    assert recording.path == path
    assert recording.duration_s == pytest.approx(1.0)
    assert recording.size_bytes == path.stat().st_size == 44 + 8000 * 4
    params, frames = read_channels(path)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 8000)
    assert frames.shape == (8000, 2)
    assert set(frames[:, 0]) == {100} and set(frames[:, 1]) == {-200}


def test_missing_side_is_silence_so_channels_stay_aligned(tmp_path: Path) -> None:
    with StereoWavRecorder(tmp_path / "a.wav", rate=16000) as recorder:
        recorder.write_frame(pcm(1, 320), None)
        recorder.write_frame(None, pcm(2, 320))
        recorder.write_frame(None, None)
        recorder.write_frame(pcm(3, 100), pcm(4, 320))  # short caller frame padded
    _, frames = read_channels(tmp_path / "a.wav")
    assert frames.shape == (4 * 320, 2)
    assert frames[:320].tolist() == [[1, 0]] * 320
    assert frames[320:640].tolist() == [[0, 2]] * 320
    assert not frames[640:960].any()
    assert frames[960:1060].tolist() == [[3, 4]] * 100
    assert frames[1060:].tolist() == [[0, 4]] * 220


def test_header_is_updated_periodically_so_an_unclosed_file_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "crash.wav"
    recorder = StereoWavRecorder(path, rate=8000, header_every_s=0.1)
    for _ in range(12):  # 240 ms
        recorder.write_frame(pcm(5), pcm(6))
    # No close(): simulate a crash by reading what is on disk now.
    _, frames = read_channels(path)
    assert len(frames) == 8000 * 200 // 1000  # header last patched at 200 ms
    assert frames[-1].tolist() == [5, 6]
    recorder.close()


def test_close_is_idempotent_and_writing_after_close_fails(tmp_path: Path) -> None:
    recorder = StereoWavRecorder(tmp_path / "b.wav", rate=8000)
    recorder.write_frame(pcm(1), pcm(1))
    first = recorder.close()
    assert recorder.close() == first
    with pytest.raises(RecorderError, match="closed") as raised:
        recorder.write_frame(pcm(1), None)
    assert isinstance(raised.value, MediaError)


def test_empty_recording_is_a_valid_zero_length_wav(tmp_path: Path) -> None:
    recording = StereoWavRecorder(tmp_path / "empty.wav", rate=8000).close()
    assert recording.duration_s == 0 and recording.size_bytes == 44
    params, frames = read_channels(recording.path)
    assert params.nframes == 0 and len(frames) == 0
