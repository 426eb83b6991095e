from __future__ import annotations

import pytest

from media.agents.echo import EchoAgent
from media.frames import bytes_per_frame


def frame(value: int, rate: int = 8000) -> bytes:
    return bytes([value]) * bytes_per_frame(rate)


def test_echo_plays_silence_until_the_delay_then_the_caller() -> None:
    echo = EchoAgent(delay_ms=60, rate=8000)
    out = [echo.push(frame(i)) for i in range(1, 7)]
    assert out[:3] == [frame(0)] * 3
    assert out[3:] == [frame(1), frame(2), frame(3)]


def test_delay_that_is_not_a_whole_number_of_frames_wraps_the_ring() -> None:
    echo = EchoAgent(delay_ms=30, rate=8000)  # 1.5 frames
    stream = b"".join(frame(i) for i in range(1, 9))
    out = b"".join(echo.push(frame(i)) for i in range(1, 9))
    delay = 480
    assert out == bytes(delay) + stream[: len(stream) - delay]


def test_zero_delay_returns_the_frame_itself() -> None:
    assert EchoAgent(delay_ms=0, rate=16000).push(frame(7, 16000)) == frame(7, 16000)


def test_delay_shorter_than_a_frame_still_delays_exactly() -> None:
    echo = EchoAgent(delay_ms=5, rate=8000)  # 80 bytes
    stream = b"".join(frame(i) for i in range(1, 4))
    out = b"".join(echo.push(frame(i)) for i in range(1, 4))
    assert out == bytes(80) + stream[:-80]


def test_silence_attribute_is_one_frame_at_the_rate() -> None:
    assert EchoAgent(delay_ms=100, rate=16000).silence == bytes(640)


def test_negative_delay_is_rejected() -> None:
    with pytest.raises(ValueError):
        EchoAgent(delay_ms=-1)
