"""The sender against an in-memory receiver (httpx.MockTransport): signed POSTs of the stored
envelope, retries until 2xx, order per call, auto-disable, and test events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.events.schema import CallDtmf, Event, WebhookTest, new_call_id
from gateway.store.sqlite import Store
from gateway.webhooks.model import RetryPolicy, verify
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.store import Subscription, WebhookStore

SECRET = "whsec_unit_test_secret_0001"
FAST = RetryPolicy(backoff_min=0.01, backoff_max=0.05, max_attempts=50, timeout=2.0)


class Receiver:
    """Answers each POST with the next code of `codes` (then 200) and keeps what it got."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.got: list[httpx.Request] = []
        self.changed = asyncio.Event()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.got.append(request)
        self.changed.set()
        return httpx.Response(self.codes.pop(0) if self.codes else 200)

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not done():
                self.changed.clear()
                await self.changed.wait()


def _setup(tmp: Path, receiver: Receiver, max_failures: int = 20,
           disabled: list[str] | None = None) -> tuple[Store, WebhookSender]:  # fmt: skip
    events = Store(str(tmp / "node.db"))
    hooks = WebhookStore(str(tmp / "node.db"))
    hooks.create("whk_a", "http://user:pw@receiver.test/hook?token=t", ["call.*"], SECRET)

    def on_disabled(sub: Subscription, reason: str) -> None:
        (disabled if disabled is not None else []).append(sub.id)

    sender = WebhookSender(hooks, events, max_failures=max_failures, on_disabled=on_disabled,
                           policy=FAST, transport=httpx.MockTransport(receiver))  # fmt: skip
    return events, sender


def _events(store: Store, call_id: str, digits: str) -> list[Event]:
    made = [Event.of(CallDtmf(digit=d), node="n", call_id=call_id) for d in digits]
    return [stored for event in made for stored in store.add_event(event)]


async def test_each_event_is_posted_signed_with_its_envelope_and_headers(tmp_path: Path) -> None:
    receiver = Receiver()
    events, sender = _setup(tmp_path, receiver)
    await sender.start()
    try:
        stored = _events(events, new_call_id(), "12")
        sender.wake()
        await receiver.until(lambda: len(receiver.got) == 2)
    finally:
        await sender.stop()
    for request, event in zip(receiver.got, stored, strict=True):
        body = request.content
        assert json.loads(body) == json.loads(event.to_json())
        assert request.headers["x-sipedge-event-id"] == event.id
        assert request.headers["x-sipedge-event-type"] == "call.dtmf"
        assert request.headers["content-type"] == "application/json"
        assert verify(SECRET, request.headers["x-sipedge-signature"], body, now=time.time())
        assert request.headers["x-sipedge-timestamp"] in request.headers["x-sipedge-signature"]


async def test_failed_posts_are_retried_and_later_events_of_the_call_wait(tmp_path: Path) -> None:
    receiver = Receiver([500, 503])
    events, sender = _setup(tmp_path, receiver)
    await sender.start()
    stored = _events(events, new_call_id(), "123")
    try:
        await receiver.until(lambda: len(receiver.got) == 5)
        log, _ = sender.store.deliveries("whk_a", "delivered", 0, 10)
    finally:
        await sender.stop()
    ids = [r.headers["x-sipedge-event-id"] for r in receiver.got]
    assert ids == [stored[0].id] * 3 + [stored[1].id, stored[2].id]
    assert [r.headers["x-sipedge-attempt"] for r in receiver.got[:3]] == ["1", "2", "3"]
    first = next(d for d in log if d.event_id == stored[0].id)
    assert (first.attempts, first.status_code, first.last_error) == (3, 200, None)


async def test_a_run_of_failures_disables_the_subscription_once(tmp_path: Path) -> None:
    receiver = Receiver([500] * 100)
    disabled: list[str] = []
    events, sender = _setup(tmp_path, receiver, max_failures=4, disabled=disabled)
    await sender.start()
    _events(events, new_call_id(), "1")
    _events(events, new_call_id(), "2")
    sender.wake()
    try:
        await receiver.until(lambda: len(receiver.got) >= 4)
        await receiver.until(lambda: disabled != [])
    finally:
        await sender.stop()
    assert disabled == ["whk_a"] and 4 <= len(receiver.got) <= 5  # one may be in flight
    assert sender.store.pending("whk_a") == 2


async def test_a_test_event_is_sent_at_once_and_an_unreachable_receiver_is_reported(
    tmp_path: Path,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    receiver = Receiver([418])
    events, sender = _setup(tmp_path, receiver)
    sub = sender.store.get("whk_a")
    assert sub is not None
    event = Event.of(WebhookTest(webhook_id="whk_a"), node="n")
    _, result = await sender.send_test(sub, event)
    assert (result.status_code, result.error) == (418, "HTTP 418")
    down = WebhookSender(sender.store, events, max_failures=3, on_disabled=lambda s, r: None,
                         transport=httpx.MockTransport(refuse))  # fmt: skip
    _, result = await down.send_test(sub, Event.of(WebhookTest(webhook_id="whk_a"), node="n"))
    assert result.status_code is None and result.error == "ConnectError: connection refused"
    await down.stop()
    await sender.stop()
    log, total = sender.store.deliveries("whk_a", None, 0, 10)
    assert total == 2 and all(d.test and d.event_type == "webhook.test" for d in log)
