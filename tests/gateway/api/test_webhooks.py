"""/v1/webhooks on the real operations and store (an in-memory receiver): the secret shown
once, URLs without credentials, test events and the delivery log, enabling and disabling."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api import create_app
from gateway.webhooks.model import verify
from gateway.webhooks.store import ConfiguredWebhook
from tests.gateway.api.test_app import AUTH, Clock, FakeNode, TestClient


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path)
    yield fake
    fake.store.close()


@pytest.fixture
def client(node: FakeNode) -> Iterator[TestClient]:
    with TestClient(create_app(node, node.config.api, clock=Clock())) as c:  # type: ignore[arg-type]
        yield c


def _create(client: TestClient, **body: Any) -> dict[str, Any]:
    res = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", **body},
                      headers=AUTH)  # fmt: skip
    assert res.status_code == 201, res.text
    data: dict[str, Any] = res.json()["data"]
    return data


def test_a_generated_secret_is_shown_once_and_a_given_one_never(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    made = _create(client, events=["call.*", "call.completed", "call.*"])
    secret = made["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    assert made["events"] == ["call.*", "call.completed"] and made["enabled"] is True
    assert made["source"] == "api" and made["id"].startswith("whk_")
    one = client.get(f"/v1/webhooks/{made['id']}", headers=AUTH).json()["data"]
    listed = client.get("/v1/webhooks", headers=AUTH).json()
    assert one.get("secret") is None and listed["meta"]["total"] == 1
    assert secret not in json.dumps(listed) and secret not in caplog.text
    given = _create(client, secret="my-own-secret-0123456789")
    assert given.get("secret") is None
    assert "my-own-secret-0123456789" not in caplog.text


def test_urls_are_shown_without_credentials_or_query(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    made = _create(client, url="https://user:pa55word@cp.example.com:8443/h?token=tok3n")
    assert made["url"] == "https://cp.example.com:8443/h"
    assert "pa55word" not in caplog.text and "tok3n" not in caplog.text


def test_the_test_event_is_signed_sent_at_once_and_logged(
    client: TestClient, node: FakeNode
) -> None:
    ok = _create(client, secret="my-own-secret-0123456789")
    res = client.post(f"/v1/webhooks/{ok['id']}/test", headers=AUTH)
    assert res.status_code == 200, res.text
    result = res.json()["data"]
    assert (result["delivered"], result["status_code"], result["error"]) == (True, 204, None)
    request = node.received[-1]
    body = json.loads(request.content)
    assert body["type"] == "webhook.test" and body["data"]["webhook_id"] == ok["id"]
    assert body["id"] == result["event_id"] == request.headers["x-sipedge-event-id"]
    signed = request.headers["x-sipedge-signature"]
    assert verify("my-own-secret-0123456789", signed, request.content, now=time.time())
    failing = _create(client, url="http://127.0.0.1:9/fail")
    bad = client.post(f"/v1/webhooks/{failing['id']}/test", headers=AUTH).json()["data"]
    assert (bad["delivered"], bad["status_code"], bad["error"]) == (False, 500, "HTTP 500")
    log = client.get(f"/v1/webhooks/{failing['id']}/deliveries", headers=AUTH).json()
    assert log["meta"] == {"total": 1, "page": 1, "per_page": 20, "skip": 0, "limit": 20}
    entry = log["data"][0]
    assert (entry["event_type"], entry["status"], entry["attempts"], entry["test"]) == (
        "webhook.test", "failed", 1, True)  # fmt: skip
    assert entry["status_code"] == 500 and entry["latency_ms"] >= 0
    delivered = client.get(f"/v1/webhooks/{failing['id']}/deliveries?status=delivered",
                           headers=AUTH).json()  # fmt: skip
    assert delivered["meta"]["total"] == 0


def test_patch_disables_and_re_enables_and_config_webhooks_cannot_be_deleted(
    client: TestClient, node: FakeNode
) -> None:
    made = _create(client)
    url = f"/v1/webhooks/{made['id']}"
    off = client.patch(url, json={"enabled": False}, headers=AUTH).json()["data"]
    assert off["enabled"] is False and off["disabled_reason"] == "disabled by request"
    on = client.patch(url, json={"enabled": True}, headers=AUTH).json()["data"]
    assert on["enabled"] is True and on["disabled_reason"] is None
    node.webhook_store.sync_config([ConfiguredWebhook("cp", "http://h/x", ["*"], True, "s" * 16)])
    refused = client.delete("/v1/webhooks/cp", headers=AUTH)
    assert refused.status_code == 409 and "config file" in refused.json()["error"]["message"]
    assert client.delete(url, headers=AUTH).json()["data"] == {"id": made["id"], "deleted": True}
    assert client.get(url, headers=AUTH).status_code == 404


def test_bad_requests_name_the_field(client: TestClient) -> None:
    res = client.post("/v1/webhooks", json={"url": "ftp://x/h"}, headers=AUTH)
    assert res.status_code == 422
    detail = res.json()["error"]["details"][0]
    assert detail["field"] == "url" and "http:// or https://" in detail["message"]
    res = client.post("/v1/webhooks", json={"url": "http://x/h", "events": ["call.complete"]},
                      headers=AUTH)  # fmt: skip
    assert res.status_code == 422 and "matches no event type" in res.text


async def test_the_mqtt_commands_are_the_same_operations(node: FakeNode) -> None:
    made = await node.command("webhook.create", {"url": "http://127.0.0.1:9/h"})
    assert "secret" in made
    got = await node.command("webhook.get", {"webhook_id": made["id"]})
    assert got["id"] == made["id"] and "secret" not in got
    assert (await node.command("webhook.list", {}))["meta"]["total"] == 1
    assert (await node.command("webhook.disable", {"webhook_id": made["id"]}))["enabled"] is False
    assert (await node.command("webhook.enable", {"webhook_id": made["id"]}))["enabled"] is True
    tested = await node.command("webhook.test", {"webhook_id": made["id"]})
    assert tested["delivered"] is True
    log = await node.command("webhook.deliveries", {"webhook_id": made["id"]})
    assert log["meta"]["total"] == 1
    assert (await node.command("webhook.delete", {"webhook_id": made["id"]}))["deleted"] is True
