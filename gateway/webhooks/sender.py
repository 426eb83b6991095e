"""The node's webhook sender: fans the outbox's events out into the subscriptions' queues
(gateway/webhooks/store.py) and POSTs each due delivery, signed, with retries.

Callers never wait on a receiver: events are in the store already, and wake() says there are
new ones. A receiver that is down only delays its own subscription's deliveries; a node killed
mid-delivery makes the unanswered attempts again after its restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from functools import partial

import httpx

from gateway import __version__
from gateway.config import public_url
from gateway.events.outbox import EventLog, OutboxRow
from gateway.events.schema import Event, utc_now
from gateway.webhooks.model import (
    SIGNATURE_HEADER,
    DeliveryStatus,
    RetryPolicy,
    signature_header,
)
from gateway.webhooks.store import AttemptResult, Delivery, Subscription, WebhookStore

log = logging.getLogger("sipedge.webhooks")

FAN_OUT_BATCH = 500
MAX_ERROR = 300  # characters of an error kept in the delivery log
LOG_RETENTION = timedelta(days=7)  # delivered and failed deliveries are kept this long
PRUNE_EVERY_S = 3600.0

OnDisabled = Callable[[Subscription, str], None]


def headers_for(sub: Subscription, event_id: str, event_type: str, body: bytes,
                attempt: int, now: float) -> dict[str, str]:  # fmt: skip
    """The headers of one POST; the signature covers the timestamp and the exact body."""
    timestamp = int(now)
    return {
        "Content-Type": "application/json",
        "User-Agent": f"sipedge/{__version__}",
        "X-Sipedge-Event-Id": event_id,
        "X-Sipedge-Event-Type": event_type,
        "X-Sipedge-Webhook-Id": sub.id,
        "X-Sipedge-Timestamp": str(timestamp),
        "X-Sipedge-Attempt": str(attempt),
        SIGNATURE_HEADER: signature_header(sub.secret, timestamp, body),
    }


class WebhookSender:
    def __init__(
        self,
        store: WebhookStore,
        events: EventLog,
        *,
        max_failures: int,
        on_disabled: OnDisabled,
        policy: RetryPolicy | None = None,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self._events = events
        self.max_failures = max_failures
        self._on_disabled = on_disabled
        self.policy = policy or RetryPolicy()
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._cursor: int | None = None
        # webhook id -> {order key: attempt task}: at most one attempt per key in flight
        self._inflight: dict[str, dict[str, asyncio.Task[None]]] = {}
        self._last_prune = 0.0
        self.delivered_total = 0

    async def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            # Now, not in the task: the first time, the events stored from here on are sent.
            self._cursor = self.store.cursor(self._events.last_rowid)
            self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        """End the task and the attempts in flight; those are made again at the next start."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        attempts = [t for keys in self._inflight.values() for t in keys.values()]
        for attempt in attempts:
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
        self._inflight.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """New events are in the store (callable from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    # -- the loop ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            scheduled_at = time.time()
            due: float | None = None
            try:
                more = self._fan_out()
                self._schedule()
                self._prune()
                # What was due is in flight now, or waits for a free slot or for the delivery
                # ahead of it: each attempt that ends wakes this loop. Else sleep until the
                # next retry falls due.
                due = self.store.next_due_at(after=scheduled_at)
            except Exception:  # a bug or a full disk must not end webhooks for good
                log.exception("event=webhook_sender_failed")
                more = False
            if more:
                continue
            wait = self._poll_interval if due is None else due - time.time()
            wait = min(max(wait, 0.01), self._poll_interval)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _fan_out(self) -> bool:
        """Queue the events stored since the last fan-out; True if there may be more."""
        assert self._cursor is not None, "start() reads the cursor"
        rows = self._events.events_after(self._cursor, FAN_OUT_BATCH)
        if not rows:
            last = self._events.last_rowid()
            if last < self._cursor:  # events were deleted and rowids start again
                log.warning("event=webhook_cursor_rewound from=%d to=%d", self._cursor, last)
                self.store.rewind(last)
                self._cursor = last
            return False
        self.store.fan_out(rows, _own_disable_event)
        self._cursor = rows[-1].rowid
        return len(rows) == FAN_OUT_BATCH

    def _schedule(self) -> None:
        for sub in self.store.subscriptions(enabled=True):
            busy = self._inflight.setdefault(sub.id, {})
            room = self._concurrency - len(busy)
            if room <= 0:
                continue
            for delivery in self.store.due(sub.id, room, busy=set(busy)):
                task = asyncio.create_task(self._deliver(sub, delivery))
                busy[delivery.order_key] = task
                task.add_done_callback(partial(self._done, sub.id, delivery.order_key))

    def _done(self, webhook_id: str, key: str, task: asyncio.Task[None]) -> None:
        self._inflight.get(webhook_id, {}).pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            # The attempt's outcome was not recorded (the store refused it): the delivery stays
            # pending and due, tried again at the next poll rather than at once.
            log.error("event=webhook_attempt_failed webhook=%s", webhook_id,
                      exc_info=task.exception())  # fmt: skip
            return
        self._wake.set()

    def _prune(self) -> None:
        if time.monotonic() - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = time.monotonic()
        pruned = self.store.prune(utc_now() - LOG_RETENTION)
        if pruned:
            log.info("event=webhook_log_pruned deliveries=%d", pruned)

    # -- one attempt ----------------------------------------------------------------------

    async def post(self, sub: Subscription, event_id: str, event_type: str, payload: str,
                   attempt: int) -> AttemptResult:  # fmt: skip
        """POST `payload` to the subscription once; never raises for the receiver's faults."""
        if self._client is None:  # a test event before start()
            self._client = httpx.AsyncClient(
                timeout=self.policy.timeout, follow_redirects=False, transport=self._transport
            )
        body = payload.encode()
        headers = headers_for(sub, event_id, event_type, body, attempt, time.time())
        started = time.monotonic()
        try:
            async with self._client.stream("POST", sub.url, content=body,
                                           headers=headers) as response:  # fmt: skip
                code = response.status_code
            error = None if 200 <= code < 300 else f"HTTP {code}"
            return AttemptResult(code, _ms(started), error)
        except httpx.HTTPError as exc:
            return AttemptResult(None, _ms(started), _describe(exc, sub.url))

    async def _deliver(self, sub: Subscription, delivery: Delivery) -> None:
        attempt = delivery.attempts + 1
        result = await self.post(sub, delivery.event_id, delivery.event_type,
                                 delivery.payload, attempt)  # fmt: skip
        status, disabled = self.store.record_attempt(delivery, result, self.policy,
                                                     self.max_failures)  # fmt: skip
        call_id = json.loads(delivery.payload).get("call_id") or "-"
        where = (f"webhook={sub.id} url={public_url(sub.url)} event_id={delivery.event_id} "
                 f"type={delivery.event_type} call_id={call_id} attempt={attempt}")  # fmt: skip
        if status is DeliveryStatus.DELIVERED:
            self.delivered_total += 1
            # One line per event is the delivery log's job (GET .../deliveries); a delivery
            # that needed retries says so at info.
            level = logging.DEBUG if attempt == 1 else logging.INFO
            log.log(level, "event=webhook_delivered %s status_code=%s latency_ms=%d", where,
                    result.status_code, result.latency_ms)  # fmt: skip
        elif status is DeliveryStatus.FAILED:
            log.warning("event=webhook_delivery_given_up %s error=%r", where, result.error)
        else:
            log.warning("event=webhook_delivery_failed %s error=%r", where, result.error)
        if disabled:
            reason = f"{self.max_failures} consecutive failed deliveries"
            log.warning("event=webhook_disabled webhook=%s url=%s reason=%r pending=%d",
                        sub.id, public_url(sub.url), reason,
                        self.store.pending(sub.id))  # fmt: skip
            self._on_disabled(sub, reason)

    async def send_test(self, sub: Subscription, event: Event) -> tuple[int, AttemptResult]:
        """A webhook.test event POSTed now, once, and logged: (delivery id, result)."""
        payload = event.to_json()
        result = await self.post(sub, event.id, event.type, payload, 1)
        delivery_id = self.store.log_test(sub.id, event.id, payload, result)
        log.info("event=webhook_test webhook=%s url=%s status_code=%s latency_ms=%d error=%r",
                 sub.id, public_url(sub.url), result.status_code, result.latency_ms,
                 result.error)  # fmt: skip
        return delivery_id, result


def _own_disable_event(webhook_id: str, row: OutboxRow) -> bool:
    """A subscription is not sent the event that says it was disabled (it would be queued
    for after its re-enabling, news by then)."""
    if row.type != "webhook.disabled":
        return False
    data = json.loads(row.payload).get("data", {})
    return bool(data.get("webhook_id") == webhook_id)


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _describe(exc: httpx.HTTPError, url: str) -> str:
    """The error without the URL's credentials or query (tokens travel there)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    shown = public_url(url) or ""
    return text.replace(url, shown)[:MAX_ERROR]
