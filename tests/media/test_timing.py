from __future__ import annotations

import pytest

from media.timing import LatencyStats, LatencySummary, Turn, TurnLatency


def test_percentiles_of_one_to_one_hundred() -> None:
    stats = LatencyStats()
    for ms in range(1, 101):
        stats.record(ms)
    assert stats.count == 100
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.summary() == LatencySummary(100, stats.p50, stats.p95, stats.p99)


def test_no_samples_reports_none() -> None:
    assert LatencyStats().summary() == LatencySummary(0, None, None, None)
    assert LatencyStats().p99 is None


def test_window_keeps_recent_samples_but_counts_all() -> None:
    stats = LatencyStats(window=3)
    for ms in (1000, 1000, 10, 20, 30):
        stats.record(ms)
    assert stats.count == 5
    assert stats.p50 == 20


def test_turn_latency_from_end_of_speech_to_first_agent_audio() -> None:
    turns = TurnLatency()
    turns.caller_stopped(1_000)
    assert turns.agent_audio(1_650) == Turn(1_000, 1_650)
    assert turns.agent_audio(1_670) is None  # later frames of the same reply
    assert turns.stats.count == 1 and turns.stats.p50 == 650


def test_caller_resuming_before_the_reply_restarts_the_turn() -> None:
    turns = TurnLatency()
    turns.caller_stopped(1_000)
    turns.caller_started(1_300)
    assert turns.agent_audio(1_400) is None  # agent talking over the caller is not a reply
    turns.caller_stopped(2_000)
    turn = turns.agent_audio(2_500)
    assert turn is not None and turn.latency_ms == 500
    assert [t.latency_ms for t in turns.turns] == [500]


def test_agent_audio_before_any_caller_speech_is_not_a_turn() -> None:
    assert TurnLatency().agent_audio(0) is None
