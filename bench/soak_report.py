"""bench/soak.py's figures: what a run measured, summarised as one JSON-able dict, the checks
that must hold, and the text report."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from bench.soak_probe import Sample, growth_per_100

LEGIT = ("inbound", "dtmf", "reinvite", "outbound_mqtt", "outbound_api", "refer")
CRASH = re.compile(
    r"Assertion .*failed|^\w*(?:Error|Exception): .*|Fatal Python error: .*|Segmentation fault",
    re.M,
)


@dataclass
class Measured:
    minutes: float
    wall: float  # seconds of traffic
    results: list[tuple[str, bool, str]]  # (call kind, ok, why not) per legitimate-lane call
    abuse: dict[str, Counter[str]]  # hostile traffic: outcome counts per kind
    calls_left: int | None  # the node's active_calls once the traffic stopped and settled
    capacity: tuple[int, int]  # probe calls answered, of how many
    events: dict[str, int]  # store against MQTT
    samples: list[Sample]
    worker_pids: list[int]
    log: str  # the node's log (supervisor and worker)
    dtmf_events: int
    artifacts: str


def summary(m: Measured) -> dict[str, Any]:
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, ok, why in m.results:
        by_kind[kind]["ok" if ok else (why or "failed")] += 1
    legit = [ok for kind, ok, _ in m.results if kind in LEGIT]
    exited = re.findall(r"event=worker_exited worker=\d+ code=(-?\d+)", m.log)
    deaths = max(sum(code != "0" for code in exited), len(m.worker_pids) - 1)
    crashes = Counter(f"code={c}" for c in exited if c != "0")
    crashes.update(x.group(0)[:110] for x in CRASH.finditer(m.log))
    first = m.samples[0] if m.samples else Sample(0, 0, 0, None, 0, 0.0)
    last = m.samples[-1] if m.samples else first
    return {
        "minutes": m.minutes,
        "wall_s": round(m.wall, 1),
        "worker_deaths": deaths,
        "worker_pids": len(m.worker_pids),
        "crash_lines": dict(crashes.most_common(8)),
        "legit_calls": len(legit),
        "legit_answered": sum(legit),
        "legit_answered_pct": round(100 * sum(legit) / len(legit), 1) if legit else None,
        "calls": {k: dict(v) for k, v in sorted(by_kind.items())},
        "dtmf_events": m.dtmf_events,
        "dtmf_sent": 5 * by_kind["dtmf"]["ok"],
        "abuse": {k: dict(v) for k, v in sorted(m.abuse.items())},
        "calls_left": m.calls_left,
        "capacity_probe": {"answered": m.capacity[0], "of": m.capacity[1]},
        "calls_finished": last.finished,
        "rss_kb": {
            "supervisor": [first.supervisor_kb, last.supervisor_kb],
            "worker": [first.worker_kb, last.worker_kb],
        },
        "rss_growth_per_100_calls_kb": {
            k: None if v is None else round(v) for k, v in growth_per_100(m.samples).items()
        },
        "cpu_s": round(last.cpu - first.cpu, 2),
        "cpu_pct_of_core": round(100 * (last.cpu - first.cpu) / max(last.t - first.t, 1), 1),
        "events": m.events,
        "artifacts": m.artifacts,
    }


def failures(r: dict[str, Any]) -> list[str]:
    """The figures that must hold, named when they do not."""
    e, cap = r["events"], r["capacity_probe"]
    checks = {
        "worker deaths": r["worker_deaths"] == 0,
        "calls left": r["calls_left"] == 0,
        "capacity after the run": cap["answered"] == cap["of"],
        "events store = MQTT": e["missing_on_mqtt"] == 0 and e["not_in_store"] == 0,
    }
    return [name for name, ok in checks.items() if not ok]


def _counts(outcomes: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))


def _kb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} kB"


def print_text(r: dict[str, Any]) -> None:
    g, e, cap = r["rss_growth_per_100_calls_kb"], r["events"], r["capacity_probe"]
    print(f"sipedge soak: {r['minutes']} min asked, {r['wall_s']} s of traffic")
    print(f"worker deaths: {r['worker_deaths']} (must be 0; {r['worker_pids']} worker PIDs seen)")
    for line, n in r["crash_lines"].items():
        print(f"  {n:4d} x {line}")
    print(
        f"legit calls answered: {r['legit_answered']}/{r['legit_calls']} "
        f"({r['legit_answered_pct']}%)"
    )
    for kind, outcomes in r["calls"].items():
        print(f"  {kind:14s} {_counts(outcomes)}")
    print(
        f"  DTMF digits on MQTT {r['dtmf_events']} "
        f"(5 per successful uac_dtmf call: {r['dtmf_sent']})"
    )
    print("hostile traffic:")
    for kind, outcomes in r["abuse"].items():
        print(f"  {kind:14s} {_counts(outcomes)}")
    print(f"calls left counted after the run: {r['calls_left']} (must be 0)")
    print(f"capacity probe after the run: {cap['answered']}/{cap['of']} concurrent calls answered")
    print(
        f"RSS growth per 100 calls ({r['calls_finished']} calls finished): worker + supervisor "
        f"{_kb(g['total_kb'])} (worker {_kb(g['worker_kb'])}, "
        f"supervisor {_kb(g['supervisor_kb'])})"
    )
    if g["worker_kb"] is None:
        print("  worker: n/a, no worker PID lived through 20 calls past its own first 20")
    print(
        f"  RSS first/last sample: worker {r['rss_kb']['worker']} kB, "
        f"supervisor {r['rss_kb']['supervisor']} kB"
    )
    print(f"CPU of the node's processes: {r['cpu_s']} s ({r['cpu_pct_of_core']}% of a core)")
    print(
        f"events: store {e['store']}, MQTT {e['mqtt']} (missing on MQTT "
        f"{e['missing_on_mqtt']}, not in store {e['not_in_store']}, "
        f"duplicates {e['duplicates_on_mqtt']})"
    )
    failed = failures(r)
    print("FAILED: " + ", ".join(failed) if failed else "all checks hold")
    print(f"artifacts: {r['artifacts']}")
