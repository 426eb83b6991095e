"""The store's tables and indexes, and the migration of a file an older version wrote (its
`PRAGMA user_version`): columns a version added come by ALTER TABLE, filled in from the old."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    trunk TEXT, from_number TEXT, to_number TEXT, route TEXT, agent TEXT,
    variables TEXT NOT NULL DEFAULT '{}',
    sip_call_id TEXT,
    created_at TEXT NOT NULL, ringing_at TEXT, answered_at TEXT, ended_at TEXT,
    duration REAL, billable_seconds INTEGER, end_reason TEXT, sip_code INTEGER,
    hangup_by TEXT, codec TEXT, recording_path TEXT,
    status TEXT NOT NULL,
    latency TEXT,
    recording_duration REAL, recording_bytes INTEGER, recording_at TEXT,
    recording_deleted_at TEXT,
    -- derived on write, for analytics (store/analytics.py): no JSON or date parsing per row
    campaign_id TEXT, created_q INTEGER, answer_delay REAL,
    response_p50_ms REAL, response_p95_ms REAL
);
CREATE TABLE IF NOT EXISTS events (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    call_id TEXT,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);
CREATE INDEX IF NOT EXISTS events_call_seq ON events(call_id, seq);
CREATE INDEX IF NOT EXISTS events_undelivered ON events(rowid) WHERE delivered_at IS NULL;
CREATE TABLE IF NOT EXISTS node_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    call_id TEXT,
    created_at TEXT NOT NULL
);
"""
# Columns each schema version added, for a file an older version created (ALTER TABLE cannot
# say IF NOT EXISTS; a fresh file has them from _SCHEMA already).
_MIGRATIONS: dict[int, tuple[tuple[str, str], ...]] = {
    2: (("latency", "TEXT"), ("recording_duration", "REAL"), ("recording_bytes", "INTEGER"),
        ("recording_at", "TEXT"), ("recording_deleted_at", "TEXT"), ("campaign_id", "TEXT"),
        ("created_q", "INTEGER"), ("answer_delay", "REAL"), ("response_p50_ms", "REAL"),
        ("response_p95_ms", "REAL")),
}  # fmt: skip
# The derived columns as SQL over the others: the v2 migration fills them in with these.
QUARTER_SQL = "CAST(strftime('%s', created_at) AS INTEGER) / 900"
ANSWER_DELAY_SQL = "(julianday(answered_at) - julianday(created_at)) * 86400.0"
QUARTER_SECONDS = 900
# After the migrations, since they index columns an older file only has once migrated.
_INDEXES = """
CREATE INDEX IF NOT EXISTS calls_created ON calls(created_at);
CREATE INDEX IF NOT EXISTS calls_status ON calls(status, created_at);
-- analytics (store/analytics.py), each covering what its query reads: totals grouped in
-- index order (no sort), durations in order for percentiles, counts per UTC quarter hour
CREATE INDEX IF NOT EXISTS calls_analytics ON calls(status, direction, trunk, agent,
    campaign_id, created_at, duration, answer_delay, response_p50_ms, response_p95_ms);
CREATE INDEX IF NOT EXISTS calls_durations ON calls(duration, created_at, direction, trunk,
    agent, campaign_id) WHERE status = 'completed';
CREATE INDEX IF NOT EXISTS calls_quarters ON calls(created_q, status, created_at, direction,
    trunk, agent, campaign_id, answer_delay, duration);
CREATE INDEX IF NOT EXISTS calls_recordings ON calls(recording_at) WHERE recording_path IS NOT NULL;
"""

# Rollups of the analytics figures (store/analytics.py), kept by triggers on every write to
# calls: a row's old figures out, its new ones in. A query reads whole periods from a rollup
# and only the partial ones at a window's edges from calls. A key treats NULL as a value of
# its own (x'' is a BLOB, unequal to every TEXT, '' included).
DAY_QUARTERS = 96
_ANSWERED = ("answered", "({row}.answer_delay IS NOT NULL)")
_DURATION = ("duration_sum", "ifnull({row}.duration, 0)")


@dataclass(frozen=True)
class _Rollup:
    table: str
    key: tuple[tuple[str, str, str], ...]  # column, its declaration, its value for a calls row
    figures: tuple[tuple[str, str], ...]  # column (a count, or a REAL *_sum), what a call adds
    indexes: str = ""

    def _nullable(self) -> list[bool]:
        return ["NOT NULL" not in declaration for _, declaration, _ in self.key]

    def ddl(self) -> str:
        keys = ", ".join(f"{c} {declaration}" for c, declaration, _ in self.key)
        figures = ", ".join(f"{c} {'REAL' if c.endswith('_sum') else 'INTEGER'} NOT NULL DEFAULT 0"
                            for c, _ in (("calls", "1"), *self.figures))  # fmt: skip
        nullable = zip(self.key, self._nullable(), strict=True)
        unique = ", ".join(f"ifnull({c}, x'')" if n else c for (c, _, _), n in nullable)
        return (f"CREATE TABLE IF NOT EXISTS {self.table} ({keys}, {figures});\n"
                f"CREATE UNIQUE INDEX IF NOT EXISTS {self.table}_key ON {self.table}({unique});\n"
                f"{self.indexes}\n")  # fmt: skip

    def change(self, row: str, sign: str) -> str:
        """Statements adding (`+`) or taking out (`-`) the figures of `row` (new or old)."""
        figures = [("calls", "1"), *self.figures]
        sets = ", ".join(f"{c} = {c} {sign} {add.format(row=row)}" for c, add in figures)
        match = " AND ".join(
            f"ifnull({c}, x'') = ifnull({v.format(row=row)}, x'')" if n
            else f"{c} = {v.format(row=row)}"
            for (c, _, v), n in zip(self.key, self._nullable(), strict=True)
        )  # fmt: skip
        update = f"UPDATE {self.table} SET {sets} WHERE {match};"
        if sign == "-":
            return update
        columns = ", ".join(c for c, _, _ in self.key)
        values = ", ".join(v.format(row=row) for _, _, v in self.key)
        return f"INSERT OR IGNORE INTO {self.table} ({columns}) VALUES ({values}); {update}"

    def rebuild(self) -> str:
        keys = ", ".join(v.format(row="calls") for _, _, v in self.key)
        sums = ", ".join(f"sum({add.format(row='calls')})" for _, add in self.figures)
        groups = ", ".join(str(i + 1) for i in range(len(self.key)))
        return (f"INSERT INTO {self.table} SELECT {keys}, count(*), {sums} FROM calls "
                f"GROUP BY {groups}")  # fmt: skip


DAILY = _Rollup(
    # the summary's sums per UTC day and group
    table="calls_daily",
    key=(("day", "INTEGER NOT NULL", f"{{row}}.created_q / {DAY_QUARTERS}"),  # UTC days
         ("status", "TEXT NOT NULL", "{row}.status"),
         ("direction", "TEXT NOT NULL", "{row}.direction"),
         ("trunk", "TEXT", "{row}.trunk"), ("agent", "TEXT", "{row}.agent"),
         ("campaign_id", "TEXT", "{row}.campaign_id")),
    figures=(_ANSWERED, _DURATION, ("answer_sum", "ifnull({row}.answer_delay, 0)"),
             ("latency_calls", "({row}.response_p50_ms IS NOT NULL)"),
             ("p50_sum", "ifnull({row}.response_p50_ms, 0)"),
             ("p95_sum", "ifnull({row}.response_p95_ms, 0)")),
    # what a summary reads, in its GROUP BY order (no sort)
    indexes="CREATE INDEX IF NOT EXISTS calls_daily_groups ON calls_daily(status, direction, "
    "trunk, agent, campaign_id, day, calls, answered, duration_sum, answer_sum, latency_calls, "
    "p50_sum, p95_sum);",
)  # fmt: skip
QUARTERLY = _Rollup(
    # the buckets' counts per UTC quarter hour, for buckets of every call (no filter)
    table="calls_quarterly",
    key=(("q", "INTEGER NOT NULL", "{row}.created_q"), ("status", "TEXT NOT NULL", "{row}.status")),
    figures=(_ANSWERED, _DURATION),
)
_ROLLUPS = (DAILY, QUARTERLY)
_WATCHED = ("status, direction, trunk, agent, campaign_id, created_q, duration, answer_delay, "
            "response_p50_ms, response_p95_ms")  # fmt: skip
_NEW_IN = " ".join(r.change("new", "+") for r in _ROLLUPS)
_OLD_OUT = " ".join(r.change("old", "-") for r in _ROLLUPS)
_ROLLUP = "".join(r.ddl() for r in _ROLLUPS) + "".join(
    f"\nCREATE TRIGGER IF NOT EXISTS calls_rollup_{name} AFTER {when} ON calls BEGIN {body} END;"
    for name, when, body in (
        ("insert", "INSERT", _NEW_IN),
        ("delete", "DELETE", _OLD_OUT),
        ("update", f"UPDATE OF {_WATCHED}", f"{_OLD_OUT} {_NEW_IN}"),
    )
)


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, bring a file an older version wrote up to SCHEMA_VERSION (its
    columns in one transaction; the indexes; the rollup filled from the calls in another,
    which sets the version: a crash between the two does both again). `db` is in autocommit
    mode (isolation_level=None)."""
    db.executescript(_SCHEMA)
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version < SCHEMA_VERSION:
        _in_transaction(db, lambda: _upgrade(db, version))
    db.executescript(_INDEXES)
    db.executescript(_ROLLUP)
    if version < SCHEMA_VERSION:  # the version is the rollup's too: set once it is filled

        def rebuild() -> None:
            for rollup in _ROLLUPS:
                db.execute(f"DELETE FROM {rollup.table}")
                db.execute(rollup.rebuild())
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

        _in_transaction(db, rebuild)


def _in_transaction(db: sqlite3.Connection, work: Callable[[], None]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        work()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _upgrade(db: sqlite3.Connection, version: int) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(calls)")}
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for column, kind in _MIGRATIONS.get(step, ()):
            if column not in have:
                db.execute(f"ALTER TABLE calls ADD COLUMN {column} {kind}")
    if version < 2:  # what the columns v2 derives on write are for the calls before it
        db.execute(f"UPDATE calls SET created_q = {QUARTER_SQL}")
        db.execute(f"UPDATE calls SET answer_delay = {ANSWER_DELAY_SQL} "
                   "WHERE answered_at IS NOT NULL")  # fmt: skip
        db.execute(
            "UPDATE calls SET campaign_id = json_extract(variables, '$.campaign_id') "
            "WHERE json_type(variables, '$.campaign_id') = 'text'"
        )
        db.execute("UPDATE calls SET recording_at = coalesce(ended_at, created_at) "
                   "WHERE recording_path IS NOT NULL")  # fmt: skip
