"""Admission of new calls: whether the node takes one, inbound or outbound. An inbound INVITE
is decided before pjsua creates anything for it (a call slot, RTP/RTCP sockets), so a refused
INVITE costs nothing; an outbound call before any INVITE is sent.

Pure logic with no I/O: the SIP engine's request gate feeds it what it sees and answers the
INVITE statelessly with the refusal it returns. Time is passed in, so tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.calls.routing import InboundDecision, destination_allowed, route_inbound
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
    """The one place that decides whether the node takes a new call, inbound or outbound.

    Inbound, in the order a real edge applies them: cheap policy that needs no state first
    (rate per source), then the node's load, then routing. Outbound: the request's trunk,
    agent and destination, then the same load checks and the trunk's own limit."""

    def __init__(self, config: Config, keep: Admission | None = None) -> None:
        """`keep`: the admission this one replaces (a reload); its per-source rate state goes
        on when the rate limits did not change."""
        self.config = config
        limits = config.limits
        rate: tuple[float, int] = (
            limits.invites_per_second_per_source,
            limits.invite_burst_per_source,
        )
        self.rate_limits = rate
        self.rate: SourceRate = (
            keep.rate if keep is not None and keep.rate_limits == rate else SourceRate(*rate)
        )

    def decide(
        self, source: str, dialled: list[str], load: NodeLoad, now: float
    ) -> tuple[InboundDecision, Refusal | None]:
        limits = self.config.limits
        retry = limits.retry_after
        if not self.rate.allow(source, now):
            return _refused(
                Refusal(503, "rate_limited", f"source {source} over its INVITE rate", retry)
            )
        refusal = self._load_refusal(load)
        if refusal is not None:
            return _refused(refusal)
        if load.unconfirmed_by_source.get(source, 0) >= limits.max_unconfirmed_per_source:
            return _refused(
                Refusal(503, "unconfirmed", f"source {source} has calls awaiting ACK", retry)
            )
        decision = route_inbound(self.config, source, dialled, load.active_by_trunk)
        if decision.accept:
            return decision, None
        label = _ROUTE_REASONS.get(decision.sip_code, "trunk_capacity")
        after = retry if decision.sip_code == 503 else None
        return decision, Refusal(decision.sip_code, label, decision.reason, after)

    def decide_outbound(self, trunk_id: str, to: str, agent: str, load: NodeLoad) -> Refusal | None:
        """None when the call may be placed; else why not, `reason` being the CallRefused
        reason the API and MQTT answer with (gateway/errors.py)."""
        trunk = self.config.trunk(trunk_id)
        if trunk is None:
            return Refusal(404, "unknown_trunk", f"trunk {trunk_id!r} is not configured")
        if self.config.agent(agent) is None:
            return Refusal(404, "unknown_agent", f"agent {agent!r} is not configured")
        if not destination_allowed(trunk, to):
            allowed = ", ".join(trunk.allowed_destinations)
            return Refusal(
                403,
                "destination_not_allowed",
                f"{to} is outside trunk {trunk_id}'s allowed_destinations ({allowed})",
            )
        refusal = self._load_refusal(load)
        if refusal is not None:
            reason = "draining" if refusal.reason == "draining" else "capacity_exceeded"
            detail = {
                "draining": "the node is draining and takes no new calls",
                "capacity": f"node at capacity ({load.capacity} calls)",
            }.get(refusal.reason, refusal.detail)
            return Refusal(refusal.code, reason, detail, refusal.retry_after)
        if load.active_by_trunk.get(trunk_id, 0) >= trunk.max_concurrent_calls:
            return Refusal(
                503,
                "capacity_exceeded",
                f"trunk {trunk_id} at max_concurrent_calls",
                self.config.limits.retry_after,
            )
        return None

    def _load_refusal(self, load: NodeLoad) -> Refusal | None:
        """Draining, the node's capacity, the worker's media sockets: the same for every call."""
        retry = self.config.limits.retry_after
        if load.draining:
            return Refusal(503, "draining", "the node is draining", retry)
        if load.active_calls >= load.capacity:
            return Refusal(503, "capacity", f"node at capacity ({load.capacity} calls)", retry)
        if not load.room_for_media:
            return Refusal(503, "sockets", "no free media sockets in this worker", retry)
        return None


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
