#!/usr/bin/env python3
"""How long the analytics queries take on a big call log.

Generates `--rows` call records (default 1,000,000) over `--days` days in a temporary SQLite
file made by the real Store (its schema and indexes), then times each query of
gateway/store/analytics.py as GET /v1/analytics/calls[/hourly|/daily] runs it, `--repeat`
times, and prints the median and the worst.

    python bench/analytics.py                  # 1 M rows, 5 runs per query
    python bench/analytics.py --rows 200000 --repeat 3 --json

Run from the repository root. Generating 1 M rows takes about half a minute.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gateway.store import analytics  # noqa: E402
from gateway.store.schema import QUARTER_SECONDS  # noqa: E402
from gateway.store.sqlite import CallFilter, Store  # noqa: E402

TRUNKS = ("carrier-a", "carrier-b", "static")
AGENTS = ("support", "sales", "echo", "survey", "billing")
CAMPAIGNS = tuple(f"cmp_{i:024x}" for i in range(20))
END = datetime(2026, 6, 1, tzinfo=UTC)


def generate(store: Store, rows: int, days: int, seed: int = 7) -> None:
    """`rows` calls spread over `days` days before END: 70 % completed (answered, a lognormal
    duration, agent latency figures), 25 % failed, the rest still up; 30 % from campaigns.
    Inserted in bulk, so the columns the store derives on write are computed here too."""
    rng = random.Random(seed)
    span = days * 86400
    start = END - timedelta(days=days)

    def row(i: int) -> tuple[Any, ...]:
        created = start + timedelta(seconds=rng.random() * span)
        roll = rng.random()
        campaign = rng.choice(CAMPAIGNS) if rng.random() < 0.3 else None
        variables = json.dumps({"campaign_id": campaign} if campaign else {})
        answered = ended = duration = latency = delay = p50 = p95 = None
        status = "answered"
        if roll < 0.70:
            status = "completed"
            answered = created + timedelta(seconds=rng.uniform(0.5, 20))
            duration = round(rng.lognormvariate(4.0, 1.0), 3)
            ended = answered + timedelta(seconds=duration)
            delay = round((answered - created).total_seconds(), 3)
            p50, p95 = round(rng.uniform(300, 900), 2), round(rng.uniform(900, 2000), 2)
            latency = json.dumps(
                {
                    "response_p50_ms": p50,
                    "response_p95_ms": p95,
                    "caller_to_agent_p50_ms": round(rng.uniform(0.2, 2), 2),
                    "caller_to_agent_p95_ms": round(rng.uniform(1, 5), 2),
                }
            )
        elif roll < 0.95:
            status, ended, duration = "failed", created + timedelta(seconds=30), 0.0

        def z(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z")  # fmt: skip

        return (f"call_{i:024x}", rng.choice(("inbound", "outbound")), rng.choice(TRUNKS),
                "+15550000000", "+15551230000", rng.choice(AGENTS), variables, z(created),
                z(answered), z(ended), duration, status, campaign, latency,
                int(created.timestamp()) // QUARTER_SECONDS, delay, p50, p95)  # fmt: skip

    db = sqlite3.connect(store.path, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO calls (id, direction, trunk, from_number, to_number, agent, variables, "
            "created_at, answered_at, ended_at, duration, status, campaign_id, latency, "
            "created_q, answer_delay, response_p50_ms, response_p95_ms) "
            f"VALUES ({','.join('?' * 18)})",
            (row(i) for i in range(rows)),
        )
        db.execute("COMMIT")
        db.execute("ANALYZE")
    finally:
        db.close()


def queries(store: Store, days: int) -> dict[str, Callable[[], Any]]:
    everything = CallFilter()
    month = CallFilter(created_after=END - timedelta(days=30), created_before=END)
    week = CallFilter(created_after=END - timedelta(days=7), created_before=END)
    trunk = CallFilter(trunk="carrier-a", created_after=END - timedelta(days=30))
    campaign = CallFilter(campaign_id=CAMPAIGNS[3])
    utc, ny, india = ZoneInfo("UTC"), ZoneInfo("America/New_York"), ZoneInfo("Asia/Kolkata")
    return {
        f"summary all ({days} days)": lambda: analytics.summary(store, everything),
        "summary last 30 days": lambda: analytics.summary(store, month),
        "summary 30 days, one trunk": lambda: analytics.summary(store, trunk),
        "summary one campaign": lambda: analytics.summary(store, campaign),
        "hourly last 7 days, UTC": lambda: analytics.buckets(store, week, "hour", utc),
        "hourly last 30 days, Asia/Kolkata": lambda: analytics.buckets(
            store, month, "hour", india
        ),  # fmt: skip
        f"daily all ({days} days), America/New_York": lambda: analytics.buckets(
            store, everything, "day", ny
        ),  # fmt: skip
        # a filter the quarter-hour rollup does not keep: every call of the trunk is read
        f"daily all ({days} days), one trunk, New York": lambda: analytics.buckets(
            store, CallFilter(trunk="carrier-a"), "day", ny
        ),  # fmt: skip
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipedge-analytics-") as tmp:
        store = Store(str(Path(tmp) / "calls.db"))
        began = time.perf_counter()
        generate(store, args.rows, args.days)
        generated = time.perf_counter() - began
        results: dict[str, dict[str, float]] = {}
        for name, query in queries(store, args.days).items():
            query()  # the first run warms the page cache, as a running node's would be
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                query()
                times.append((time.perf_counter() - t0) * 1000)
            results[name] = {"median_ms": round(statistics.median(times), 1),
                             "max_ms": round(max(times), 1)}  # fmt: skip
        size = (Path(tmp) / "calls.db").stat().st_size
        store.close()
    if args.json:
        print(json.dumps({"rows": args.rows, "days": args.days, "repeat": args.repeat,
                          "generate_s": round(generated, 1), "db_mb": round(size / 1e6, 1),
                          "queries": results}, indent=2))  # fmt: skip
        return 0
    print(f"{args.rows:,} calls over {args.days} days, generated in {generated:.1f} s, "
          f"{size / 1e6:.0f} MB; {args.repeat} runs per query (ms)")  # fmt: skip
    width = max(len(n) for n in results)
    for name, figures in results.items():
        median, worst = figures["median_ms"], figures["max_ms"]
        print(f"  {name:<{width}}  median {median:7.1f}  max {worst:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
