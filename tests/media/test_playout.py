"""Playout: pacing, marks and clear, as Twilio Media Streams defines them for two-way audio."""

from __future__ import annotations

import pytest

from media.errors import MediaError, PlayoutOverflow
from media.playout import Playout

FRAME = 320  # 20 ms at 8 kHz


def audio(frames: float, value: int = 1) -> bytes:
    return bytes([value]) * int(FRAME * frames)


def test_idle_playout_gives_silence_frames_and_no_marks() -> None:
    playout = Playout(rate=8000)
    assert playout.next_frame() == (bytes(FRAME), [])
    assert not playout.is_playing
    assert playout.underruns == 0


def test_audio_written_faster_than_real_time_plays_one_frame_per_tick() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1, 1) + audio(1, 2))
    playout.write(audio(1, 3))
    assert playout.buffered_ms == 60
    assert [playout.next_frame().audio for _ in range(4)] == [
        audio(1, 1),
        audio(1, 2),
        audio(1, 3),
        bytes(FRAME),
    ]


def test_frames_are_assembled_across_odd_sized_chunks() -> None:
    playout = Playout(rate=16000)
    stream = bytes(range(256)) * 10
    for i in range(0, len(stream), 98):
        playout.write(stream[i : i + 98])
    played = b"".join(playout.next_frame().audio for _ in range(4))
    assert played[: len(stream)] == stream
    assert played[len(stream) :] == bytes(len(played) - len(stream))


def test_underrun_pads_the_partial_frame_with_silence() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(0.5, 9))
    assert playout.next_frame().audio == audio(0.5, 9) + bytes(FRAME // 2)
    assert playout.underruns == 1


def test_mark_is_reported_with_the_frame_that_finishes_the_audio_before_it() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1.5))
    playout.mark("greeting-done")
    playout.write(audio(1))
    assert playout.next_frame().marks == []
    assert playout.next_frame().marks == ["greeting-done"]
    assert playout.next_frame().marks == []


def test_mark_on_an_empty_buffer_is_reported_at_the_next_tick() -> None:
    playout = Playout(rate=8000)
    playout.mark("now")
    assert playout.next_frame() == (bytes(FRAME), ["now"])


def test_marks_at_the_same_position_are_reported_in_order() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1))
    playout.mark("a")
    playout.mark("b")
    assert playout.next_frame().marks == ["a", "b"]


def test_clear_empties_playout_and_returns_pending_marks() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1))
    playout.mark("first")
    playout.write(audio(3))
    playout.mark("second")
    assert playout.next_frame().marks == ["first"]
    assert playout.clear() == ["second"]
    assert not playout.is_playing
    assert playout.buffered_ms == 0
    assert playout.next_frame() == (bytes(FRAME), [])


def test_clear_with_no_marks_acks_nothing_and_later_marks_still_work() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(5))
    assert playout.clear() == []
    playout.write(audio(1, 4))
    playout.mark("after-clear")
    assert playout.next_frame() == (audio(1, 4), ["after-clear"])


def test_write_beyond_max_buffer_is_rejected_whole() -> None:
    playout = Playout(rate=8000, max_buffer_ms=100)
    playout.write(audio(4))
    with pytest.raises(PlayoutOverflow, match="max_buffer_ms=100") as raised:
        playout.write(audio(2))
    assert isinstance(raised.value, MediaError)
    assert playout.buffered_ms == 80
    playout.write(audio(1))  # what fits is still accepted
    assert playout.buffered_ms == 100


def test_default_buffer_holds_two_minutes() -> None:
    playout = Playout(rate=16000)
    playout.write(bytes(16000 * 2 * 120))
    with pytest.raises(PlayoutOverflow):
        playout.write(bytes(2))


def test_odd_length_audio_is_rejected() -> None:
    with pytest.raises(ValueError, match="even length"):
        Playout().write(b"\x01")
