"""Prometheus metrics of a node: counters fed by the SIP worker's events, rendered as text.

`NodeMetrics.observe` sees every worker event (the supervisor calls it next to the ledger);
`render` turns those counters and a snapshot of the node into the text exposition format.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.calls.events import (
    AgentLinkDown,
    CallDialed,
    CallOffered,
    Completed,
    Failed,
    InvitesRefused,
    WorkerEvent,
)

# Milliseconds; media latency on a healthy loopback is a few ms, over the internet 20-300 ms.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    5,
    10,
    20,
    40,
    60,
    80,
    100,
    150,
    200,
    300,
    500,
    1000,
    2000,
    5000,
)
TRUNK_STATES = ("static", "registering", "registered", "failed", "unregistered")
# call.agent.disconnected reasons that mean the agent was never reached.
_CONNECT_FAILURES = ("connect_timeout", "connect_failed", "rejected")


@dataclass
class Histogram:
    buckets: tuple[float, ...] = LATENCY_BUCKETS_MS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[int]:
        out, running = [], 0
        for c in self.counts:
            running += c
            out.append(running)
        return out


class NodeMetrics:
    """Counters since the node started; fed one worker event at a time, never raises."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()  # (direction, result)
        self.agent_connect_failures: Counter[tuple[str, str]] = Counter()  # (agent, reason)
        self.invites_refused: Counter[str] = Counter()  # by reason (gateway/calls/admission.py)
        self.latency: dict[tuple[str, str], Histogram] = {}  # (path, stat)
        self._direction: dict[str, str] = {}

    def observe(self, event: WorkerEvent) -> None:
        if isinstance(event, InvitesRefused):
            for reason, count in event.counts.items():
                self.invites_refused[str(reason)] += int(count)
        elif isinstance(event, CallOffered | CallDialed):
            self._direction[event.call_id] = event.direction
        elif isinstance(event, Completed | Failed):
            direction = self._direction.pop(event.call_id, "unknown")
            result = "completed" if isinstance(event, Completed) else event.reason
            self.calls[(direction, result)] += 1
            latency = event.latency if isinstance(event, Completed) else None
            for name, value in (latency or {}).items():
                path, _, stat = str(name).removesuffix("_ms").rpartition("_")
                if path and isinstance(value, int | float):
                    self.latency.setdefault((path, stat), Histogram()).observe(float(value))
        elif isinstance(event, AgentLinkDown):
            kind_of = event.reason.split(":", 1)[0].split(" ", 1)[0]
            if kind_of in _CONNECT_FAILURES:
                self.agent_connect_failures[(event.agent, kind_of)] += 1


@dataclass(frozen=True)
class WorkerGauge:
    """One SIP worker, for one scrape."""

    index: int
    running: bool
    active_calls: int
    capacity: int
    restarts: int


@dataclass(frozen=True)
class NodeSnapshot:
    """What the node looks like right now, for one scrape."""

    node: str
    version: str
    active_calls: int
    capacity: int | None
    draining: bool
    worker_up: bool
    uptime: float
    outbox_backlog: int
    mqtt_connected: bool
    trunks: Mapping[str, Mapping[str, Any]]  # trunk id -> last state
    workers: tuple[WorkerGauge, ...] = ()


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}"


def _metric(name: str, kind: str, help_text: str, samples: Iterable[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def render(snap: NodeSnapshot, metrics: NodeMetrics) -> str:
    """The Prometheus text exposition (format 0.0.4)."""
    out: list[str] = []
    out += _metric(
        "sipedge_info",
        "gauge",
        "Node identity.",
        [f"sipedge_info{_labels(node=snap.node, version=snap.version)} 1"],
    )
    out += _metric(
        "sipedge_up",
        "gauge",
        "1 while a SIP worker is running.",
        [f"sipedge_up {int(snap.worker_up)}"],
    )
    out += _metric(
        "sipedge_draining",
        "gauge",
        "1 while the node drains before stopping.",
        [f"sipedge_draining {int(snap.draining)}"],
    )
    out += _metric(
        "sipedge_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        [f"sipedge_uptime_seconds {snap.uptime:.1f}"],
    )
    out += _metric(
        "sipedge_active_calls",
        "gauge",
        "Calls in progress.",
        [f"sipedge_active_calls {snap.active_calls}"],
    )
    if snap.capacity is not None:
        out += _metric(
            "sipedge_call_capacity",
            "gauge",
            "Concurrent calls the node can hold.",
            [f"sipedge_call_capacity {snap.capacity}"],
        )
    out += _worker_metrics(snap.workers)
    out += _metric(
        "sipedge_calls_total", "counter",
        "Ended calls by direction and result (completed, or the failure reason).",
        [f"sipedge_calls_total{_labels(direction=d, result=r)} {n}"
         for (d, r), n in sorted(metrics.calls.items())],
    )  # fmt: skip
    out += _metric(
        "sipedge_invites_refused_total", "counter",
        "New INVITEs refused before a call existed, by reason (rate_limited, capacity, "
        "sockets, unconfirmed, draining, source_not_allowed, number_not_routed, ...).",
        [f"sipedge_invites_refused_total{_labels(reason=r)} {n}"
         for r, n in sorted(metrics.invites_refused.items())],
    )  # fmt: skip
    registered, states, trunk_calls = [], [], []
    for trunk, state in sorted(snap.trunks.items()):
        current = str(state.get("state") or "unregistered")
        registered.append(
            f"sipedge_trunk_registered{_labels(trunk=trunk)} {int(current == 'registered')}"
        )
        states += [
            f"sipedge_trunk_registration_state{_labels(trunk=trunk, state=s)} {int(current == s)}"
            for s in TRUNK_STATES
        ]
        trunk_calls.append(
            f"sipedge_trunk_active_calls{_labels(trunk=trunk)} "
            f"{int(state.get('active_calls') or 0)}"
        )
    out += _metric("sipedge_trunk_registered", "gauge", "1 if the trunk is registered.", registered)
    out += _metric(
        "sipedge_trunk_registration_state",
        "gauge",
        "1 for the trunk's current registration state.",
        states,
    )
    out += _metric(
        "sipedge_trunk_active_calls", "gauge", "Calls in progress per trunk.", trunk_calls
    )
    out += _metric(
        "sipedge_outbox_backlog",
        "gauge",
        "Events stored but not yet published.",
        [f"sipedge_outbox_backlog {snap.outbox_backlog}"],
    )
    out += _metric(
        "sipedge_mqtt_connected",
        "gauge",
        "1 while connected to the MQTT broker.",
        [f"sipedge_mqtt_connected {int(snap.mqtt_connected)}"],
    )
    out += _metric(
        "sipedge_agent_connect_failures_total", "counter",
        "Agent connections that failed (timeout, refused, rejected).",
        [f"sipedge_agent_connect_failures_total{_labels(agent=a, reason=r)} {n}"
         for (a, r), n in sorted(metrics.agent_connect_failures.items())],
    )  # fmt: skip
    out += _metric(
        "sipedge_media_latency_milliseconds",
        "histogram",
        "Per-call media latency figures (stat p50/p95 of each path) at call end.",
        _histogram_samples("sipedge_media_latency_milliseconds", metrics.latency),
    )
    return "\n".join(out) + "\n"


def _worker_metrics(workers: Iterable[WorkerGauge]) -> list[str]:
    def samples(value: Any) -> list[str]:
        return [f"{_labels(worker=str(w.index))} {value(w)}" for w in workers]

    out: list[str] = []
    for name, kind, help_text, value in (
        ("sipedge_worker_up", "gauge", "1 while the SIP worker is running.",
         lambda w: int(w.running)),
        ("sipedge_worker_active_calls", "gauge", "Calls the SIP worker holds.",
         lambda w: w.active_calls),
        ("sipedge_worker_call_capacity", "gauge", "Calls the SIP worker can hold at once.",
         lambda w: w.capacity),
        ("sipedge_worker_restarts_total", "counter",
         "Times the node restarted the SIP worker after it died.", lambda w: w.restarts),
    ):  # fmt: skip
        out += _metric(name, kind, help_text, [name + s for s in samples(value)])
    return out


def _histogram_samples(name: str, hists: Mapping[tuple[str, str], Histogram]) -> list[str]:
    samples: list[str] = []
    for (path, stat), hist in sorted(hists.items()):
        for bound, count in zip(hist.buckets, hist.cumulative(), strict=True):
            samples.append(f"{name}_bucket{_labels(path=path, stat=stat, le=f'{bound:g}')} {count}")
        samples.append(f"{name}_bucket{_labels(path=path, stat=stat, le='+Inf')} {hist.count}")
        samples.append(f"{name}_sum{_labels(path=path, stat=stat)} {hist.total:g}")
        samples.append(f"{name}_count{_labels(path=path, stat=stat)} {hist.count}")
    return samples
