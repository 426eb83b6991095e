"""The event outbox as the publisher sees it: stored events waiting for the broker, and the
three calls the publisher makes on whatever keeps them (store/sqlite.py's Store does), and the
event log as webhooks read it (every stored event in order, delivered to MQTT or not). A
contract, so events/ never imports the store that persists its events."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutboxRow:
    rowid: int
    id: str
    call_id: str | None
    seq: int
    type: str
    topic: str
    payload: str


class Outbox(Protocol):
    def undelivered(self, limit: int) -> list[OutboxRow]:
        """At most `limit` undelivered events, in the order they were stored."""
        ...

    def mark_delivered(self, rowids: Iterable[int]) -> None: ...

    def backlog(self) -> int:
        """How many events are stored and not yet delivered."""
        ...


class EventLog(Protocol):
    def events_after(self, rowid: int, limit: int) -> list[OutboxRow]:
        """At most `limit` stored events after `rowid`, in the order they were stored."""
        ...

    def last_rowid(self) -> int:
        """The rowid of the last stored event (0 for none)."""
        ...
