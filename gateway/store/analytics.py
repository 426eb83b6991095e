"""Call analytics in SQL over the call log: totals by status, direction, trunk, agent and
campaign, answer rate, durations (average and percentiles), time to answer, agent latency, and
the same per hour or day of a time zone.

Each query reads one covering index of store/sqlite.py and never sorts: totals are grouped in
`calls_analytics` order (a few thousand groups at most, folded here into each breakdown);
percentiles step through `calls_durations` in duration order (exact, nearest rank); buckets
are counted per UTC quarter hour in `calls_quarters` order and folded here into local hours or
days, which is exact in every IANA zone since every offset from UTC is a whole number of
quarter hours (India +5:30, Nepal +5:45), DST changes included. bench/analytics.py times them.

Durations and their percentiles are of completed calls (answered, then ended); answered counts
every call that was answered, ended or not; time to answer is created -> answered.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from gateway.store.schema import DAY_QUARTERS, QUARTER_SECONDS
from gateway.store.sqlite import CallFilter, Store

PERCENTILES = (50, 90, 99)
Unit = Literal["hour", "day"]
_DIMENSIONS = ("status", "direction", "trunk", "agent", "campaign_id")


@dataclass
class _Group:
    total: int = 0
    answered: int = 0
    failed: int = 0
    completed: int = 0
    duration_sum: float = 0.0  # of the completed calls

    def add(self, status: str, total: int, answered: int, duration_sum: float) -> None:
        self.total += total
        self.answered += answered
        if status == "failed":
            self.failed += total
        elif status == "completed":
            self.completed += total
            self.duration_sum += duration_sum

    def view(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "answered": self.answered,
            "failed": self.failed,
            "answer_rate": _ratio(self.answered, self.total),
            "average_duration": _mean(self.duration_sum, self.completed),
        }


@dataclass
class _Latency:
    calls: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])

    def view(self) -> dict[str, Any]:
        p50, p95 = (_mean(s, self.calls, 2) for s in self.sums)
        return {"calls": self.calls, "average_response_p50_ms": p50,
                "average_response_p95_ms": p95}  # fmt: skip


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _mean(total: float, count: int, digits: int = 3) -> float | None:
    return round(total / count, digits) if count else None


def _and(where: str, condition: str) -> str:
    return f"{where} AND {condition}" if where else f"WHERE {condition}"


_GROUPED = (
    "SELECT status, direction, trunk, agent, campaign_id, count(*), count(answer_delay),"
    " total(duration), total(answer_delay), count(response_p50_ms), "
    "total(response_p50_ms), total(response_p95_ms) FROM calls"
)
_ROLLED = (
    "SELECT status, direction, trunk, agent, campaign_id, sum(calls), sum(answered), "
    "total(duration_sum), total(answer_sum), sum(latency_calls), total(p50_sum), "
    "total(p95_sum) FROM calls_daily INDEXED BY calls_daily_groups"
)
_GROUP_BY = " GROUP BY status, direction, trunk, agent, campaign_id"
_ROLLED_UP = {"status", "direction", "trunk", "agent", "campaign_id", "created_after",
              "created_before"}  # fmt: skip
DAY_SECONDS = QUARTER_SECONDS * DAY_QUARTERS


def _grouped(db: sqlite3.Connection, filters: CallFilter, rollup: bool) -> list[Any]:
    """The totals per group (status, direction, trunk, agent, campaign): whole UTC days from
    calls_daily, the rest (a window's partial first and last days) from the calls themselves.
    A filter the rollup does not keep (a number, a call, recordings) reads the calls alone."""
    if not rollup or not _used(filters) <= _ROLLED_UP:
        where, args = filters.where()
        return db.execute(f"{_GROUPED} INDEXED BY calls_analytics {where}{_GROUP_BY}",
                          args).fetchall()  # fmt: skip
    after, before = filters.created_after, filters.created_before
    # Whole days: from the first midnight at or after `after` up to the last before `before`.
    first = None if after is None else math.ceil(after.timestamp() / DAY_SECONDS)
    last = None if before is None else math.floor(before.timestamp() / DAY_SECONDS)
    if first is not None and last is not None and first >= last:  # within one day
        where, args = filters.where()
        return db.execute(f"{_GROUPED} INDEXED BY calls_created {where}{_GROUP_BY}",
                          args).fetchall()  # fmt: skip
    dims = replace(filters, created_after=None, created_before=None)
    where, args = dims.where()
    conditions = [where.removeprefix("WHERE ")] if where else []
    conditions += [] if first is None else [f"day >= {first}"]
    conditions += [] if last is None else [f"day < {last}"]
    clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = db.execute(f"{_ROLLED}{clause}{_GROUP_BY}", args).fetchall()
    edges: list[CallFilter] = []
    if first is not None and after is not None:
        edges.append(replace(filters, created_before=_instant(first * DAY_SECONDS)))
    if last is not None and before is not None:
        edges.append(replace(filters, created_after=_instant(last * DAY_SECONDS)))
    for edge in edges:
        where, args = edge.where()
        rows += db.execute(f"{_GROUPED} INDEXED BY calls_created {where}{_GROUP_BY}",
                           args).fetchall()  # fmt: skip
    return [row for row in rows if row[5]]  # a rollup group whose calls have all gone


def _used(filters: CallFilter) -> set[str]:
    """The filters set."""
    return {f.name for f in fields(filters) if getattr(filters, f.name) not in (None, False)}


def _instant(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def summary(store: Store, filters: CallFilter, *, rollup: bool = True) -> dict[str, Any]:
    """Every figure of GET /v1/analytics/calls for the calls `filters` matches (`rollup`
    False reads every call, not the daily rollup: the same figures, for tests)."""
    where, args = filters.where()
    with store.reading() as db:
        rows = _grouped(db, filters, rollup)
        overall = _Group()
        by: dict[str, dict[Any, _Group]] = {name: {} for name in _DIMENSIONS}
        answer_sum, latency = 0.0, _Latency()
        for row in rows:
            counts = (row[0], row[5], row[6], row[7])
            overall.add(*counts)
            for i, name in enumerate(_DIMENSIONS):
                by[name].setdefault(row[i], _Group()).add(*counts)
            answer_sum += row[8]
            latency.calls += row[9]
            latency.sums[0] += row[10]
            latency.sums[1] += row[11]
        percentiles = _percentiles(db, where, args, overall.completed)
    totals = overall.view()
    return {
        "total": totals["total"],
        "answered": totals["answered"],
        "failed": totals["failed"],
        "answer_rate": totals["answer_rate"],
        "by_status": {str(k): g.total for k, g in sorted(by["status"].items())},
        "by_direction": {str(k): g.total for k, g in sorted(by["direction"].items())},
        "by_trunk": _ranked(by["trunk"]),
        "by_agent": _ranked(by["agent"]),
        "by_campaign": _ranked({k: g for k, g in by["campaign_id"].items() if k is not None}),
        "duration": {"average": totals["average_duration"], **percentiles},
        "average_time_to_answer": _mean(answer_sum, overall.answered),
        "agent_latency": latency.view(),
    }


def _ranked(groups: dict[Any, _Group]) -> list[dict[str, Any]]:
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].total, str(kv[0])))
    return [{"id": key, **group.view()} for key, group in ordered]


def _percentiles(
    db: sqlite3.Connection, where: str, args: Sequence[Any], count: int
) -> dict[str, float | None]:
    """p50/p90/p99 of the completed calls' durations, nearest rank: the ceil(p% x n)-th in
    ascending order, read from the end of the index when that is nearer."""
    out: dict[str, float | None] = {f"p{p}": None for p in PERCENTILES}
    clause = _and(where, "status = 'completed'")
    for p in PERCENTILES if count else ():
        rank = max(1, -(-p * count // 100))
        ascending = rank <= count - rank
        row = db.execute(
            f"SELECT duration FROM calls INDEXED BY calls_durations {clause} "
            f"ORDER BY duration {'ASC' if ascending else 'DESC'} LIMIT 1 OFFSET ?",
            [*args, rank - 1 if ascending else count - rank],
        ).fetchone()
        out[f"p{p}"] = None if row is None or row[0] is None else round(float(row[0]), 3)
    return out


def buckets(
    store: Store, filters: CallFilter, unit: Unit, zone: ZoneInfo, *, rollup: bool = True
) -> list[dict[str, Any]]:
    """Per local hour or day of `zone`, in order, only those with calls: total, answered,
    failed, and the average duration of the completed calls (`rollup` False: every call
    read, not calls_quarterly, the same figures, for tests)."""
    with store.reading() as db:
        if rollup and _used(filters) <= {"created_after", "created_before"}:
            rows = _rolled_quarters(db, filters)
        else:
            rows = _quarters(db, filters)
    # Keyed by the bucket's start in UTC: the two 01:00 hours of a DST fall-back stay two.
    folded: dict[datetime, _Group] = {}
    starts: dict[int, datetime] = {}
    for quarter, status, total, answered, duration_sum in rows:
        start = starts.get(quarter)
        if start is None:
            start = starts[quarter] = _bucket_start(quarter, unit, zone).astimezone(UTC)
        folded.setdefault(start, _Group()).add(status, total, answered, duration_sum)
    return [_bucket(start.astimezone(zone), group) for start, group in sorted(folded.items())]


def _quarters(db: sqlite3.Connection, filters: CallFilter) -> list[Any]:
    """(quarter, status, calls, answered, duration sum) of the calls `filters` matches."""
    where, args = filters.where()
    # The quarter-hour bounds let SQLite seek in calls_quarters; created_at stays exact.
    if filters.created_after is not None:
        where = _and(where, "created_q >= ?")
        args.append(int(filters.created_after.timestamp()) // QUARTER_SECONDS)
    if filters.created_before is not None:
        where = _and(where, "created_q <= ?")
        args.append(int(filters.created_before.timestamp()) // QUARTER_SECONDS)
    return db.execute(
        "SELECT created_q, status, count(*), count(answer_delay), total(duration) "
        f"FROM calls INDEXED BY calls_quarters {where} GROUP BY created_q, status",
        args,
    ).fetchall()


def _rolled_quarters(db: sqlite3.Connection, filters: CallFilter) -> list[Any]:
    """The same for a window of every call: whole quarter hours from calls_quarterly, the
    partial ones at the window's edges from the calls."""
    after, before = filters.created_after, filters.created_before
    first = None if after is None else math.ceil(after.timestamp() / QUARTER_SECONDS)
    last = None if before is None else math.floor(before.timestamp() / QUARTER_SECONDS)
    if first is not None and last is not None and first >= last:  # within one quarter hour
        return _quarters(db, filters)
    conditions = ["calls > 0"]
    conditions += [] if first is None else [f"q >= {first}"]
    conditions += [] if last is None else [f"q < {last}"]
    rows: list[Any] = db.execute(
        "SELECT q, status, calls, answered, duration_sum FROM calls_quarterly "
        f"WHERE {' AND '.join(conditions)}"
    ).fetchall()
    if first is not None and after is not None:
        rows += _quarters(db, replace(filters, created_before=_instant(first * QUARTER_SECONDS)))
    if last is not None and before is not None:
        rows += _quarters(db, replace(filters, created_after=_instant(last * QUARTER_SECONDS)))
    return rows


def _bucket_start(quarter: int, unit: Unit, zone: ZoneInfo) -> datetime:
    local = datetime.fromtimestamp(quarter * QUARTER_SECONDS, tz=UTC).astimezone(zone)
    if unit == "hour":
        # A zone's hour starts at its own :00, whatever its offset from UTC.
        return local.replace(minute=0, second=0, microsecond=0)
    # The day's first instant: its midnight, or the end of a DST gap that skips midnight
    # (zoneinfo maps a time that does not exist to the instant the gap ends).
    midnight = datetime(local.year, local.month, local.day, tzinfo=zone)
    return midnight.astimezone(UTC).astimezone(zone)


def _bucket(start: datetime, group: _Group) -> dict[str, Any]:
    view = group.view()
    return {"start": start.isoformat(), "total": view["total"], "answered": view["answered"],
            "failed": view["failed"], "average_duration": view["average_duration"]}  # fmt: skip
