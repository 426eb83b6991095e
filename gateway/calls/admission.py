"""Admission of new inbound INVITEs: whether the node takes a call, decided before pjsua
creates anything for it (a call slot, RTP/RTCP sockets), so a refused INVITE costs nothing.

Pure logic with no I/O: the SIP engine's request gate feeds it what it sees and answers the
INVITE statelessly with the refusal it returns. Time is passed in, so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.calls.routing import InboundDecision, route_inbound
from gateway.config import Config


@dataclass(frozen=True)
class Refusal:
    """A new INVITE the node will not take: the SIP answer and why (`reason` is a metric label)."""

    code: int
    reason: str  # draining | capacity | sockets | rate_limited | unconfirmed | ... (see below)
    detail: str
    retry_after: int | None = None


# Routing's human reasons -> the metric label of the refusal.
_ROUTE_REASONS = {
    403: "source_not_allowed",
    404: "number_not_routed",
}


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    at: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SourceRate:
    """New INVITEs per second per source IP, as token buckets; idle sources are forgotten."""

    def __init__(self, rate: float, burst: int, max_sources: int = 10000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[str, TokenBucket] = {}

    def allow(self, source: str, now: float) -> bool:
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._forget_full(now)
            bucket = self._buckets[source] = TokenBucket(self.rate, self.burst, self.burst, now)
        return bucket.take(now)

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no state a new bucket would not."""
        for source, bucket in list(self._buckets.items()):
            if bucket.tokens + (now - bucket.at) * bucket.rate >= bucket.burst:
                del self._buckets[source]
        if len(self._buckets) >= self.max_sources:  # a flood from very many sources
            self._buckets.clear()

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class SocketBudget:
    """Whether pjlib's media ioqueue can take another call's sockets, so a call is refused
    (503) before it could exhaust it: the PyPI wheel asserts on an empty free list and aborts
    the worker. `free` is the ioqueue's free-list length (gateway/sip/ioqueue.py); keys of
    ended calls rejoin that list only some time after their sockets close, so fast call churn
    drains it even with few calls up."""

    per_call: int = 2  # RTP + RTCP
    reserve: int = 2  # slack for sockets a call in progress may still open (a re-INVITE)

    def room_for_call(self, free: int) -> bool:
        return free - self.reserve >= self.per_call


@dataclass
class NodeLoad:
    """What the engine knows when an INVITE arrives."""

    active_calls: int
    capacity: int
    active_by_trunk: dict[str, int] = field(default_factory=dict)
    unconfirmed_by_source: dict[str, int] = field(default_factory=dict)
    draining: bool = False
    room_for_media: bool = True


class Admission:
    """One decision per new INVITE, in the order a real edge applies them: cheap policy that
    needs no state first (rate per source), then the node's state, then routing."""

    def __init__(self, config: Config) -> None:
        self.config = config
        limits = config.limits
        self.rate = SourceRate(limits.invites_per_second_per_source, limits.invite_burst_per_source)

    def decide(
        self, source: str, dialled: list[str], load: NodeLoad, now: float
    ) -> tuple[InboundDecision, Refusal | None]:
        limits = self.config.limits
        retry = limits.retry_after
        if not self.rate.allow(source, now):
            return _refused(
                Refusal(503, "rate_limited", f"source {source} over its INVITE rate", retry)
            )
        if load.draining:
            return _refused(Refusal(503, "draining", "the node is draining", retry))
        if load.active_calls >= load.capacity:
            return _refused(
                Refusal(503, "capacity", f"node at capacity ({load.capacity} calls)", retry)
            )
        if not load.room_for_media:
            return _refused(Refusal(503, "sockets", "no free media sockets in this worker", retry))
        if load.unconfirmed_by_source.get(source, 0) >= limits.max_unconfirmed_per_source:
            return _refused(
                Refusal(503, "unconfirmed", f"source {source} has calls awaiting ACK", retry)
            )
        decision = route_inbound(
            self.config, source, dialled, load.active_calls, load.capacity,
            load.active_by_trunk, load.draining,
        )  # fmt: skip
        if decision.accept:
            return decision, None
        label = _ROUTE_REASONS.get(decision.sip_code, "trunk_capacity")
        after = retry if decision.sip_code == 503 else None
        return decision, Refusal(decision.sip_code, label, decision.reason, after)


def _refused(refusal: Refusal) -> tuple[InboundDecision, Refusal]:
    return InboundDecision(False, refusal.code, refusal.detail), refusal


class RefusalLog:
    """One log line per (source, reason) per interval, with how many were refused since."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def note(self, source: str, reason: str, now: float) -> int | None:
        """The number refused since the last line if a line is due now, else None."""
        key = (source, reason)
        last = self._last.get(key)
        if last is None or now - last[0] >= self.interval_s:
            count = 1 if last is None else last[1] + 1
            self._last[key] = (now, 0)
            if len(self._last) > 10000:
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval_s}
            return count
        self._last[key] = (last[0], last[1] + 1)
        return None
