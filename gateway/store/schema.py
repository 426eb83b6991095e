"""The store's tables and indexes, and the migration of a file an older version wrote (its
`PRAGMA user_version`): columns a version added come by ALTER TABLE, filled in from the old."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 2

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


def migrate(db: sqlite3.Connection) -> None:
    """Create the tables, bring a file an older version wrote up to SCHEMA_VERSION (in one
    transaction), then the indexes. `db` is in autocommit mode (isolation_level=None)."""
    db.executescript(_SCHEMA)
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version < SCHEMA_VERSION:
        db.execute("BEGIN IMMEDIATE")
        try:
            _upgrade(db, version)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    db.executescript(_INDEXES)


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
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
