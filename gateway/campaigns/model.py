"""Outbound campaigns: what a campaign is, and the decisions its runner makes, as pure code
(no I/O, no clock of its own): which contacts are due, whether a calling window is open, what
an ended call means for its contact, and whether the contact is tried again.

A campaign dials its contacts through normal calls (POST /v1/calls, the same events and call
log), paced by `max_concurrent` calls at once and `calls_per_second`; each contact is tried up
to `max_attempts` times, again after `retry_delay` seconds when its call ended with an outcome
listed in `retry_on`; calls are placed only inside the calling window, in the contact's time
zone (or the campaign's).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictStr,
    field_validator,
    model_validator,
)

from gateway.events.commands import (
    AmdRequest,
    ConfigId,
    E164Number,
    JsonInt,
    RingTimeout,
    Variables,
)

MAX_CONTACTS_INLINE = 1000  # in the create request (a 64 KiB body); more by CSV upload
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
RetryOn = Literal["busy", "no_answer", "unreachable", "machine", "failed"]


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    STOPPED = "stopped"


class ContactStatus(enum.StrEnum):
    PENDING = "pending"  # waits for its (next) attempt
    IN_PROGRESS = "in_progress"  # a call is up or being placed
    DONE = "done"  # no more attempts: see its result


class Outcome(enum.StrEnum):
    """What one attempt came to."""

    ANSWERED = "answered"  # a person, or nobody asked (no AMD)
    HUMAN = "human"
    MACHINE = "machine"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    NOT_DIALED = "not_dialed"  # the node died between the attempt and its INVITE


ANSWERED = frozenset({Outcome.ANSWERED, Outcome.HUMAN, Outcome.MACHINE})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone like Europe/London") from None
    return name


TimeZone = Annotated[StrictStr, Field(max_length=64, examples=["America/New_York"])]


class Pacing(_Model):
    max_concurrent: JsonInt = Field(1, ge=1, le=10_000, description="calls up at once, at most")
    calls_per_second: StrictFloat = Field(
        1.0, gt=0, le=1000, description="new calls per second, at most (never in bursts)"
    )


class Retries(_Model):
    max_attempts: JsonInt = Field(1, ge=1, le=20, description="calls per contact, at most")
    retry_delay: StrictFloat = Field(
        300.0, ge=0, le=7 * 86400, description="seconds between attempts"
    )
    retry_on: list[RetryOn] = Field(
        default_factory=lambda: list[RetryOn](["busy", "no_answer", "unreachable"]),
        description="outcomes that are tried again",
    )


def _LOCAL_TIME(schema: dict[str, Any]) -> None:  # noqa: N802 (used as a schema constant)
    """A local time as the API documents it: HH:MM[:SS], no zone (not RFC 3339's full-time)."""
    schema.pop("format", None)
    schema.update(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$", examples=["09:00"])


class Window(_Model):
    """Local times a contact may be called: [start, end) on `days`, in `timezone`."""

    start: time = Field(time(0, 0), description="HH:MM, local", json_schema_extra=_LOCAL_TIME)
    end: time | None = Field(None, description="HH:MM, local (exclusive; default: the end of "
                             "the day)", json_schema_extra=_LOCAL_TIME)  # fmt: skip
    days: list[Day] = Field(default_factory=lambda: list(DAYS))
    timezone: TimeZone = "UTC"

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _zone(value)

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time | None) -> time | None:
        if value is not None and value.tzinfo is not None:
            raise ValueError("give a local time like 09:00 (the window's zone is `timezone`)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:%H:%M}) must be after start ({self.start:%H:%M})")
        if not self.days:
            raise ValueError("days must name at least one day")
        return self


class Amd(AmdRequest):
    """Answering-machine detection on the campaign's answered calls (off unless enabled)."""

    enabled: StrictBool = False


class ContactIn(_Model):
    to: E164Number
    variables: Variables = Field(default_factory=dict)
    timezone: TimeZone | None = Field(None, description="the contact's own (default: window's)")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else _zone(value)


class CampaignSpec(_Model):
    """POST /v1/campaigns (and the campaign.create command)."""

    name: StrictStr = Field(min_length=1, max_length=200)
    agent: ConfigId
    trunks: list[ConfigId] = Field(default_factory=list, max_length=16,
                                   description="dialled in turn (default: the first trunk "
                                   "that may dial each number)")  # fmt: skip
    caller_id: E164Number | None = Field(None, alias="from")
    contacts: list[ContactIn] = Field(default_factory=list, max_length=MAX_CONTACTS_INLINE)
    pacing: Pacing = Field(default_factory=Pacing)
    retries: Retries = Field(default_factory=Retries)
    window: Window = Field(default_factory=Window)
    amd: Amd = Field(default_factory=Amd)
    ring_timeout: RingTimeout | None = None
    variables: Variables = Field(default_factory=dict, description="for every contact's call")


def duplicate_numbers(contacts: list[ContactIn], existing: set[str]) -> list[str]:
    """Numbers given twice, or already in the campaign: the contacts are refused by number."""
    seen = set(existing)
    repeated: list[str] = []
    for contact in contacts:
        if contact.to in seen and contact.to not in repeated:
            repeated.append(contact.to)
        seen.add(contact.to)
    return repeated


# -- decisions -------------------------------------------------------------------------------


def window_open(window: Window, now: datetime, timezone: str | None = None) -> bool:
    """Whether `now` (aware) is inside the window, in `timezone` (a contact's) or the
    window's own."""
    local = now.astimezone(ZoneInfo(timezone or window.timezone))
    clock = local.time()
    before_end = window.end is None or clock < window.end
    return DAYS[local.weekday()] in window.days and window.start <= clock and before_end


def outcome_of(status: str, reason: str | None, amd: str | None = None) -> Outcome:
    """What an ended call (its record's status and end reason, and AMD's result if any)
    means for its contact."""
    if status == "completed":
        if amd == "human":
            return Outcome.HUMAN
        if amd == "machine":
            return Outcome.MACHINE
        return Outcome.ANSWERED
    if reason in ("busy", "no_answer", "unreachable"):
        return Outcome(reason)
    return Outcome.FAILED


def next_attempt(
    retries: Retries, outcome: Outcome, attempts: int, now: datetime
) -> datetime | None:
    """When the contact is tried again, or None when it is done."""
    if outcome in ANSWERED and outcome is not Outcome.MACHINE:
        return None
    name = "failed" if outcome is Outcome.NOT_DIALED else outcome.value
    if name not in retries.retry_on or attempts >= retries.max_attempts:
        return None
    return now + timedelta(seconds=retries.retry_delay)


@dataclass
class Pacer:
    """New calls no faster than `rate` per second, evenly spaced: in any one second there are
    at most `rate` of them (a call at t, the next at t + 1/rate or later; no bursts)."""

    rate: float
    next_at: float = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def take(self, now: float) -> None:
        self.next_at = max(now, self.next_at) + 1.0 / self.rate
