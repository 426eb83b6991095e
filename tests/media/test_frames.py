from __future__ import annotations

import pytest

from media.frames import (
    FRAME_MS,
    bytes_per_frame,
    bytes_to_ms,
    ms_to_bytes,
    samples_per_frame,
    silence,
)


def test_twenty_ms_frames_at_telephony_and_wideband_rates() -> None:
    assert FRAME_MS == 20
    assert samples_per_frame(8000) == 160
    assert bytes_per_frame(16000) == 640
    assert bytes_per_frame(48000, frame_ms=10) == 960


def test_silence_is_cached_zero_bytes_of_one_frame() -> None:
    assert silence(8000) == bytes(320)
    assert silence(8000) is silence(8000)


def test_conversions_between_ms_and_bytes() -> None:
    assert ms_to_bytes(1000, 8000) == 16000
    assert bytes_to_ms(640, 16000) == 20.0


def test_rate_that_does_not_divide_into_frames_is_rejected() -> None:
    with pytest.raises(ValueError):
        samples_per_frame(11025)
