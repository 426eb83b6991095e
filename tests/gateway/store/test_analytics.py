"""Call analytics over a real SQLite store, the calls written as the ledger writes them
(create, then updates), and the v1 -> v2 migration of an existing file."""

from __future__ import annotations

import math
import random
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.store import analytics, schema
from gateway.store.schema import SCHEMA_VERSION
from gateway.store.sqlite import CallFilter, Store, StoredCall

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "sipedge.db"))


def call(
    store: Store, n: int, at: datetime, *, outcome: str = "completed", duration: float = 10.0,
    answer_after: float = 2.0, latency: dict[str, float] | None = None, **fields: Any,
) -> str:  # fmt: skip
    """A call created at `at`, then answered and completed (or failed, or left answered)."""
    call_id = f"call_{n:024x}"
    store.create_call(StoredCall(id=call_id, direction=fields.pop("direction", "inbound"),
                                 status="ringing", created_at=at, **fields))  # fmt: skip
    if outcome == "failed":
        store.update_call(call_id, {"status": "failed", "duration": 0.0, "ended_at": at})
        return call_id
    store.update_call(call_id, {"status": "answered",
                                "answered_at": at + timedelta(seconds=answer_after)})  # fmt: skip
    if outcome == "completed":
        store.update_call(call_id, {"status": "completed", "duration": duration,
                                    "ended_at": at + timedelta(seconds=answer_after + duration),
                                    "latency": latency})  # fmt: skip
    return call_id


def test_totals_breakdowns_and_rates(store: Store) -> None:
    call(
        store,
        1,
        T0,
        trunk="a",
        agent="x",
        duration=10,
        latency={"response_p50_ms": 400, "response_p95_ms": 900},
    )
    call(store, 2, T0, trunk="a", agent="y", duration=30, answer_after=4,
         latency={"response_p50_ms": 600, "response_p95_ms": 1100}, direction="outbound",
         variables={"campaign_id": "cmp_1"})  # fmt: skip
    call(store, 3, T0, outcome="failed", trunk="b", agent="x", direction="outbound",
         variables={"campaign_id": "cmp_1"})  # fmt: skip
    call(store, 4, T0, outcome="answered", trunk="b", agent="x", answer_after=6)
    got = analytics.summary(store, CallFilter())
    assert (got["total"], got["answered"], got["failed"], got["answer_rate"]) == (4, 3, 1, 0.75)
    assert got["by_status"] == {"answered": 1, "completed": 2, "failed": 1}
    assert got["by_direction"] == {"inbound": 2, "outbound": 2}
    assert got["by_trunk"] == [
        {"id": "a", "total": 2, "answered": 2, "failed": 0, "answer_rate": 1.0,
         "average_duration": 20.0},
        {"id": "b", "total": 2, "answered": 1, "failed": 1, "answer_rate": 0.5,
         "average_duration": None},
    ]  # fmt: skip
    assert [(g["id"], g["total"]) for g in got["by_agent"]] == [("x", 3), ("y", 1)]
    assert [(g["id"], g["total"], g["answered"]) for g in got["by_campaign"]] == [("cmp_1", 2, 1)]
    assert got["duration"] == {"average": 20.0, "p50": 10.0, "p90": 30.0, "p99": 30.0}
    assert got["average_time_to_answer"] == 4.0  # (2 + 4 + 6) / 3
    assert got["agent_latency"] == {"calls": 2, "average_response_p50_ms": 500.0,
                                    "average_response_p95_ms": 1000.0}  # fmt: skip


def test_filters_apply_to_every_figure(store: Store) -> None:
    call(store, 1, T0, trunk="a", agent="x")
    call(store, 2, T0 + timedelta(hours=1), trunk="a", agent="y", direction="outbound",
         variables={"campaign_id": "cmp_1"})  # fmt: skip
    call(store, 3, T0 + timedelta(hours=2), trunk="b", agent="x", outcome="failed")

    def total(**f: Any) -> int:
        figures = analytics.summary(store, CallFilter(**f))
        return int(figures["total"])

    assert total(trunk="a") == 2 and total(agent="x") == 2 and total(direction="outbound") == 1
    assert total(campaign_id="cmp_1") == 1 and total(campaign_id="cmp_2") == 0
    assert total(created_after=T0 + timedelta(hours=1)) == 2
    assert total(created_before=T0 + timedelta(hours=1)) == 1
    empty = analytics.summary(store, CallFilter(trunk="none"))
    assert empty["answer_rate"] is None and empty["duration"]["p50"] is None
    assert empty["by_trunk"] == [] and empty["agent_latency"]["calls"] == 0


def test_percentiles_are_exact_nearest_rank(store: Store) -> None:
    durations = [float(d) for d in (7, 3, 100, 1, 50, 20, 20, 9, 64, 2, 33)]
    for n, d in enumerate(durations):
        call(store, n, T0 + timedelta(seconds=n), duration=d)
    call(store, 99, T0, outcome="failed")  # not a duration
    ordered = sorted(durations)
    got = analytics.summary(store, CallFilter())["duration"]
    for p in (50, 90, 99):
        assert got[f"p{p}"] == ordered[math.ceil(p / 100 * len(ordered)) - 1], p
    assert got["average"] == round(sum(durations) / len(durations), 3)


def test_hourly_buckets_in_a_half_hour_zone(store: Store) -> None:
    # Asia/Kolkata is UTC+5:30: 12:10Z and 12:40Z are 17:40 and 18:10 local, two hours.
    call(store, 1, T0 + timedelta(minutes=10), duration=4)
    call(store, 2, T0 + timedelta(minutes=40), duration=8)
    call(store, 3, T0 + timedelta(minutes=50), outcome="failed")
    kolkata = analytics.buckets(store, CallFilter(), "hour", ZoneInfo("Asia/Kolkata"))
    assert kolkata == [
        {"start": "2026-03-01T17:00:00+05:30", "total": 1, "answered": 1, "failed": 0,
         "average_duration": 4.0},
        {"start": "2026-03-01T18:00:00+05:30", "total": 2, "answered": 1, "failed": 1,
         "average_duration": 8.0},
    ]  # fmt: skip
    utc = analytics.buckets(store, CallFilter(), "hour", ZoneInfo("UTC"))
    assert [(b["start"], b["total"]) for b in utc] == [("2026-03-01T12:00:00+00:00", 3)]


def test_daily_buckets_follow_local_midnight_across_dst(store: Store) -> None:
    # New York leaves DST on 2026-11-01: that day has 25 hours, 04:00Z to 05:00Z next day.
    ny = ZoneInfo("America/New_York")
    at = [
        datetime(2026, 11, 1, 4, 5, tzinfo=UTC),
        datetime(2026, 11, 2, 4, 55, tzinfo=UTC),
        datetime(2026, 11, 2, 5, 5, tzinfo=UTC),
        datetime(2026, 10, 31, 3, 59, tzinfo=UTC),
    ]
    for n, t in enumerate(at):
        call(store, n, t)
    days = analytics.buckets(store, CallFilter(), "day", ny)
    assert [(b["start"], b["total"]) for b in days] == [
        ("2026-10-30T00:00:00-04:00", 1), ("2026-11-01T00:00:00-04:00", 2),
        ("2026-11-02T00:00:00-05:00", 1),
    ]  # fmt: skip
    fold = [datetime(2026, 11, 1, 5, 10, tzinfo=UTC), datetime(2026, 11, 1, 6, 10, tzinfo=UTC)]
    for n, t in enumerate(fold, start=10):  # 01:10 EDT and 01:10 EST: two hours, both 01:00
        call(store, n, t)
    hours = analytics.buckets(store, CallFilter(), "hour", ny)
    ones = [b["start"] for b in hours if "T01:00" in b["start"]]
    assert ones == ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"]


def test_bucket_filters_are_exact_at_quarter_hour_edges(store: Store) -> None:
    for n, minute in enumerate((0, 7, 8, 14, 15)):
        call(store, n, T0 + timedelta(minutes=minute))
    window = CallFilter(created_after=T0 + timedelta(minutes=7),
                        created_before=T0 + timedelta(minutes=14))  # fmt: skip
    [bucket] = analytics.buckets(store, window, "hour", ZoneInfo("UTC"))
    assert bucket["total"] == 2  # 12:07 and 12:08; 12:14 is not before 12:14


V1_SCHEMA = """
CREATE TABLE calls (
    id TEXT PRIMARY KEY, direction TEXT NOT NULL,
    trunk TEXT, from_number TEXT, to_number TEXT, route TEXT, agent TEXT,
    variables TEXT NOT NULL DEFAULT '{}', sip_call_id TEXT,
    created_at TEXT NOT NULL, ringing_at TEXT, answered_at TEXT, ended_at TEXT,
    duration REAL, billable_seconds INTEGER, end_reason TEXT, sip_code INTEGER,
    hangup_by TEXT, codec TEXT, recording_path TEXT, status TEXT NOT NULL
);
CREATE INDEX calls_created ON calls(created_at);
PRAGMA user_version=1;
"""


def test_a_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute(
        "INSERT INTO calls (id, direction, variables, created_at, answered_at, duration, status)"
        " VALUES ('call_old', 'outbound', '{\"campaign_id\":\"cmp_9\"}', "
        "'2026-03-01T12:00:00.000Z', '2026-03-01T12:00:03.500Z', 42.0, 'completed')"
    )
    db.commit()
    db.close()
    store = Store(str(path))
    with store.reading() as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    got = analytics.summary(store, CallFilter(campaign_id="cmp_9"))
    assert (got["total"], got["average_time_to_answer"], got["duration"]["p50"]) == (1, 3.5, 42.0)
    [bucket] = analytics.buckets(store, CallFilter(), "hour", ZoneInfo("UTC"))
    assert bucket["start"] == "2026-03-01T12:00:00+00:00"
    record = store.get_call("call_old")
    assert record is not None and record.latency is None and record.recording_bytes is None
    store.close()
    Store(str(path)).close()  # opening it again changes nothing


def test_a_long_analytics_read_holds_up_no_write(store: Store) -> None:
    call(store, 1, T0)
    with store.reading() as db:
        db.execute("BEGIN")
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 1  # a read snapshot
        writer = threading.Thread(target=call, args=(store, 2, T0))
        writer.start()
        writer.join(2)
        assert not writer.is_alive()  # the ledger's writes go on meanwhile
        assert db.execute("SELECT count(*) FROM calls").fetchone()[0] == 1  # the same snapshot
        db.execute("COMMIT")
    assert analytics.summary(store, CallFilter())["total"] == 2


def _random_calls(store: Store, count: int, seed: int) -> None:
    """Calls over four UTC days, every outcome, the nullable dimensions sometimes unset, '' as
    a trunk of its own (a refused call's), a campaign on some."""
    rng = random.Random(seed)
    for n in range(count):
        at = T0 + timedelta(seconds=rng.randrange(4 * 86400))
        fields: dict[str, Any] = {"trunk": rng.choice(["a", "b", "", None]),
                                  "agent": rng.choice(["x", "y", None]),
                                  "direction": rng.choice(["inbound", "outbound"])}  # fmt: skip
        if rng.random() < 0.3:
            fields["variables"] = {"campaign_id": rng.choice(["cmp_1", "cmp_2"])}
        latency = {"response_p50_ms": rng.uniform(200, 900), "response_p95_ms": 1000.0}
        call(store, n, at, outcome=rng.choice(["completed", "completed", "failed", "answered"]),
             duration=rng.uniform(1, 300), answer_after=rng.uniform(0.5, 9),
             latency=latency if rng.random() < 0.7 else None, **fields)  # fmt: skip


WINDOWS = [
    CallFilter(),
    CallFilter(created_after=T0 + timedelta(hours=5, minutes=17, milliseconds=250)),
    CallFilter(created_before=T0 + timedelta(days=2, hours=3)),
    CallFilter(created_after=T0 + timedelta(hours=12), created_before=T0 + timedelta(days=3)),
    CallFilter(created_after=T0 + timedelta(hours=1), created_before=T0 + timedelta(hours=9)),
    CallFilter(trunk="", created_after=T0 + timedelta(days=1, minutes=1)),
    CallFilter(agent="y", direction="outbound", status="completed"),
    CallFilter(campaign_id="cmp_2", created_before=T0 + timedelta(days=1, hours=12)),
    CallFilter(number="+15550100"),  # not in the rollup: the calls alone
]


@pytest.mark.parametrize("window", WINDOWS, ids=range(len(WINDOWS)))
def test_the_daily_rollup_gives_the_figures_of_the_calls(store: Store, window: CallFilter) -> None:
    """Whole days from the rollup and partial ones from the calls add up to what reading every
    call gives, whatever the window and filters (T0 is noon: every window cuts days)."""
    _random_calls(store, 600, seed=7)
    assert analytics.summary(store, window) == analytics.summary(store, window, rollup=False)


def test_the_rollup_follows_every_change_and_deletion_of_a_call(store: Store) -> None:
    _random_calls(store, 300, seed=11)
    with store._tx() as db:  # as an operator's own SQL would
        db.execute("UPDATE calls SET trunk = 'b', status = 'failed' WHERE rowid % 7 = 0")
        db.execute("UPDATE calls SET duration = duration * 2 WHERE rowid % 5 = 0")
        db.execute("DELETE FROM calls WHERE rowid % 3 = 0")
    assert analytics.summary(store, CallFilter()) == analytics.summary(
        store, CallFilter(), rollup=False
    )
    for unit in ("hour", "day"):
        zone = ZoneInfo("UTC")
        assert analytics.buckets(store, CallFilter(), unit, zone) == analytics.buckets(
            store, CallFilter(), unit, zone, rollup=False
        )
    with store.reading() as db:
        rebuilt = db.execute(schema.DAILY.rebuild().replace("INSERT INTO calls_daily ", ""))
        expected = {tuple(r[:8]) for r in rebuilt if r[6]}
        kept = {tuple(r[:8]) for r in db.execute("SELECT * FROM calls_daily WHERE calls > 0")}
    assert {r[:6] for r in kept} == {r[:6] for r in expected}


BUCKET_WINDOWS = [
    CallFilter(),
    CallFilter(created_after=T0 + timedelta(minutes=7, seconds=30)),
    CallFilter(created_before=T0 + timedelta(days=2, minutes=44, milliseconds=1)),
    CallFilter(created_after=T0 + timedelta(hours=3, minutes=1),
               created_before=T0 + timedelta(days=3, hours=2, minutes=59)),
    CallFilter(created_after=T0 + timedelta(minutes=16), created_before=T0 + timedelta(minutes=29)),
    CallFilter(trunk="a", created_after=T0 + timedelta(hours=1)),  # not in the rollup
]  # fmt: skip


@pytest.mark.parametrize("window", BUCKET_WINDOWS, ids=range(len(BUCKET_WINDOWS)))
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu", "America/New_York"])
def test_the_quarter_hour_rollup_gives_the_buckets_of_the_calls(
    store: Store, window: CallFilter, zone: str
) -> None:
    _random_calls(store, 600, seed=5)
    for unit in ("hour", "day"):
        got = analytics.buckets(store, window, unit, ZoneInfo(zone))
        assert got == analytics.buckets(store, window, unit, ZoneInfo(zone), rollup=False)
        assert got  # every window holds calls
