"""The front's state as the node reports it (/health, /metrics): pure parsing of what
Kamailio's RPC answers (`dispatcher.list`, `stats.get_statistics all`), no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Kamailio statistics -> (metric suffix, label value); the script's own counters are
# `script:front_*` (see the template's statistics modparams).
REFUSALS = {
    "script:front_refused_source": "source_not_allowed",
    "script:front_refused_number": "number_not_routed",
    "script:front_refused_rate": "rate_limited",
    "script:front_refused_unconfirmed": "unconfirmed",
    "script:front_refused_full": "workers_full",
    "script:front_refused_draining": "draining",
    "script:front_refused_auth": "auth_failed",
    "script:front_refused_certificate": "certificate_required",
}


@dataclass(frozen=True)
class FrontWorker:
    """One worker as the front's dispatcher sees it."""

    uri: str
    duid: str
    active: bool  # taking new calls: active (A) or trying (T); inactive (I) or disabled (D) not
    probing: bool
    calls: int  # calls the call-load algorithm counts on it

    @property
    def index(self) -> int | None:
        """The worker's slot (duid `worker-N`, or `NODE/worker-N` behind a front several
        nodes share), None for a destination sipedge did not write."""
        prefix, _, number = self.duid.rpartition("/")[2].partition("-")
        return int(number) if prefix == "worker" and number.isdigit() else None


@dataclass(frozen=True)
class FrontHealth:
    """`up` is whether the front answers its control socket; the rest is empty when not."""

    mode: str  # embedded | external
    up: bool
    workers: list[FrontWorker] = field(default_factory=list)
    stats: Mapping[str, int] = field(default_factory=dict)
    draining: bool = False
    tls_refused: Mapping[str, int] = field(default_factory=dict)  # by direction (in, out)

    @property
    def requests(self) -> int:
        return self.stats.get("core:rcv_requests", 0)

    @property
    def replies_sent(self) -> int:
        """Replies the front sent: its own (stateless) and the workers' it relayed."""
        return self.stats.get("sl:sent_replies", 0) + self.stats.get("tmx:rpl_sent", 0)

    @property
    def flood_dropped(self) -> int:
        return self.stats.get("script:front_flood_dropped", 0)

    @property
    def scanner_dropped(self) -> int:
        return self.stats.get("script:front_scanner_dropped", 0)

    @property
    def refused(self) -> dict[str, int]:
        return {reason: self.stats.get(name, 0) for name, reason in REFUSALS.items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "up": self.up,
            "draining": self.draining,
            "workers": [
                {"worker": w.index, "uri": w.uri, "active": w.active, "calls": w.calls}
                for w in self.workers
            ],
            "requests": self.requests,
            "replies_sent": self.replies_sent,
            "flood_dropped": self.flood_dropped,
            "scanner_dropped": self.scanner_dropped,
            "refused": self.refused,
            "tls_refused": {d: self.tls_refused.get(d, 0) for d in ("in", "out")},
        }


def parse_dispatcher(result: Any) -> list[FrontWorker]:
    """`dispatcher.list`: RECORDS -> SET -> TARGETS -> DEST, FLAGS like "AP" (state, probing)."""
    workers: list[FrontWorker] = []
    for record in (result or {}).get("RECORDS") or []:
        for target in (record.get("SET") or {}).get("TARGETS") or []:
            dest = target.get("DEST") or {}
            flags = str(dest.get("FLAGS") or "")
            attrs = dest.get("ATTRS") or {}
            runtime = dest.get("RUNTIME") or {}
            workers.append(
                FrontWorker(
                    uri=str(dest.get("URI") or ""),
                    duid=str(attrs.get("DUID") or ""),
                    active=flags[:1] in ("A", "T"),
                    probing="P" in flags[1:],
                    calls=int(runtime.get("DLGLOAD") or 0),
                )
            )
    return workers


def parse_htable_item(result: Any) -> Any:
    """`htable.get`: {"item": {"name": ..., "value": ...}} -> the value."""
    item = result.get("item") if isinstance(result, dict) else None
    return item.get("value") if isinstance(item, dict) else None


def parse_statistics(result: Any) -> dict[str, int]:
    """`stats.get_statistics all`: a list of "group:name = value" strings."""
    stats: dict[str, int] = {}
    for line in result or []:
        name, sep, value = str(line).partition(" = ")
        if sep and value.strip().lstrip("-").isdigit():
            stats[name.strip()] = int(value)
    return stats


def prometheus(front: FrontHealth) -> str:
    """The front's lines of /metrics (Prometheus text format 0.0.4)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[str]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

    metric("sipedge_front_up", "gauge", "1 while the SIP front answers its control socket.",
           [f"sipedge_front_up {int(front.up)}"])  # fmt: skip
    if not front.up:
        return "\n".join(lines) + "\n"
    workers = sorted(front.workers, key=lambda w: (w.index is None, w.index or 0, w.uri))
    metric("sipedge_front_worker_active", "gauge",
           "1 while the front dispatches new calls to the worker (it answers the probes).",
           [f'sipedge_front_worker_active{{worker="{_worker(w)}"}} {int(w.active)}'
            for w in workers])  # fmt: skip
    metric("sipedge_front_worker_calls", "gauge", "Calls the front counts on each worker.",
           [f'sipedge_front_worker_calls{{worker="{_worker(w)}"}} {w.calls}'
            for w in workers])  # fmt: skip
    metric("sipedge_front_requests_total", "counter", "SIP requests the front received.",
           [f"sipedge_front_requests_total {front.requests}"])  # fmt: skip
    metric("sipedge_front_replies_sent_total", "counter",
           "SIP replies the front sent (its own and the workers' it relayed).",
           [f"sipedge_front_replies_sent_total {front.replies_sent}"])  # fmt: skip
    metric("sipedge_front_flood_dropped_total", "counter",
           "Requests dropped because their source floods (pike).",
           [f"sipedge_front_flood_dropped_total {front.flood_dropped}"])  # fmt: skip
    metric("sipedge_front_invites_refused_total", "counter",
           "New INVITEs the front answered itself instead of dispatching, by reason.",
           [f'sipedge_front_invites_refused_total{{reason="{r}"}} {n}'
            for r, n in sorted(front.refused.items())])  # fmt: skip
    metric("sipedge_front_scanner_dropped_total", "counter",
           "Requests dropped unanswered because their User-Agent is a known scanner's.",
           [f"sipedge_front_scanner_dropped_total {front.scanner_dropped}"])  # fmt: skip
    metric("sipedge_front_tls_refused_total", "counter",
           "TLS handshakes the front refused (in: a peer connected; out: to a carrier).",
           [f'sipedge_front_tls_refused_total{{direction="{d}"}} {front.tls_refused.get(d, 0)}'
            for d in ("in", "out")])  # fmt: skip
    dispatched = front.stats.get("script:front_dispatched", 0)
    failovers = front.stats.get("script:front_failovers", 0)
    metric("sipedge_front_invites_dispatched_total", "counter",
           "New INVITEs the front sent to a first worker.",
           [f"sipedge_front_invites_dispatched_total {dispatched}"])  # fmt: skip
    metric("sipedge_front_failovers_total", "counter",
           "INVITEs sent on to the next worker after one was full or silent.",
           [f"sipedge_front_failovers_total {failovers}"])  # fmt: skip
    return "\n".join(lines) + "\n"


def _worker(worker: FrontWorker) -> str:
    return str(worker.index) if worker.index is not None else worker.uri
