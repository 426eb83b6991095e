"""Campaigns, their contacts and every attempt, durable in the node's SQLite file (its own
connection, its own tables; WAL lets it sit beside the call store's).

The rule that makes a restart safe: an attempt is written, with the id its call will have,
before the call is placed, in the same transaction that takes the contact. A node killed at
any moment leaves either no attempt (nothing was dialled) or an attempt whose call id tells,
through the call log, what became of it; an attempt is never placed twice.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.campaigns.model import (
    CampaignSpec,
    CampaignStatus,
    ContactIn,
    ContactStatus,
    Outcome,
)
from gateway.db import Tables
from gateway.events.schema import iso_z, utc_now

_SCHEMA = """
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT
);
CREATE TABLE IF NOT EXISTS campaign_contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id TEXT NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    to_number TEXT NOT NULL,
    variables TEXT NOT NULL DEFAULT '{}',
    timezone TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    result TEXT,
    UNIQUE (campaign_id, to_number)
);
CREATE INDEX IF NOT EXISTS campaign_contacts_due
    ON campaign_contacts(campaign_id, status, next_attempt_at);
CREATE TABLE IF NOT EXISTS campaign_attempts (
    contact_id INTEGER NOT NULL REFERENCES campaign_contacts(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    call_id TEXT NOT NULL UNIQUE,
    started_at TEXT NOT NULL,
    outcome TEXT,
    ended_at TEXT,
    PRIMARY KEY (contact_id, attempt)
);
CREATE INDEX IF NOT EXISTS campaign_attempts_open
    ON campaign_attempts(campaign_id) WHERE outcome IS NULL;
"""


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str
    spec: CampaignSpec
    status: CampaignStatus
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None


@dataclass(frozen=True)
class Contact:
    id: int
    campaign_id: str
    to: str
    variables: dict[str, str]
    timezone: str | None
    status: ContactStatus
    attempts: int
    next_attempt_at: datetime | None
    result: str | None


@dataclass(frozen=True)
class Attempt:
    contact_id: int
    attempt: int
    campaign_id: str
    call_id: str
    started_at: datetime


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


class CampaignStore(Tables):
    def __init__(self, path: str) -> None:
        super().__init__(path, _SCHEMA)

    # -- campaigns ------------------------------------------------------------------------

    def create(self, campaign_id: str, spec: CampaignSpec) -> Campaign:
        now = iso_z(utc_now())
        body = spec.model_dump_json(exclude={"contacts"}, by_alias=True)
        with self._tx() as db:
            db.execute(
                "INSERT INTO campaigns (id, name, spec, status, created_at) VALUES (?,?,?,?,?)",
                (campaign_id, spec.name, body, CampaignStatus.DRAFT.value, now),
            )
            self._add_contacts(db, campaign_id, spec.contacts)
        campaign = self.get(campaign_id)
        assert campaign is not None
        return campaign

    def get(self, campaign_id: str) -> Campaign | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM campaigns WHERE id=?", (campaign_id,)).fetchone()
        return None if row is None else self._campaign(row)

    def campaigns(self, status: str | None = None) -> list[Campaign]:
        query, args = "SELECT * FROM campaigns", tuple[str, ...]()
        if status is not None:
            query, args = query + " WHERE status=?", (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, id", args).fetchall()
        return [self._campaign(row) for row in rows]

    def set_status(self, campaign_id: str, status: CampaignStatus) -> None:
        now = iso_z(utc_now())
        with self._tx() as db:
            db.execute("UPDATE campaigns SET status=? WHERE id=?", (status.value, campaign_id))
            if status is CampaignStatus.RUNNING:
                db.execute("UPDATE campaigns SET started_at=coalesce(started_at, ?) WHERE id=?",
                           (now, campaign_id))  # fmt: skip
            if status in (CampaignStatus.COMPLETED, CampaignStatus.STOPPED):
                db.execute("UPDATE campaigns SET ended_at=? WHERE id=?", (now, campaign_id))

    def delete(self, campaign_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM campaigns WHERE id=?", (campaign_id,))

    @staticmethod
    def _campaign(row: sqlite3.Row) -> Campaign:
        return Campaign(
            id=row["id"],
            name=row["name"],
            spec=CampaignSpec.model_validate_json(row["spec"]),
            status=CampaignStatus(row["status"]),
            created_at=datetime.fromisoformat(row["created_at"]),
            started_at=_time(row["started_at"]),
            ended_at=_time(row["ended_at"]),
        )

    # -- contacts -------------------------------------------------------------------------

    def add_contacts(self, campaign_id: str, contacts: list[ContactIn]) -> int:
        with self._tx() as db:
            return self._add_contacts(db, campaign_id, contacts)

    @staticmethod
    def _add_contacts(db: sqlite3.Connection, campaign_id: str, contacts: list[ContactIn]) -> int:
        db.executemany(
            "INSERT INTO campaign_contacts (campaign_id, to_number, variables, timezone, status) "
            "VALUES (?,?,?,?,?)",
            [
                (
                    campaign_id,
                    c.to,
                    json.dumps(c.variables),
                    c.timezone,
                    ContactStatus.PENDING.value,
                )
                for c in contacts
            ],
        )
        return len(contacts)

    def numbers(self, campaign_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT to_number FROM campaign_contacts WHERE campaign_id=?", (campaign_id,)
            ).fetchall()
        return {row[0] for row in rows}

    def contacts(
        self, campaign_id: str, status: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[list[Contact], int]:
        where, args = "campaign_id=?", [campaign_id]
        if status is not None:
            where += " AND status=?"
            args.append(status)
        with self._lock:
            total = self._db.execute(
                f"SELECT count(*) FROM campaign_contacts WHERE {where}", args
            ).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM campaign_contacts WHERE {where} ORDER BY id LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [self._contact(row) for row in rows], int(total)

    def due(self, campaign_id: str, now: datetime, limit: int) -> list[Contact]:
        """Pending contacts whose next attempt is due, in the order they were added."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM campaign_contacts WHERE campaign_id=? AND status=? AND "
                "(next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT ?",
                (campaign_id, ContactStatus.PENDING.value, iso_z(now), limit),
            ).fetchall()
        return [self._contact(row) for row in rows]

    def remaining(self, campaign_id: str) -> int:
        """Contacts not done yet."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM campaign_contacts WHERE campaign_id=? AND status!=?",
                (campaign_id, ContactStatus.DONE.value),
            ).fetchone()
        return int(row[0])

    @staticmethod
    def _contact(row: sqlite3.Row) -> Contact:
        return Contact(
            id=row["id"],
            campaign_id=row["campaign_id"],
            to=row["to_number"],
            variables=json.loads(row["variables"]),
            timezone=row["timezone"],
            status=ContactStatus(row["status"]),
            attempts=row["attempts"],
            next_attempt_at=_time(row["next_attempt_at"]),
            result=row["result"],
        )

    # -- attempts -------------------------------------------------------------------------

    def begin_attempt(self, contact: Contact, call_id: str) -> Attempt | None:
        """Take the contact for its next attempt, recording the call id before the call is
        placed; None if it was taken already (it is no longer pending)."""
        now = utc_now()
        with self._tx() as db:
            taken = db.execute(
                "UPDATE campaign_contacts SET status=?, attempts=attempts+1 "
                "WHERE id=? AND status=? AND attempts=?",
                (ContactStatus.IN_PROGRESS.value, contact.id, ContactStatus.PENDING.value,
                 contact.attempts),
            ).rowcount  # fmt: skip
            if not taken:
                return None
            db.execute(
                "INSERT INTO campaign_attempts (contact_id, attempt, campaign_id, call_id, "
                "started_at) VALUES (?,?,?,?,?)",
                (contact.id, contact.attempts + 1, contact.campaign_id, call_id, iso_z(now)),
            )
        return Attempt(contact.id, contact.attempts + 1, contact.campaign_id, call_id, now)

    def undo_attempt(self, attempt: Attempt, retry_at: datetime) -> None:
        """The call was refused before anything was sent (no capacity): as if never taken."""
        with self._tx() as db:
            db.execute("DELETE FROM campaign_attempts WHERE contact_id=? AND attempt=?",
                       (attempt.contact_id, attempt.attempt))  # fmt: skip
            db.execute(
                "UPDATE campaign_contacts SET status=?, attempts=attempts-1, next_attempt_at=? "
                "WHERE id=?",
                (ContactStatus.PENDING.value, iso_z(retry_at), attempt.contact_id),
            )

    def open_attempts(self, campaign_id: str | None = None) -> list[Attempt]:
        query = "SELECT * FROM campaign_attempts WHERE outcome IS NULL"
        args: tuple[str, ...] = ()
        if campaign_id is not None:
            query, args = query + " AND campaign_id=?", (campaign_id,)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [
            Attempt(
                r["contact_id"],
                r["attempt"],
                r["campaign_id"],
                r["call_id"],
                datetime.fromisoformat(r["started_at"]),
            )  # fmt: skip
            for r in rows
        ]

    def end_attempt(self, attempt: Attempt, outcome: Outcome, retry_at: datetime | None) -> None:
        """The attempt's outcome; its contact waits for `retry_at`, or is done."""
        now = iso_z(utc_now())
        with self._tx() as db:
            db.execute(
                "UPDATE campaign_attempts SET outcome=?, ended_at=? WHERE contact_id=? AND "
                "attempt=?",
                (outcome.value, now, attempt.contact_id, attempt.attempt),
            )
            if retry_at is None:
                db.execute(
                    "UPDATE campaign_contacts SET status=?, result=? WHERE id=?",
                    (ContactStatus.DONE.value, outcome.value, attempt.contact_id),
                )
            else:
                db.execute(
                    "UPDATE campaign_contacts SET status=?, result=?, next_attempt_at=? "
                    "WHERE id=?",
                    (ContactStatus.PENDING.value, outcome.value, iso_z(retry_at),
                     attempt.contact_id),
                )  # fmt: skip

    def attempts_of(self, contact_id: int) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT attempt, call_id, started_at, outcome, ended_at FROM campaign_attempts "
                "WHERE contact_id=? ORDER BY attempt",
                (contact_id,),
            ).fetchall()
        return [dict(row) for row in rows]

    # -- stats ----------------------------------------------------------------------------

    def stats(self, campaign_id: str) -> dict[str, Any]:
        """Counts over the campaign's contacts and attempts, and, through the call log (the
        calls table in the same file), answer and duration figures."""
        with self._lock:
            contacts = dict(self._db.execute(
                "SELECT status, count(*) FROM campaign_contacts WHERE campaign_id=? "
                "GROUP BY status", (campaign_id,)).fetchall())  # fmt: skip
            outcomes = dict(self._db.execute(
                "SELECT coalesce(outcome, 'in_progress'), count(*) FROM campaign_attempts "
                "WHERE campaign_id=? GROUP BY outcome", (campaign_id,)).fetchall())  # fmt: skip
            calls = self._db.execute(
                "SELECT avg(c.duration), avg((julianday(c.answered_at) - julianday(c.created_at))"
                " * 86400.0) FROM campaign_attempts a JOIN calls c ON c.id = a.call_id "
                "WHERE a.campaign_id=? AND c.answered_at IS NOT NULL",
                (campaign_id,),
            ).fetchone()
        attempted = sum(outcomes.values())
        answered = sum(outcomes.get(o, 0) for o in ("answered", "human", "machine"))
        return {
            "contacts": {
                "total": sum(contacts.values()),
                "pending": contacts.get("pending", 0),
                "in_progress": contacts.get("in_progress", 0),
                "done": contacts.get("done", 0),
            },
            "calls": {
                "attempted": attempted,
                "in_progress": outcomes.get("in_progress", 0),
                "answered": answered,
                "human": outcomes.get("human", 0),
                "machine": outcomes.get("machine", 0),
                "busy": outcomes.get("busy", 0),
                "no_answer": outcomes.get("no_answer", 0),
                "unreachable": outcomes.get("unreachable", 0),
                "failed": outcomes.get("failed", 0) + outcomes.get("not_dialed", 0),
            },
            "answer_rate": round(answered / attempted, 4) if attempted else None,
            "average_duration": None if calls[0] is None else round(calls[0], 3),
            "average_time_to_answer": None if calls[1] is None else round(calls[1], 3),
        }
