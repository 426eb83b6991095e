"""The store's tables and indexes, and the migration of a file an older version wrote (its
`PRAGMA user_version`): columns a version added come by ALTER TABLE, filled in from the old."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

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

# The analytics totals per UTC day and group (store/analytics.py), kept by triggers on every
# write to calls: a row's old figures out, its new ones in. A summary reads whole days here
# and only the partial days at a window's edges from calls. The key treats NULL as a value of
# its own (x'' is a BLOB, unequal to every TEXT, '' included).
DAY_QUARTERS = 96
_DIMENSIONS = ("trunk", "agent", "campaign_id")  # the nullable ones of the key
_FIGURES = (
    # column, what a call adds to it
    ("calls", "1"),
    ("answered", "({row}.answer_delay IS NOT NULL)"),
    ("duration_sum", "ifnull({row}.duration, 0)"),
    ("answer_sum", "ifnull({row}.answer_delay, 0)"),
    ("latency_calls", "({row}.response_p50_ms IS NOT NULL)"),
    ("p50_sum", "ifnull({row}.response_p50_ms, 0)"),
    ("p95_sum", "ifnull({row}.response_p95_ms, 0)"),
)
_ROLLUP = f"""
CREATE TABLE IF NOT EXISTS calls_daily (
    day INTEGER NOT NULL,  -- created_q / {DAY_QUARTERS}: days since 1970-01-01 UTC
    status TEXT NOT NULL, direction TEXT NOT NULL, trunk TEXT, agent TEXT, campaign_id TEXT,
    calls INTEGER NOT NULL DEFAULT 0, answered INTEGER NOT NULL DEFAULT 0,
    duration_sum REAL NOT NULL DEFAULT 0, answer_sum REAL NOT NULL DEFAULT 0,
    latency_calls INTEGER NOT NULL DEFAULT 0,
    p50_sum REAL NOT NULL DEFAULT 0, p95_sum REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS calls_daily_key ON calls_daily(day, status, direction,
    {", ".join(f"ifnull({c}, x'')" for c in _DIMENSIONS)});
-- what a summary reads, in its GROUP BY order (no sort)
CREATE INDEX IF NOT EXISTS calls_daily_groups ON calls_daily(status, direction, trunk, agent,
    campaign_id, day, {", ".join(col for col, _ in _FIGURES)});
"""


def _rollup_update(row: str, sign: str) -> str:
    """The statement adding (`+`) or taking out (`-`) the figures of `row` (new or old)."""
    sets = ", ".join(f"{col} = {col} {sign} {add.format(row=row)}" for col, add in _FIGURES)
    key = " AND ".join(
        [f"day = {row}.created_q / {DAY_QUARTERS}", f"status = {row}.status",
         f"direction = {row}.direction",
         *(f"ifnull({c}, x'') = ifnull({row}.{c}, x'')" for c in _DIMENSIONS)]
    )  # fmt: skip
    return f"UPDATE calls_daily SET {sets} WHERE {key};"


_NEW_IN = (
    "INSERT OR IGNORE INTO calls_daily (day, status, direction, trunk, agent, campaign_id) "
    f"VALUES (new.created_q / {DAY_QUARTERS}, new.status, new.direction, new.trunk, "
    f"new.agent, new.campaign_id); {_rollup_update('new', '+')}"
)
_OLD_OUT = _rollup_update("old", "-")
_WATCHED = ("status, direction, trunk, agent, campaign_id, created_q, duration, answer_delay, "
            "response_p50_ms, response_p95_ms")  # fmt: skip
_ROLLUP += "".join(
    f"CREATE TRIGGER IF NOT EXISTS calls_daily_{name} AFTER {when} ON calls BEGIN {body} END;\n"
    for name, when, body in (
        ("insert", "INSERT", _NEW_IN),
        ("delete", "DELETE", _OLD_OUT),
        ("update", f"UPDATE OF {_WATCHED}", _OLD_OUT + " " + _NEW_IN),
    )
)
_REBUILD_ROLLUP = (
    f"INSERT INTO calls_daily SELECT created_q / {DAY_QUARTERS}, status, direction, trunk, agent, "
    "campaign_id, count(*), count(answer_delay), total(duration), total(answer_delay), "
    "count(response_p50_ms), total(response_p50_ms), total(response_p95_ms) "
    "FROM calls GROUP BY 1, 2, 3, 4, 5, 6"
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
            db.execute("DELETE FROM calls_daily")
            db.execute(_REBUILD_ROLLUP)
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
