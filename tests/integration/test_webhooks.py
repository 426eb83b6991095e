"""Webhooks of a real node to a real HTTP receiver on 127.0.0.1: every call event delivered,
signed, in order per call; nothing lost while the receiver is down or when the node is killed
mid-delivery; a subscription disabled after a run of failures, and enabled again."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.webhooks.model import verify
from tests.integration.hook_receiver import HookReceiver, Received
from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST, Sipp, free_port

pytestmark = pytest.mark.integration

SECRET = "whsec_integration_0123456789"
API_KEY = "sk-webhooks-e2e-0123"
ENV = {"HOOK_SECRET": SECRET, "HOOKS_API_KEY": API_KEY}
CALL_TYPES = ["call.incoming", "call.answered", "call.quality", "call.completed"]


def _config(tmp: Path, receiver: HookReceiver, **overrides: Any) -> dict[str, Any]:
    hook = {"id": "cp", "url": receiver.url, "events": ["call.*"], "secret": "${HOOK_SECRET}"}
    return base_config(tmp, webhooks=[hook], **overrides)


def _calls(node: NodeProcess, tmp: Path, name: str, calls: int = 1) -> None:
    res = Sipp("uac_pcap.xml", remote=(HOST, node.sip_port), service="+15550100", calls=calls,
               rate=10, limit=calls, workdir=tmp / name).run(30)  # fmt: skip
    assert res.successful == calls, res.errors


def _stored(db: Path) -> dict[str, list[str]]:
    """Each call's event ids in the order the node stored them."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT call_id, id FROM events WHERE call_id IS NOT NULL ORDER BY rowid"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for call_id, event_id in rows:
        out.setdefault(call_id, []).append(event_id)
    return out


def _stored_once_completed(receiver: HookReceiver, db: Path, calls: int) -> dict[str, list[str]]:
    """The store's events once the receiver has seen `calls` calls completed: SIPp returns
    when the BYE is answered, a moment before the node stores the call's last event."""
    receiver.wait(
        lambda: sum(e["type"] == "call.completed" for e in receiver.events()) >= calls,
        what=f"{calls} call.completed",
    )
    return _stored(db)


def _all_delivered(receiver: HookReceiver, stored: dict[str, list[str]]) -> bool:
    got = {e["id"] for e in receiver.events()}
    return all(i in got for ids in stored.values() for i in ids)


def _log_when(client: httpx.Client, hook_id: str, done: Any, timeout: float = 10.0) -> Any:
    """The subscription's delivery log once `done(rows)` holds (the node writes an outcome
    just after the receiver answered), or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        rows = client.get(f"/v1/webhooks/{hook_id}/deliveries", params={"per_page": 100})
        entries = rows.json()["data"]
        if done(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.05)  # polling the node's record: there is no event to await


def _check_order_and_signatures(
    received: list[Received], stored: dict[str, list[str]], secret: str = SECRET
) -> None:
    for r in received:
        assert verify(secret, r.headers["X-Sipedge-Signature"], r.body, now=time.time())
        assert r.headers["X-Sipedge-Event-Id"] == r.event["id"]
        assert r.headers["X-Sipedge-Event-Type"] == r.event["type"]
    for call_id, ids in stored.items():
        # First sightings in the order stored; a repeat (at least once) has the same id.
        first: list[str] = []
        for r in received:
            if r.event["call_id"] == call_id and r.event["id"] not in first:
                first.append(r.event["id"])
        assert first == ids, call_id
        types = [r.event["type"] for r in received if r.event["call_id"] == call_id]
        assert list(dict.fromkeys(types)) == CALL_TYPES


def test_call_events_are_delivered_signed_and_in_order_per_call(tmp_path: Path) -> None:
    """To a subscription of the config file and to one made through the API (its generated
    secret shown once), each receiving every call event."""
    api = {"enabled": True, "listen": HOST, "port": free_port("tcp"),
           "api_keys": ["${HOOKS_API_KEY}"]}  # fmt: skip
    with HookReceiver() as receiver, HookReceiver() as other:
        config = _config(tmp_path, receiver, api=api)
        with NodeProcess(tmp_path, config, env=ENV) as node, httpx.Client(
            base_url=f"http://{HOST}:{api['port']}", timeout=10,
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as client:  # fmt: skip
            made = client.post("/v1/webhooks", json={"url": other.url, "events": ["call.*"]})
            assert made.status_code == 201, made.text
            generated = made.json()["data"]["secret"]
            _calls(node, tmp_path, "a", calls=3)
            stored = _stored_once_completed(receiver, Path(config["storage"]["path"]), 3)
            assert len(stored) == 3
            receiver.wait(lambda: _all_delivered(receiver, stored), what="every call event")
            other.wait(lambda: _all_delivered(other, stored), what="the API subscription's")
            hook_id = made.json()["data"]["id"]
            # The receiver has every event; the node records each 204 once it reads it.
            entries = _log_when(client, hook_id, lambda rows: len(rows) == 12 and all(
                e["status"] == "delivered" for e in rows))  # fmt: skip
            assert len(entries) == 12 and {e["status"] for e in entries} == {"delivered"}
            assert all(e["status_code"] == 204 and e["attempts"] == 1 for e in entries)
            listed = client.get("/v1/webhooks").text
            node_log = node.log()
        _check_order_and_signatures(receiver.received, stored)
        _check_order_and_signatures(other.received, stored, secret=generated)
        for text in (node_log, listed):
            assert SECRET not in text and generated not in text
        assert "event=webhook_delivered webhook=cp" in node_log


def test_a_receiver_down_then_up_and_a_kill_9_mid_delivery_lose_nothing(tmp_path: Path) -> None:
    receiver = HookReceiver()  # down: connections refused
    config = _config(tmp_path, receiver, webhooks_max_failures=1000)
    db = Path(config["storage"]["path"])
    node = NodeProcess(tmp_path, config, env=ENV).start()
    restarted: NodeProcess | None = None
    try:
        _calls(node, tmp_path, "a", calls=2)
        node.wait_log("event=webhook_delivery_failed webhook=cp", count=2)
        receiver.start()
        stored = _stored_once_completed(receiver, db, 2)
        receiver.wait(lambda: _all_delivered(receiver, stored), what="the outage's events")

        # The receiver takes the next request and holds its answer; the node dies with that
        # delivery in flight, the call's later events still queued behind it.
        receiver.release.clear()
        before = len(receiver.received)
        _calls(node, tmp_path, "b")
        receiver.wait(lambda: len(receiver.received) > before, what="a delivery in flight")
        node.kill()
        receiver.release.set()
        restarted = NodeProcess(tmp_path, config, env=ENV).start()
        stored = _stored_once_completed(receiver, db, 3)
        assert len(stored) == 3
        receiver.wait(lambda: _all_delivered(receiver, stored), what="the rest after restart")
        held = receiver.received[before].event["id"]
        assert [r.event["id"] for r in receiver.received].count(held) >= 2  # sent again
    finally:
        if restarted is not None:
            assert restarted.stop() == 0
        node.kill()
        receiver.stop()
    _check_order_and_signatures(receiver.received, stored)


def test_a_run_of_failures_disables_the_webhook_and_enabling_it_delivers_the_queue(
    tmp_path: Path,
) -> None:
    with HookReceiver() as receiver:
        receiver.status = 500
        config = _config(tmp_path, receiver, webhooks_max_failures=3)
        with NodeProcess(tmp_path, config, env=ENV) as node, MqttWatch(node.mqtt_port) as mq:
            _calls(node, tmp_path, "a")
            disabled = mq.wait_node_event("webhook.disabled", timeout=60)
            assert disabled["data"]["webhook_id"] == "cp"
            assert disabled["data"]["url"] == receiver.url
            assert disabled["data"]["consecutive_failures"] == 3
            assert "event=webhook_disabled webhook=cp" in node.log()
            got = mq.command("webhook.get", {"webhook_id": "cp"})["data"]
            assert (got["enabled"], got["pending_deliveries"]) == (False, 4)
            assert got["disabled_reason"] == "3 consecutive failed deliveries"
            log = mq.command("webhook.deliveries", {"webhook_id": "cp"})["data"]
            tried = [d for d in log["items"] if d["attempts"]]
            assert [(d["event_type"], d["attempts"], d["status_code"]) for d in tried] == [
                ("call.incoming", 3, 500)
            ]  # the later events of the call wait behind it, never attempted
            assert tried[0]["last_error"] == "HTTP 500" and tried[0]["next_attempt_at"]

            receiver.status = 200
            test = mq.command("webhook.test", {"webhook_id": "cp"})["data"]
            assert (test["delivered"], test["status_code"]) == (True, 200)
            assert mq.command("webhook.enable", {"webhook_id": "cp"})["data"]["enabled"]
            stored = _stored(Path(config["storage"]["path"]))
            receiver.wait(lambda: _all_delivered(receiver, stored), what="the queue, enabled")
            # the node records each outcome just after the receiver answered it
            args = {"webhook_id": "cp", "status": "delivered"}
            deadline = time.monotonic() + 10
            while (total := mq.command("webhook.deliveries", args)["data"]["meta"]["total"]) < 5:
                assert time.monotonic() < deadline, total
                time.sleep(0.05)  # polling the node's record: there is no event to await
            assert total == 5  # the call's four and the test
        types = {e["type"] for e in receiver.events()}
        assert "webhook.disabled" not in types  # not a call.* event, and not its own news
