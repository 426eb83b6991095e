"""SQLite store: call records, the event outbox and idempotency keys (nothing lost).

Every change to a call is written together with its events in one transaction; the publisher
sends the outbox in rowid order. WAL with synchronous=NORMAL: a commit survives a crash or
kill -9 of the process (not a power cut of the machine, which would need synchronous=FULL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.db import connect, transaction
from gateway.errors import SipedgeError
from gateway.events.outbox import OutboxRow
from gateway.events.schema import Event, iso_z, utc_now
from gateway.store.schema import ANSWER_DELAY_SQL, QUARTER_SECONDS, migrate

IDEMPOTENCY_TTL = timedelta(hours=24)


class StoreError(SipedgeError):
    """The store refused a change (unknown call, unknown column, duplicate event id)."""


class CallNotFound(StoreError):
    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call {call_id}")
        self.call_id = call_id


@dataclass
class StoredCall:
    id: str
    direction: str  # "inbound" | "outbound"
    status: str
    trunk: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    route: str | None = None
    agent: str | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    sip_call_id: str | None = None
    created_at: datetime = field(default_factory=utc_now)
    ringing_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration: float | None = None
    billable_seconds: int | None = None
    end_reason: str | None = None
    sip_code: int | None = None
    hangup_by: str | None = None
    codec: str | None = None
    recording_path: str | None = None
    latency: dict[str, float] | None = None  # the agent latency figures of call.completed
    recording_duration: float | None = None
    recording_bytes: int | None = None
    recording_at: datetime | None = None  # when call.recording.ready came
    recording_deleted_at: datetime | None = None

    @property
    def campaign_id(self) -> str | None:
        value = self.variables.get("campaign_id")
        return value if isinstance(value, str) else None


CALL_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StoredCall))
_TIME_COLUMNS = frozenset(
    {"created_at", "ringing_at", "answered_at", "ended_at", "recording_at", "recording_deleted_at"}
)
_JSON_COLUMNS = frozenset({"variables", "latency"})
_SORTABLE = frozenset({"created_at", "answered_at", "ended_at", "duration", "status"})


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    key: str
    request_hash: str
    call_id: str | None
    created_at: datetime


@dataclass(frozen=True)
class CallFilter:
    status: str | None = None
    direction: str | None = None
    trunk: str | None = None
    agent: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    number: str | None = None  # matches from_number or to_number
    created_after: datetime | None = None
    created_before: datetime | None = None
    campaign_id: str | None = None
    call_id: str | None = None
    with_recording: bool = False  # only calls whose recording is there (not deleted)

    def where(self) -> tuple[str, list[Any]]:
        """The SQL `WHERE ...` (or "") and its arguments."""
        where: list[str] = []
        args: list[Any] = []
        for name in ("status", "direction", "trunk", "agent", "from_number", "to_number",
                     "campaign_id"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                where.append(f"{name}=?")
                args.append(value)
        if self.call_id is not None:
            where.append("id=?")
            args.append(self.call_id)
        if self.with_recording:
            where.append("recording_path IS NOT NULL")
        if self.number is not None:
            where.append("(from_number=? OR to_number=?)")
            args += [self.number, self.number]
        if self.created_after is not None:
            where.append("created_at>=?")
            args.append(iso_z(self.created_after))
        if self.created_before is not None:
            where.append("created_at<?")
            args.append(iso_z(self.created_before))
        return (f"WHERE {' AND '.join(where)}" if where else ""), args


def _to_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _TIME_COLUMNS:
        return iso_z(value)
    if name in _JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"))
    return value


def _from_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _TIME_COLUMNS:
        return datetime.fromisoformat(value)
    if name in _JSON_COLUMNS:
        return json.loads(value)
    return value


def _derived(values: Mapping[str, Any]) -> dict[str, Any]:
    """The derived columns that `values` (a record's fields, or an update's) decide."""
    out: dict[str, Any] = {}
    if "variables" in values:
        campaign = (values["variables"] or {}).get("campaign_id")
        out["campaign_id"] = campaign if isinstance(campaign, str) else None
    if "latency" in values:
        latency = values["latency"] or {}
        for name in ("response_p50_ms", "response_p95_ms"):
            figure = latency.get(name)
            out[name] = float(figure) if isinstance(figure, int | float) else None
    return out


def _record(row: sqlite3.Row) -> StoredCall:
    return StoredCall(**{name: _from_db(name, row[name]) for name in CALL_COLUMNS})


def _as_list(events: Event | Sequence[Event] | None) -> list[Event]:
    if events is None:
        return []
    return [events] if isinstance(events, Event) else list(events)


class Store:
    """One SQLite connection guarded by a lock; every method is short and thread-safe."""

    def __init__(
        self, path: str, *, prefix: str = "sipedge", clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.path = path
        self.prefix = prefix
        self._clock = clock
        self._lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._reader: sqlite3.Connection | None = None
        self._db = connect(path)
        with self._lock:
            migrate(self._db)

    def close(self) -> None:
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
        with self._lock:
            self._db.close()

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self._lock)

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection of its own for long reads (analytics: up to a few hundred
        ms on a million calls), so they hold up no write: WAL readers never block the
        writer. An in-memory store has only the one connection."""
        if self.path == ":memory:":
            with self._lock:
                yield self._db
            return
        with self._read_lock:
            if self._reader is None:
                uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
                self._reader = sqlite3.connect(uri, uri=True, check_same_thread=False)
            yield self._reader

    # --- node liveness --------------------------------------------------------------------

    def beat(self, at: float) -> None:
        """The node is alive at `at` (epoch seconds): calls open at a kill ended after it."""
        with self._lock:
            self._db.execute(
                "INSERT INTO node_state(key, value) VALUES('alive_at', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (repr(at),),
            )

    def last_beat(self) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM node_state WHERE key = 'alive_at'").fetchone()
        return float(row["value"]) if row is not None else None

    # --- calls ---------------------------------------------------------------------------

    def create_call(
        self, record: StoredCall, events: Event | Sequence[Event] | None = None
    ) -> list[Event]:
        """Insert the call and its first event(s) atomically; returns the events with seq."""
        row = {name: _to_db(name, getattr(record, name)) for name in CALL_COLUMNS}
        row |= _derived(vars(record))
        row["created_q"] = int(record.created_at.timestamp()) // QUARTER_SECONDS
        marks = ",".join("?" * len(row))
        with self._tx() as db:
            try:
                db.execute(f"INSERT INTO calls ({','.join(row)}) VALUES ({marks})",
                           list(row.values()))  # fmt: skip
                if record.answered_at is not None:
                    db.execute(f"UPDATE calls SET answer_delay = {ANSWER_DELAY_SQL} WHERE id=?",
                               (record.id,))  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"call {record.id} already exists") from exc
            return self._append(db, _as_list(events), record.id)

    def update_call(
        self,
        call_id: str,
        changes: Mapping[str, Any],
        events: Event | Sequence[Event] | None = None,
    ) -> list[Event]:
        """Apply `changes` to the call and append its event(s) in one transaction."""
        unknown = (set(changes) - set(CALL_COLUMNS)) | ({"id"} & set(changes))
        if unknown:
            raise StoreError(f"cannot update call columns {sorted(unknown)}")
        with self._tx() as db:
            if changes:
                row = {name: _to_db(name, value) for name, value in changes.items()}
                row |= _derived(changes)
                sets = ",".join(f"{name}=?" for name in row)
                args = list(row.values())
                if "answered_at" in changes:  # SET sees the old answered_at: pass the new one
                    sets += ",answer_delay=(julianday(?) - julianday(created_at)) * 86400.0"
                    args.append(row["answered_at"])
                cur = db.execute(f"UPDATE calls SET {sets} WHERE id=?", [*args, call_id])
                found = cur.rowcount > 0
            else:
                found = db.execute("SELECT 1 FROM calls WHERE id=?", (call_id,)).fetchone()
            if not found:
                raise CallNotFound(call_id)
            return self._append(db, _as_list(events), call_id)

    def get_call(self, call_id: str) -> StoredCall | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM calls WHERE id=?", (call_id,)).fetchone()
        return _record(row) if row else None

    def open_calls(self) -> list[StoredCall]:
        """Calls with no end recorded: live ones, or ones a crashed worker or node left open."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM calls WHERE ended_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [_record(row) for row in rows]

    def list_calls(
        self,
        filters: CallFilter | Mapping[str, Any] | None = None,
        page: int = 1,
        per_page: int = 50,
        sort: str = "-created_at",
        *,
        offset: int | None = None,
        limit: int | None = None,
    ) -> tuple[list[StoredCall], int]:
        """One page of calls and the total matching `filters`; sort `col` or `-col`. The slice
        is `page`/`per_page`, or `offset`/`limit` when given."""
        if isinstance(filters, Mapping):
            filters = CallFilter(**filters)
        filters = filters or CallFilter()
        column = sort.lstrip("-")
        if column not in _SORTABLE:
            raise StoreError(f"cannot sort calls by {sort!r}; use one of {sorted(_SORTABLE)}")
        order = "DESC" if sort.startswith("-") else "ASC"
        clause, args = filters.where()
        limit = max(limit if limit is not None else per_page, 1)
        offset = max(offset if offset is not None else (max(page, 1) - 1) * limit, 0)
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM calls {clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM calls {clause} ORDER BY {column} {order}, id {order} "
                "LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [_record(r) for r in rows], int(total)

    def list_recordings(
        self, filters: CallFilter, offset: int = 0, limit: int = 50
    ) -> tuple[list[StoredCall], int]:
        """The calls with a recording that `filters` matches, newest recording first."""
        clause, args = replace(filters, with_recording=True).where()
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM calls {clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM calls {clause} ORDER BY recording_at DESC, rowid DESC "
                "LIMIT ? OFFSET ?",
                [*args, max(limit, 1), max(offset, 0)],
            ).fetchall()
        return [_record(r) for r in rows], int(total)

    def recordings_before(self, before: datetime, limit: int = 100) -> list[StoredCall]:
        """Calls whose recording was made before `before`, oldest first (for retention)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM calls INDEXED BY calls_recordings WHERE recording_path IS NOT NULL"
                " AND recording_at < ? ORDER BY recording_at LIMIT ?",
                (iso_z(before), limit),
            ).fetchall()
        return [_record(r) for r in rows]

    # --- events and the outbox -------------------------------------------------------------

    def add_event(self, events: Event | Sequence[Event]) -> list[Event]:
        """Append events that change no call record (trunk.*, dtmf, speech, quality)."""
        with self._tx() as db:
            return self._append(db, _as_list(events), None)

    def _append(
        self, db: sqlite3.Connection, events: list[Event], call_id: str | None
    ) -> list[Event]:
        stored: list[Event] = []
        last: dict[str | None, int] = {}
        now = iso_z(self._clock())
        for event in events:
            if call_id is not None and event.call_id != call_id:
                raise StoreError(f"event {event.id} is for {event.call_id}, not {call_id}")
            key = event.call_id
            if key not in last:
                row = db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM events WHERE call_id IS ?", (key,)
                ).fetchone()
                last[key] = int(row[0])
            last[key] += 1
            event = event.model_copy(update={"seq": last[key]})
            try:
                db.execute(
                    "INSERT INTO events (id, call_id, seq, type, topic, payload, created_at) "
                    "VALUES (?,?,?,?,?,?,?)",
                    (event.id, key, event.seq, event.type, event.topic(self.prefix),
                     event.to_json(), now),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"event {event.id} is already stored") from exc
            stored.append(event)
        return stored

    def undelivered(self, limit: int = 100, after_rowid: int = 0) -> list[OutboxRow]:
        """Undelivered events in global (rowid) order, which is also per-call order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, id, call_id, seq, type, topic, payload FROM events "
                "WHERE delivered_at IS NULL AND rowid > ? ORDER BY rowid LIMIT ?",
                (after_rowid, limit),
            ).fetchall()
        return [OutboxRow(*tuple(r)) for r in rows]

    def events_after(self, rowid: int, limit: int = 100) -> list[OutboxRow]:
        """Stored events after `rowid`, delivered to MQTT or not (webhooks read these)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rowid, id, call_id, seq, type, topic, payload FROM events "
                "WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (rowid, limit),
            ).fetchall()
        return [OutboxRow(*tuple(r)) for r in rows]

    def last_rowid(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM events").fetchone()
        return int(row[0])

    def mark_delivered(self, rowids: Iterable[int]) -> None:
        ids = list(rowids)
        now = iso_z(self._clock())
        with self._tx() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                db.execute(
                    f"UPDATE events SET delivered_at=? WHERE delivered_at IS NULL "
                    f"AND rowid IN ({','.join('?' * len(chunk))})",
                    [now, *chunk],
                )

    def writable(self) -> bool:
        """True if a write transaction can start now (for the health check); writes nothing."""
        if self.path != ":memory:" and not os.access(self.path, os.W_OK):
            return False
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            return False
        return True

    def backlog(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM events WHERE delivered_at IS NULL")
            return int(row.fetchone()[0])

    def call_events(self, call_id: str) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM events WHERE call_id=? ORDER BY seq", (call_id,)
            ).fetchall()
        return [Event.from_json(r[0]) for r in rows]

    def prune_delivered(self, before: datetime) -> int:
        """Delete delivered events created before `before`; returns how many went."""
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM events WHERE delivered_at IS NOT NULL AND created_at < ?",
                (iso_z(before),),
            )
            return cur.rowcount

    # --- idempotency keys ----------------------------------------------------------------

    def get_idempotency(self, key: str) -> IdempotencyRecord | None:
        """The live record for `key`, or None if there is none or it is older than 24 h."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM idempotency WHERE key=? AND created_at>?", (key, self._horizon())
            ).fetchone()
        return self._idem(row) if row else None

    def put_idempotency(
        self, key: str, request_hash: str, call_id: str | None
    ) -> tuple[IdempotencyRecord, bool]:
        """Claim `key` for this request; returns (record, True) if claimed now, or the
        existing live record and False (the caller compares request_hash)."""
        with self._tx() as db:
            db.execute(
                "DELETE FROM idempotency WHERE key=? AND created_at<=?", (key, self._horizon())
            )
            cur = db.execute(
                "INSERT OR IGNORE INTO idempotency (key, request_hash, call_id, created_at) "
                "VALUES (?,?,?,?)",
                (key, request_hash, call_id, iso_z(self._clock())),
            )
            row = db.execute("SELECT * FROM idempotency WHERE key=?", (key,)).fetchone()
            return self._idem(row), cur.rowcount == 1

    def purge_idempotency(self) -> int:
        with self._tx() as db:
            cur = db.execute("DELETE FROM idempotency WHERE created_at<=?", (self._horizon(),))
            return cur.rowcount

    def _horizon(self) -> str:
        return iso_z(self._clock() - IDEMPOTENCY_TTL)

    @staticmethod
    def _idem(row: sqlite3.Row) -> IdempotencyRecord:
        return IdempotencyRecord(
            key=row["key"],
            request_hash=row["request_hash"],
            call_id=row["call_id"],
            created_at=datetime.fromisoformat(row["created_at"]),
        )
