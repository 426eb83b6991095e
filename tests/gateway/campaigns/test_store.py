"""Campaign state in SQLite: an attempt is taken once, recorded before its call, undone only
when nothing was sent, and the stats count what the attempts came to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gateway.campaigns.model import CampaignSpec, CampaignStatus, ContactStatus, Outcome
from gateway.campaigns.store import CampaignStore
from gateway.events.schema import utc_now
from gateway.store.sqlite import Store


@pytest.fixture
def store(tmp_path: Path) -> CampaignStore:
    path = str(tmp_path / "node.db")
    Store(path).close()  # the call log's tables, which stats join
    return CampaignStore(path)


def spec(*numbers: str) -> CampaignSpec:
    return CampaignSpec.model_validate(
        {"name": "november", "agent": "bot", "contacts": [{"to": n} for n in numbers]}
    )


def test_a_contact_is_taken_for_an_attempt_once(store: CampaignStore) -> None:
    store.create("cmp_1", spec("+15550001", "+15550002"))
    (first, second) = store.due("cmp_1", utc_now(), limit=10)
    attempt = store.begin_attempt(first, "call_" + "a" * 24)
    assert attempt is not None and attempt.attempt == 1
    assert store.begin_attempt(first, "call_" + "b" * 24) is None  # taken already
    assert [c.to for c in store.due("cmp_1", utc_now(), limit=10)] == ["+15550002"]
    assert [a.call_id for a in store.open_attempts("cmp_1")] == ["call_" + "a" * 24]


def test_an_undone_attempt_never_happened_and_the_contact_waits(store: CampaignStore) -> None:
    store.create("cmp_1", spec("+15550001"))
    (contact,) = store.due("cmp_1", utc_now(), limit=10)
    attempt = store.begin_attempt(contact, "call_" + "a" * 24)
    assert attempt is not None
    later = utc_now() + timedelta(seconds=30)
    store.undo_attempt(attempt, later)
    assert store.open_attempts() == [] and store.due("cmp_1", utc_now(), limit=10) == []
    (again,) = store.due("cmp_1", later, limit=10)
    assert (again.attempts, again.status) == (0, ContactStatus.PENDING)


def test_ended_attempts_retry_or_finish_the_contact_and_are_counted(store: CampaignStore) -> None:
    store.create("cmp_1", spec("+15550001", "+15550002"))
    busy, answered = store.due("cmp_1", utc_now(), limit=10)
    a1 = store.begin_attempt(busy, "call_" + "1" * 24)
    a2 = store.begin_attempt(answered, "call_" + "2" * 24)
    assert a1 is not None and a2 is not None
    store.end_attempt(a1, Outcome.BUSY, utc_now())  # tried again
    store.end_attempt(a2, Outcome.HUMAN, None)  # done
    (retry,) = store.due("cmp_1", utc_now() + timedelta(seconds=1), limit=10)
    assert (retry.to, retry.attempts, retry.result) == ("+15550001", 1, "busy")
    assert store.remaining("cmp_1") == 1
    stats = store.stats("cmp_1")
    assert stats["contacts"] == {"total": 2, "pending": 1, "in_progress": 0, "done": 1}
    calls = stats["calls"]
    assert (calls["attempted"], calls["answered"], calls["human"], calls["busy"]) == (2, 1, 1, 1)
    assert stats["answer_rate"] == 0.5
    assert [a["outcome"] for a in store.attempts_of(busy.id)] == ["busy"]


def test_campaigns_keep_their_spec_and_status(store: CampaignStore) -> None:
    created = store.create("cmp_1", spec("+15550001"))
    assert created.status is CampaignStatus.DRAFT and created.spec.name == "november"
    store.set_status("cmp_1", CampaignStatus.RUNNING)
    running = store.get("cmp_1")
    assert running is not None and running.started_at is not None
    assert [c.id for c in store.campaigns("running")] == ["cmp_1"]
    store.delete("cmp_1")
    assert store.get("cmp_1") is None and store.contacts("cmp_1")[1] == 0
