"""Latency bookkeeping: percentiles of recent samples, and per-turn agent response latency.

A turn's response latency runs from the caller's end of speech (the VAD's SpeechStopped
offset, not the moment the hangover expired) to the first agent audio played after it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW = 10_000


@dataclass(frozen=True, slots=True)
class LatencySummary:
    count: int
    p50: float | None
    p95: float | None
    p99: float | None


class LatencyStats:
    """Percentiles over the most recent `window` samples (milliseconds); count is all-time."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self.count = 0

    def record(self, ms: float) -> None:
        self._samples.append(float(ms))
        self.count += 1

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100, linear interpolation), or None with no samples."""
        if not self._samples:
            return None
        return float(np.percentile(np.fromiter(self._samples, dtype=np.float64), q))

    @property
    def p50(self) -> float | None:
        return self.percentile(50)

    @property
    def p95(self) -> float | None:
        return self.percentile(95)

    @property
    def p99(self) -> float | None:
        return self.percentile(99)

    def summary(self) -> LatencySummary:
        if not self._samples:
            return LatencySummary(self.count, None, None, None)
        p50, p95, p99 = np.percentile(np.fromiter(self._samples, dtype=np.float64), [50, 95, 99])
        return LatencySummary(self.count, float(p50), float(p95), float(p99))


@dataclass(frozen=True, slots=True)
class Turn:
    caller_stopped_ms: int
    agent_started_ms: int

    @property
    def latency_ms(self) -> int:
        return self.agent_started_ms - self.caller_stopped_ms


class TurnLatency:
    """Pairs each caller end-of-speech with the agent's first audio after it."""

    def __init__(self, stats: LatencyStats | None = None) -> None:
        self.stats = stats if stats is not None else LatencyStats()
        self.turns: list[Turn] = []
        self._waiting_since: int | None = None

    def caller_started(self, timestamp_ms: int) -> None:
        """The caller spoke again before the agent answered: the turn is not over yet."""
        self._waiting_since = None

    def caller_stopped(self, timestamp_ms: int) -> None:
        self._waiting_since = timestamp_ms

    def agent_audio(self, timestamp_ms: int) -> Turn | None:
        """Agent audio played at `timestamp_ms`; returns the turn it completes, if any."""
        if self._waiting_since is None:
            return None
        turn = Turn(self._waiting_since, timestamp_ms)
        self._waiting_since = None
        self.turns.append(turn)
        self.stats.record(turn.latency_ms)
        return turn
