"""A campaign's decisions, as pure logic: calling windows, outcomes, retries, pacing, the
create request's validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.campaigns.model import (
    CampaignSpec,
    ContactIn,
    Outcome,
    Pacer,
    Retries,
    Window,
    duplicate_numbers,
    next_attempt,
    outcome_of,
    window_open,
)

MONDAY_NOON_UTC = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # a Monday


def test_window_edges_days_and_a_contacts_own_time_zone() -> None:
    window = Window.model_validate(
        {"start": "09:00", "end": "17:00", "days": ["mon"], "timezone": "America/New_York"}
    )
    ny = timedelta(hours=5)  # EST in November
    assert not window_open(window, MONDAY_NOON_UTC)  # 07:00 in New York
    assert window_open(window, MONDAY_NOON_UTC.replace(hour=9) + ny)  # 09:00 sharp: open
    assert not window_open(window, MONDAY_NOON_UTC.replace(hour=17) + ny)  # 17:00: closed
    assert not window_open(window, MONDAY_NOON_UTC.replace(hour=10) + ny + timedelta(days=1))
    assert window_open(window, MONDAY_NOON_UTC, timezone="Europe/London")  # 12:00 there


@pytest.mark.parametrize(
    ("window", "fragment"),
    [
        ({"start": "17:00", "end": "09:00"}, "must be after start"),
        ({"timezone": "Mars/Olympus"}, "is not an IANA time zone"),
        ({"days": []}, "at least one day"),
        ({"days": ["funday"]}, "'mon'"),
    ],
)
def test_a_bad_window_is_named(window: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Window.model_validate(window)


@pytest.mark.parametrize(
    ("status", "reason", "amd", "outcome"),
    [
        ("completed", "normal", None, Outcome.ANSWERED),
        ("completed", "normal", "human", Outcome.HUMAN),
        ("completed", "normal", "machine", Outcome.MACHINE),
        ("failed", "busy", None, Outcome.BUSY),
        ("failed", "no_answer", None, Outcome.NO_ANSWER),
        ("failed", "unreachable", None, Outcome.UNREACHABLE),
        ("failed", "rejected", None, Outcome.FAILED),
        ("completed", "node_restart", None, Outcome.ANSWERED),
        ("failed", "node_restart", None, Outcome.FAILED),
    ],
)
def test_what_an_ended_call_means_for_its_contact(
    status: str, reason: str, amd: str | None, outcome: Outcome
) -> None:
    assert outcome_of(status, reason, amd) is outcome


def test_retries_follow_retry_on_delay_and_max_attempts() -> None:
    retries = Retries(max_attempts=3, retry_delay=60, retry_on=["busy", "machine"])
    now = MONDAY_NOON_UTC
    assert next_attempt(retries, Outcome.BUSY, 1, now) == now + timedelta(seconds=60)
    assert next_attempt(retries, Outcome.BUSY, 3, now) is None  # the last attempt
    assert next_attempt(retries, Outcome.NO_ANSWER, 1, now) is None  # not in retry_on
    assert next_attempt(retries, Outcome.ANSWERED, 1, now) is None
    assert next_attempt(retries, Outcome.HUMAN, 1, now) is None
    assert next_attempt(retries, Outcome.MACHINE, 1, now) is not None
    assert next_attempt(retries, Outcome.NOT_DIALED, 1, now) is None  # counts as failed
    with_failed = Retries(max_attempts=2, retry_on=["failed"])
    assert next_attempt(with_failed, Outcome.NOT_DIALED, 1, now) is not None


def test_the_pacer_spaces_calls_so_no_second_holds_more_than_the_rate() -> None:
    pacer = Pacer(rate=4.0)
    taken: list[float] = []
    now = 100.0
    while now < 103.0:  # asked every 10 ms for 3 s
        if pacer.ready(now):
            pacer.take(now)
            taken.append(now)
        now = round(now + 0.01, 6)
    assert len(taken) == 12
    assert all(b - a >= 0.25 - 1e-9 for a, b in zip(taken, taken[1:], strict=False))
    for start in taken:  # any one-second window [t, t + 1)
        assert sum(1 for t in taken if start <= t < start + 1) <= 4


def test_duplicates_are_found_in_the_request_and_against_the_campaign() -> None:
    contacts = [ContactIn(to="+15550001"), ContactIn(to="+15550002"), ContactIn(to="+15550001")]
    assert duplicate_numbers(contacts, set()) == ["+15550001"]
    assert duplicate_numbers(contacts[1:2], {"+15550002"}) == ["+15550002"]


def test_a_campaign_needs_e164_contacts_and_names_what_is_wrong() -> None:
    spec = {"name": "x", "agent": "bot", "contacts": [{"to": "555-0100"}]}
    with pytest.raises(ValidationError, match="contacts.0.to"):
        CampaignSpec.model_validate(spec)
    with pytest.raises(ValidationError, match="max_concurrent"):
        CampaignSpec.model_validate({"name": "x", "agent": "bot", "pacing": {"max_concurrent": 0}})


def test_a_window_takes_local_times_only() -> None:
    with pytest.raises(ValidationError, match="local time like 09:00"):
        Window.model_validate({"start": "09:00:00Z", "end": "17:00"})
