"""Playout: pacing, marks and clear, as Twilio Media Streams defines them for two-way audio."""

from __future__ import annotations

import pytest

from media.errors import MediaError, PlayoutOverflow
from media.playout import TRIM_MAX_MS, TRIM_WINDOW, Playout

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


# -- a standing backlog taken back --------------------------------------------------------------

VOICE, QUIET = 0x40, 0  # bytes of a voiced frame (samples 0x4040) and of digital silence


def real_time(playout: Playout, ticks: int, frame: bytes) -> list[bytes]:
    """An agent in real time: one frame written per tick, one frame played per tick."""
    played = []
    for _ in range(ticks):
        playout.write(frame)
        played.append(playout.next_frame().audio)
    return played


def test_a_real_time_agents_standing_backlog_loses_one_silent_frame_after_a_second() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1, QUIET))  # a late tick: one frame more than the agent's pace
    real_time(playout, TRIM_WINDOW - 1, audio(1, QUIET))
    assert playout.buffered_bytes == FRAME and playout.trimmed == 0  # a frame behind, 1 s
    real_time(playout, 2, audio(1, QUIET))
    assert playout.trimmed == 1
    assert playout.buffered_bytes == 0  # each frame now plays on the tick that brought it
    real_time(playout, 3 * TRIM_WINDOW, audio(1, QUIET))
    assert playout.trimmed == 1  # no backlog stands: nothing more goes


def test_voiced_audio_is_never_dropped_and_the_backlog_goes_at_the_next_silence() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1, VOICE))
    played = real_time(playout, 3 * TRIM_WINDOW, audio(1, VOICE))
    assert playout.trimmed == 0 and played == [audio(1, VOICE)] * (3 * TRIM_WINDOW)
    played = real_time(playout, 2, audio(1, QUIET))
    assert playout.trimmed == 1 and playout.buffered_bytes == 0
    assert played == [audio(1, VOICE), audio(1, QUIET)]  # the voiced head played, then one


def test_an_agents_lead_beyond_trim_max_is_content_and_plays_whole() -> None:
    playout = Playout(rate=8000)
    lead = TRIM_MAX_MS // 20 + 1  # frames ahead of real time, all silence
    playout.write(audio(lead, QUIET))
    real_time(playout, 3 * TRIM_WINDOW, audio(1, QUIET))
    assert playout.trimmed == 0 and playout.buffered_ms == lead * 20


def test_a_mark_in_a_dropped_frame_is_reported_with_the_frame_played_instead() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1, QUIET))
    real_time(playout, TRIM_WINDOW - 1, audio(1, QUIET))
    assert playout.buffered_bytes == FRAME and playout.trimmed == 0
    playout.mark("m1")  # the end of the frame queued behind: the frame dropped next
    playout.write(audio(1, QUIET))
    frame = playout.next_frame()
    assert playout.trimmed == 1 and frame.marks == ["m1"]
    assert playout.next_frame().marks == []


def test_clear_forgets_a_backlog_being_watched() -> None:
    playout = Playout(rate=8000)
    playout.write(audio(1, QUIET))
    real_time(playout, TRIM_WINDOW - 5, audio(1, QUIET))
    playout.clear()
    playout.write(audio(1, QUIET))
    real_time(playout, 10, audio(1, QUIET))
    assert playout.trimmed == 0  # the window started again at the clear
