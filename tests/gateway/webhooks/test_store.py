"""The webhook tables: the fan-out from the outbox, one delivery at a time per call in the
order stored, the run of failures that disables a subscription, and what survives a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.events.outbox import OutboxRow
from gateway.events.schema import CallDtmf, Event, TrunkRegistered, new_call_id
from gateway.store.sqlite import Store
from gateway.webhooks.model import DeliveryStatus, RetryPolicy
from gateway.webhooks.store import AttemptResult, ConfiguredWebhook, WebhookStore

POLICY = RetryPolicy(backoff_min=1.0, backoff_max=8.0, max_attempts=3)
OK = AttemptResult(204, 5)
DOWN = AttemptResult(None, 3, "ConnectError: refused")


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Store, WebhookStore, Clock]:
    clock = Clock()
    events = Store(str(tmp_path / "node.db"))
    hooks = WebhookStore(str(tmp_path / "node.db"), clock=clock)
    return events, hooks, clock


def _call_events(store: Store, call_id: str, n: int) -> None:
    for digit in "123456789"[:n]:
        store.add_event(Event.of(CallDtmf(digit=digit), node="n", call_id=call_id))


def _fan_out(events: Store, hooks: WebhookStore) -> int:
    cursor = hooks.cursor(events.last_rowid)
    rows = events.events_after(cursor, 500)
    return hooks.fan_out(rows, lambda _w, _r: False)


def test_events_are_queued_for_the_enabled_subscriptions_they_match(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    events, hooks, _ = stores
    hooks.cursor(events.last_rowid)  # the subscriptions exist from here on
    hooks.create("whk_calls", "http://127.0.0.1:1/h", ["call.*"], "s" * 16)
    hooks.create("whk_all", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    hooks.create("whk_off", "http://127.0.0.1:1/h", ["*"], "s" * 16, enabled=False)
    _call_events(events, new_call_id(), 2)
    events.add_event(Event.of(TrunkRegistered(trunk="t", state="registered"), node="n"))
    assert _fan_out(events, hooks) == 2 + 3
    assert hooks.pending("whk_calls") == 2 and hooks.pending("whk_all") == 3
    assert hooks.pending("whk_off") == 0  # a disabled subscription takes no new events
    assert _fan_out(events, hooks) == 0  # the cursor moved past them


def test_the_first_cursor_is_the_outbox_end_and_a_reopen_keeps_it(tmp_path: Path) -> None:
    events = Store(str(tmp_path / "node.db"))
    _call_events(events, new_call_id(), 3)  # before webhooks existed: never sent
    hooks = WebhookStore(str(tmp_path / "node.db"))
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    assert _fan_out(events, hooks) == 0
    call_id = new_call_id()
    _call_events(events, call_id, 2)
    hooks.close()  # killed before the fan-out: the events are still ahead of the cursor
    again = WebhookStore(str(tmp_path / "node.db"))
    assert _fan_out(events, again) == 2
    assert [d.event_type for d in again.due("whk_a", 10)] == ["call.dtmf"]


def test_one_delivery_per_call_at_a_time_in_the_order_stored(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    events, hooks, clock = stores
    hooks.cursor(events.last_rowid)
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    a, b = new_call_id(), new_call_id()
    _call_events(events, a, 3)
    _call_events(events, b, 2)
    _fan_out(events, hooks)
    heads = hooks.due("whk_a", 10)
    assert [d.order_key.split("/")[-2] for d in heads] == [a, b]  # the first of each call
    assert hooks.due("whk_a", 10, busy={heads[0].order_key}) == [heads[1]]
    # A failure holds the call's later events back until its retry is due.
    hooks.record_attempt(heads[0], DOWN, POLICY, max_failures=20)
    assert [d.id for d in hooks.due("whk_a", 10)] == [heads[1].id]
    # The sender sleeps until that retry: the events queued behind it are not due by time.
    retry_at = hooks.next_due_at(after=clock.now)
    assert retry_at is not None and clock.now + 1 <= retry_at <= clock.now + 2
    clock.now += 10
    assert hooks.due("whk_a", 10)[0].id == heads[0].id
    for _ in range(3):  # delivered in turn, each after the one before it
        head = hooks.due("whk_a", 1)[0]
        hooks.record_attempt(head, OK, POLICY, max_failures=20)
    rest = hooks.due("whk_a", 10)
    assert [d.order_key for d in rest] == [heads[1].order_key]  # call a done: b's second


def test_a_delivery_given_up_lets_the_next_event_of_its_call_go(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    events, hooks, clock = stores
    hooks.cursor(events.last_rowid)
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    _call_events(events, new_call_id(), 2)
    _fan_out(events, hooks)
    first = hooks.due("whk_a", 10)[0]
    for _ in range(POLICY.max_attempts):
        clock.now += 100
        head = hooks.due("whk_a", 10)[0]
        assert head.id == first.id
        status, _ = hooks.record_attempt(head, AttemptResult(500, 2, "HTTP 500"), POLICY, 20)
    assert status is DeliveryStatus.FAILED
    log, total = hooks.deliveries("whk_a", "failed", 0, 10)
    assert total == 1 and (log[0].attempts, log[0].status_code, log[0].last_error) == (
        3, 500, "HTTP 500")  # fmt: skip
    assert hooks.due("whk_a", 10)[0].id != first.id


def test_a_run_of_failures_disables_once_and_enabling_starts_again(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    events, hooks, clock = stores
    hooks.cursor(events.last_rowid)
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    for _ in range(3):
        _call_events(events, new_call_id(), 1)
    _fan_out(events, hooks)
    results = [hooks.record_attempt(d, DOWN, POLICY, max_failures=3)
               for d in hooks.due("whk_a", 10)]  # fmt: skip
    assert [disabled for _, disabled in results] == [False, False, True]
    sub = hooks.get("whk_a")
    assert sub is not None and not sub.enabled and sub.consecutive_failures == 3
    assert sub.disabled_reason == "3 consecutive failed deliveries"
    assert hooks.next_due_at(after=0) is None  # nothing is attempted while disabled
    assert hooks.pending("whk_a") == 3  # but nothing queued is dropped
    assert hooks.set_enabled("whk_a", True) and not hooks.set_enabled("whk_a", True)
    sub = hooks.get("whk_a")
    assert sub is not None and sub.enabled and sub.consecutive_failures == 0
    assert len(hooks.due("whk_a", 10)) == 3  # due now, not at their backoff
    assert hooks.next_due_at(after=clock.now - 1) == clock.now


def test_config_subscriptions_keep_their_state_and_their_secret_stays_out_of_the_file(
    tmp_path: Path,
) -> None:
    db = tmp_path / "node.db"
    hooks = WebhookStore(str(db))
    secret = "config-secret-value-123"
    hooks.sync_config([ConfiguredWebhook("cp", "https://cp/h", ["call.*"], True, secret)])
    assert hooks.set_enabled("cp", False, "test")
    hooks.sync_config([ConfiguredWebhook("cp", "https://cp/h2", ["*"], True, secret)])
    sub = hooks.get("cp")
    assert sub is not None and (sub.url, sub.events, sub.enabled) == ("https://cp/h2", ["*"], False)
    assert sub.secret == secret and secret not in repr(sub)
    hooks.close()
    assert secret.encode() not in db.read_bytes()
    assert WebhookStore(str(db)).sync_config([]) == ["cp"]


def test_a_test_delivery_is_logged_and_the_log_pages_newest_first(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    _, hooks, _ = stores
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["*"], "s" * 16)
    for i in range(3):
        hooks.log_test("whk_a", f"evt_{i}", "{}", OK if i else DOWN)
    page, total = hooks.deliveries("whk_a", None, 0, 2)
    assert total == 3 and [d.event_id for d in page] == ["evt_2", "evt_1"]
    assert all(d.test and d.status is DeliveryStatus.DELIVERED for d in page)
    assert hooks.deliveries("whk_a", "failed", 0, 10)[0][0].last_error == DOWN.error
    assert hooks.pending("whk_a") == 0


def test_the_cursor_follows_an_outbox_whose_rowids_went_back(
    stores: tuple[Store, WebhookStore, Clock],
) -> None:
    _, hooks, _ = stores
    hooks.cursor(lambda: 50)
    hooks.rewind(0)
    assert hooks.cursor(lambda: 99) == 0
    row = OutboxRow(1, "evt_x", None, 1, "call.ringing", "t", "{}")
    hooks.create("whk_a", "http://127.0.0.1:1/h", ["call.ringing"], "s" * 16)
    assert hooks.fan_out([row], lambda _w, _r: False) == 1
    assert hooks.cursor(lambda: 99) == 1
