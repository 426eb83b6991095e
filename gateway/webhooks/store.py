"""Webhook subscriptions and their delivery queues, durable in the node's SQLite file (its own
connection, its own tables; WAL lets it sit beside the call store's).

The outbox's events reach a subscription in two steps, each one transaction: the fan-out
copies every event after the fan-out cursor into the queue of each enabled subscription it
matches and moves the cursor past them; then each queued delivery is attempted until it is
delivered or given up. A node killed at any moment loses nothing: an event is either behind
the cursor and queued, or ahead of it and fanned out again; an attempt whose answer was not
recorded is made again (at least once: receivers dedupe on the event id).

Order: deliveries of one subscription with the same `order_key` (the event's MQTT topic: one
per call, per trunk, per campaign, one for the node's own events) go one at a time, in the
order they were stored; only the first pending one of a key is ever due.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from gateway.db import Tables
from gateway.events.outbox import OutboxRow
from gateway.events.schema import iso_z, utc_now
from gateway.webhooks.model import DeliveryStatus, RetryPolicy, after_attempt, matches

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,                 -- config | api
    url TEXT NOT NULL,
    events TEXT NOT NULL,                 -- JSON list of types and patterns
    secret TEXT,                          -- API subscriptions only: the config's stay in it
    description TEXT,
    enabled INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    disabled_reason TEXT,
    disabled_at TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    event_rowid INTEGER NOT NULL          -- the last outbox event fanned out
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    order_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,        -- epoch seconds
    status_code INTEGER,
    latency_ms INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT,
    test INTEGER NOT NULL DEFAULT 0,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_pending
    ON webhook_deliveries(webhook_id, order_key, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_log ON webhook_deliveries(webhook_id, id);
"""


@dataclass(frozen=True)
class Subscription:
    id: str
    source: str  # "config" | "api"
    url: str
    events: list[str]
    enabled: bool
    consecutive_failures: int
    created_at: datetime
    description: str | None = None
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    secret: str = field(default="", repr=False)


@dataclass(frozen=True)
class ConfiguredWebhook:
    """A subscription as the config file gives it (gateway.config.Webhook, secret expanded)."""

    id: str
    url: str
    events: list[str]
    enabled: bool
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Delivery:
    id: int
    webhook_id: str
    event_id: str
    event_type: str
    order_key: str
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float
    status_code: int | None
    latency_ms: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    test: bool


@dataclass(frozen=True)
class AttemptResult:
    """What one POST came to: a status code, or an error before any answer."""

    status_code: int | None
    latency_ms: int
    error: str | None = None


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class WebhookStore(Tables):
    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._secrets: dict[str, str] = {}  # config subscriptions' secrets, never stored
        super().__init__(path, _SCHEMA)

    # -- subscriptions --------------------------------------------------------------------

    def sync_config(self, configured: Sequence[ConfiguredWebhook]) -> list[str]:
        """Make the config's subscriptions the `config` ones: new ones added, changed ones
        updated (a disabled one stays disabled unless the config says enabled: false, which
        disables it), removed ones deleted with their queues. Returns the ids removed."""
        now = iso_z(utc_now())
        with self._tx() as db:
            known = {r["id"] for r in db.execute("SELECT id FROM webhooks WHERE source='config'")}
            wanted = {w.id for w in configured}
            for w in configured:
                events = json.dumps(w.events)
                db.execute(
                    "INSERT INTO webhooks (id, source, url, events, enabled, created_at) "
                    "VALUES (?, 'config', ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                    "source='config', url=excluded.url, events=excluded.events, secret=NULL, "
                    "enabled=CASE WHEN excluded.enabled THEN webhooks.enabled ELSE 0 END",
                    (w.id, w.url, events, int(w.enabled), now),
                )
            removed = sorted(known - wanted)
            for webhook_id in removed:
                db.execute("DELETE FROM webhooks WHERE id=?", (webhook_id,))
            self._secrets = {w.id: w.secret for w in configured}
        return removed

    def create(
        self, webhook_id: str, url: str, events: list[str], secret: str,
        description: str | None = None, enabled: bool = True,
    ) -> Subscription:  # fmt: skip
        with self._tx() as db:
            db.execute(
                "INSERT INTO webhooks (id, source, url, events, secret, description, enabled, "
                "created_at) VALUES (?, 'api', ?, ?, ?, ?, ?, ?)",
                (webhook_id, url, json.dumps(events), secret, description, int(enabled),
                 iso_z(utc_now())),
            )  # fmt: skip
        found = self.get(webhook_id)
        assert found is not None
        return found

    def get(self, webhook_id: str) -> Subscription | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM webhooks WHERE id=?", (webhook_id,)).fetchone()
        return None if row is None else self._subscription(row)

    def subscriptions(self, enabled: bool | None = None) -> list[Subscription]:
        where = "" if enabled is None else f"WHERE enabled={int(enabled)}"
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM webhooks {where} ORDER BY created_at, id")
            return [self._subscription(r) for r in rows.fetchall()]

    def delete(self, webhook_id: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM webhooks WHERE id=?", (webhook_id,)).rowcount > 0

    def set_enabled(self, webhook_id: str, enabled: bool, reason: str | None = None) -> bool:
        """Enable (the run of failures starts again, pending deliveries are due now) or
        disable; True if the subscription changed."""
        with self._tx() as db:
            if enabled:
                changed = db.execute(
                    "UPDATE webhooks SET enabled=1, consecutive_failures=0, disabled_reason=NULL,"
                    " disabled_at=NULL WHERE id=? AND enabled=0", (webhook_id,)
                ).rowcount  # fmt: skip
                db.execute(
                    "UPDATE webhook_deliveries SET next_attempt_at=? "
                    "WHERE webhook_id=? AND status='pending'",
                    (self._clock(), webhook_id),
                )
            else:
                changed = db.execute(
                    "UPDATE webhooks SET enabled=0, disabled_reason=?, disabled_at=? "
                    "WHERE id=? AND enabled=1", (reason, iso_z(utc_now()), webhook_id)
                ).rowcount  # fmt: skip
        return changed > 0

    def _subscription(self, row: sqlite3.Row) -> Subscription:
        secret = row["secret"] if row["source"] == "api" else self._secrets.get(row["id"], "")
        return Subscription(
            id=row["id"],
            source=row["source"],
            url=row["url"],
            events=json.loads(row["events"]),
            enabled=bool(row["enabled"]),
            consecutive_failures=int(row["consecutive_failures"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            description=row["description"],
            disabled_reason=row["disabled_reason"],
            disabled_at=_time(row["disabled_at"]),
            secret=secret or "",
        )

    # -- the fan-out from the outbox --------------------------------------------------------

    def cursor(self, start: Callable[[], int]) -> int:
        """The last outbox rowid fanned out; the first time, `start()` (the outbox's last
        event: a subscription takes the events stored after it exists)."""
        with self._tx() as db:
            row = db.execute("SELECT event_rowid FROM webhook_cursor WHERE id=1").fetchone()
            if row is not None:
                return int(row[0])
            first = start()
            db.execute("INSERT INTO webhook_cursor (id, event_rowid) VALUES (1, ?)", (first,))
            return first

    def rewind(self, rowid: int) -> None:
        """The outbox's rowids went back (its events were deleted): follow them."""
        with self._tx() as db:
            db.execute("UPDATE webhook_cursor SET event_rowid=? WHERE id=1", (rowid,))

    def fan_out(self, rows: Sequence[OutboxRow], skip: Callable[[str, OutboxRow], bool]) -> int:
        """Queue each row for every enabled subscription it matches (unless `skip(id, row)`)
        and move the cursor past the rows, in one transaction; returns deliveries queued."""
        if not rows:
            return 0
        now = self._clock()
        created = iso_z(utc_now())
        queued = 0
        with self._tx() as db:
            enabled = db.execute("SELECT id, events FROM webhooks WHERE enabled=1").fetchall()
            subs = [(r["id"], json.loads(r["events"])) for r in enabled]
            for row in rows:
                for webhook_id, patterns in subs:
                    if not matches(patterns, row.type) or skip(webhook_id, row):
                        continue
                    queued += db.execute(
                        "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_id, "
                        "event_type, order_key, payload, status, next_attempt_at, created_at) "
                        "VALUES (?,?,?,?,?,'pending',?,?)",
                        (webhook_id, row.id, row.type, row.topic, row.payload, now, created),
                    ).rowcount  # fmt: skip
            db.execute("UPDATE webhook_cursor SET event_rowid=? WHERE id=1", (rows[-1].rowid,))
        return queued

    # -- deliveries ---------------------------------------------------------------------------

    def due(self, webhook_id: str, limit: int, busy: Collection[str] = ()) -> list[Delivery]:
        """Deliveries to attempt now: the first pending one of each order key whose time has
        come, oldest first, but none of the keys in `busy` (an attempt is in flight)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.* FROM webhook_deliveries d WHERE d.webhook_id=? AND "
                "d.status='pending' AND d.next_attempt_at<=? AND NOT EXISTS (SELECT 1 FROM "
                "webhook_deliveries e WHERE e.webhook_id=d.webhook_id AND e.order_key="
                "d.order_key AND e.status='pending' AND e.id<d.id) ORDER BY d.id LIMIT ?",
                (webhook_id, self._clock(), limit + len(busy)),
            ).fetchall()
        found = [self._delivery(r) for r in rows]
        return [d for d in found if d.order_key not in busy][:limit]

    def next_due_at(self, after: float) -> float | None:
        """When the next delivery of an enabled subscription falls due after `after`: the
        first pending one of an order key (those behind it wait for it, not for a time)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d JOIN webhooks w ON "
                "w.id=d.webhook_id WHERE d.status='pending' AND w.enabled=1 AND "
                "d.next_attempt_at>? AND NOT EXISTS (SELECT 1 FROM webhook_deliveries e WHERE "
                "e.webhook_id=d.webhook_id AND e.order_key=d.order_key AND e.status='pending' "
                "AND e.id<d.id)",
                (after,),
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def record_attempt(
        self, delivery: Delivery, result: AttemptResult, policy: RetryPolicy, max_failures: int
    ) -> tuple[DeliveryStatus, bool]:
        """The attempt's answer, and what follows (delivered, retried later, given up), with
        the subscription's run of failures, in one transaction. Returns the delivery's status
        and True if this failure disabled the subscription."""
        ok = 200 <= (result.status_code or 0) < 300
        with self._tx() as db:
            sub = db.execute(
                "SELECT consecutive_failures, enabled FROM webhooks WHERE id=?",
                (delivery.webhook_id,),
            ).fetchone()
            if sub is None:  # deleted while the attempt was in flight
                return DeliveryStatus.FAILED, False
            attempts = delivery.attempts + 1
            decision = after_attempt(
                ok=ok, attempts=attempts, consecutive_failures=int(sub[0]),
                max_failures=max_failures, policy=policy, now=self._clock(),
            )  # fmt: skip
            db.execute(
                "UPDATE webhook_deliveries SET status=?, attempts=?, next_attempt_at=?, "
                "status_code=?, latency_ms=?, last_error=?, delivered_at=? WHERE id=?",
                (decision.status.value, attempts,
                 decision.next_attempt_at or delivery.next_attempt_at, result.status_code,
                 result.latency_ms, result.error,
                 iso_z(utc_now()) if ok else None, delivery.id),
            )  # fmt: skip
            db.execute(
                "UPDATE webhooks SET consecutive_failures=? WHERE id=?",
                (decision.consecutive_failures, delivery.webhook_id),
            )
            disabled = False
            if decision.disable and sub[1]:
                reason = f"{decision.consecutive_failures} consecutive failed deliveries"
                db.execute(
                    "UPDATE webhooks SET enabled=0, disabled_reason=?, disabled_at=? WHERE id=?",
                    (reason, iso_z(utc_now()), delivery.webhook_id),
                )
                disabled = True
        return decision.status, disabled

    def log_test(self, webhook_id: str, event_id: str, payload: str, result: AttemptResult) -> int:
        """A webhook.test delivery, attempted once at once: logged, never queued."""
        ok = 200 <= (result.status_code or 0) < 300
        status = DeliveryStatus.DELIVERED if ok else DeliveryStatus.FAILED
        now = iso_z(utc_now())
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, order_key, "
                "payload, status, attempts, next_attempt_at, status_code, latency_ms, "
                "last_error, created_at, delivered_at, test) "
                "VALUES (?,?,'webhook.test','test',?,?,1,?,?,?,?,?,?,1)",
                (webhook_id, event_id, payload, status.value, self._clock(),
                 result.status_code, result.latency_ms, result.error, now, now if ok else None),
            )  # fmt: skip
            return int(cur.lastrowid or 0)

    def deliveries(
        self, webhook_id: str, status: str | None, offset: int, limit: int
    ) -> tuple[list[Delivery], int]:
        """The delivery log, newest first."""
        where, args = "webhook_id=?", [webhook_id]
        if status is not None:
            where += " AND status=?"
            args.append(status)
        with self._lock:
            total = self._db.execute(
                f"SELECT count(*) FROM webhook_deliveries WHERE {where}", args
            ).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM webhook_deliveries WHERE {where} ORDER BY id DESC LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [self._delivery(r) for r in rows], int(total)

    def pending(self, webhook_id: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM webhook_deliveries WHERE webhook_id=? AND status='pending'",
                (webhook_id,),
            ).fetchone()
        return int(row[0])

    def prune(self, before: datetime) -> int:
        """Delete delivered and failed deliveries logged before `before`."""
        with self._tx() as db:
            return db.execute(
                "DELETE FROM webhook_deliveries WHERE status!='pending' AND created_at<?",
                (iso_z(before),),
            ).rowcount

    @staticmethod
    def _delivery(row: sqlite3.Row) -> Delivery:
        return Delivery(
            id=int(row["id"]),
            webhook_id=row["webhook_id"],
            event_id=row["event_id"],
            event_type=row["event_type"],
            order_key=row["order_key"],
            payload=row["payload"],
            status=DeliveryStatus(row["status"]),
            attempts=int(row["attempts"]),
            next_attempt_at=float(row["next_attempt_at"]),
            status_code=row["status_code"],
            latency_ms=row["latency_ms"],
            last_error=row["last_error"],
            created_at=datetime.fromisoformat(row["created_at"]),
            delivered_at=_time(row["delivered_at"]),
            test=bool(row["test"]),
        )
