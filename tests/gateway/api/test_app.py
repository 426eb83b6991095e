"""The HTTP API through a real HTTP client against the app, with a real Store and Ledger and a
fake SIP worker: every endpoint's success and error paths, auth, rate limit, pagination,
filters, idempotency, recordings with Range, and the OpenAPI document against the responses."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import typing
import warnings
import wave
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import validate

from gateway.api import auth as api_auth
from gateway.api import create_app
from gateway.api.auth import ApiKeys, RateLimiter, bearer_token
from gateway.api.calls import byte_range
from gateway.api.common import MAX_PAGE
from gateway.calls import events as ev
from gateway.campaigns.store import CampaignStore
from gateway.config import Config
from gateway.errors import HTTP_STATUS, CallRefused, ErrorCode, refusal_code
from gateway.events.commands import (
    MAX_REQUEST_BYTES,
    MAX_VARIABLE_NAME,
    MAX_VARIABLE_VALUE,
    MAX_VARIABLES,
    MAX_VARIABLES_BYTES,
)  # fmt: skip
from gateway.events.publisher import BrokerConnection, Publisher
from gateway.events.schema import CommandError
from gateway.front.health import FrontHealth, FrontWorker
from gateway.metrics import NodeMetrics
from gateway.node.campaigns import CampaignOperations, CampaignRunner
from gateway.node.ledger import Ledger
from gateway.node.operations import run_operation
from gateway.node.placement import WorkerPhase, WorkerState
from gateway.node.webhooks import WebhookOperations
from gateway.store.sqlite import Store, StoredCall
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.store import ConfiguredWebhook, WebhookStore

with warnings.catch_warnings():  # starlette suggests httpx2; httpx is what the project uses
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

KEY = "sk-test-0123456789"
OTHER_KEY = "sk-other-9876543210"
AUTH = {"Authorization": f"Bearer {KEY}"}

CONFIG: dict[str, Any] = {
    "node": {"id": "api-node"},
    "trunks": [
        {
            "id": "carrier",
            "register": True,
            "registrar": "sip:registrar.example.com",
            "username": "4420700000",
            "password": "hunter2-secret",
            "allowed_destinations": ["+1555"],
            "max_concurrent_calls": 5,
        },
        {
            "id": "static",
            "proxy": "sip:127.0.0.1:5080",
            "allowed_ips": ["127.0.0.0/8"],
            "allowed_destinations": ["+1"],
        },
    ],
    "numbers": [{"number": "+15550100", "agent": "echo", "variables": {"campaign": "c1"}}],
    "agents": [
        {"id": "echo", "type": "echo"},
        {
            "id": "bot",
            "type": "twilio-ws",
            "url": "wss://user:pw@bot.example.com/ws?token=abc",
            "headers": {"X-Api-Key": "header-secret"},
        },
    ],
    "api": {"api_keys": [KEY, OTHER_KEY], "rate_limit_per_minute": 100},
}
SECRETS = ("hunter2-secret", "header-secret", "token=abc", "user:pw", "4420700000", KEY)


class FakeWorker:
    """Answers the operations like the SIP worker, reporting events through the ledger."""

    def __init__(self, ledger: Ledger, emit: Callable[[ev.WorkerEvent], None]):
        self.ledger = ledger
        self.emit = emit
        self.status: dict[str, Any] = {
            "capacity": 3,
            "engine_call_limit": 4,
            "trunks": {
                "carrier": {"trunk": "carrier", "state": "registering", "max_concurrent_calls": 5}
            },
        }
        self.ready = asyncio.Event()
        self.ready.set()
        self.exited = asyncio.Event()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.refuse: CommandError | None = None

    async def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 0) -> Any:
        args = args or {}
        self.requests.append((op, args))
        if self.refuse is not None:
            raise self.refuse
        if op == "originate":
            self.emit(ev.CallDialed(
                call_id=args["call_id"], from_number=args["caller_id"] or "+15550000",
                to_number=args["to"], trunk=args["trunk"], agent=args["agent"],
                variables=args["variables"]))  # fmt: skip
            return {"call_id": args["call_id"]}
        if args.get("call_id") not in self.ledger.active:
            raise CommandError("resource_not_found", "no such call")
        return {}

    def states(self) -> list[WorkerState]:
        """The one worker as the node's pool reports it."""
        phase: WorkerPhase = (
            "stopped" if self.exited.is_set() else "running" if self.ready.is_set() else "starting"
        )
        calls = len(self.ledger.active)
        return [WorkerState(1, phase, 4242, self.status["capacity"], calls, 0, ("carrier",))]

    @property
    def capacity(self) -> int:
        return sum(w.capacity for w in self.states() if w.running)

    def trunk_status(self) -> dict[str, dict[str, Any]]:
        trunks: dict[str, dict[str, Any]] = self.status["trunks"]
        return trunks


class FakeNode:
    def __init__(self, tmp: Path) -> None:
        self.config = Config.model_validate(CONFIG)
        self.store = Store(str(tmp / "api.db"))
        self.ledger = Ledger(self.store, "api-node")
        self.worker = FakeWorker(self.ledger, self.event)
        self.workers = self.worker  # one worker: the pool and the worker are the same here
        self.publisher = None
        self.metrics = NodeMetrics()
        self.draining = False
        self.started_at = time.time()
        self.front: FrontHealth | None = None
        self.reload_problems: list[str] = []  # what the next reload refuses the file for
        # campaigns: the real operations and store; the runner is never started here
        self.campaign_store = CampaignStore(str(tmp / "api.db"))
        runner = CampaignRunner(self, self.campaign_store, lambda data: None)  # type: ignore[arg-type]
        self.campaigns = CampaignOperations(self, runner)  # type: ignore[arg-type]
        # webhooks: the real operations and store; the receiver is in memory, the sender's
        # loop never runs (test events are sent at once)
        self.webhook_store = WebhookStore(str(tmp / "api.db"))
        self.received: list[httpx.Request] = []
        self.webhook_sender = WebhookSender(
            self.webhook_store, self.store, max_failures=20, on_disabled=lambda sub, why: None,
            transport=httpx.MockTransport(self._receive),
        )  # fmt: skip
        self.webhooks = WebhookOperations(self.webhook_store, self.webhook_sender, "api-node")

    def _receive(self, request: httpx.Request) -> httpx.Response:
        """The webhook receiver: 500 for a URL with `fail` in it, else 204."""
        self.received.append(request)
        return httpx.Response(500 if "fail" in request.url.path else 204)

    async def reload(self) -> dict[str, Any]:
        """As supervisor.Node.reload answers (its logic: tests/gateway/node/test_reload.py)."""
        if self.reload_problems:
            raise CommandError("invalid_parameter", "the config was refused", [
                {"message": p, "field": "config", "type": "config_invalid"}
                for p in self.reload_problems
            ])  # fmt: skip
        return {"reloaded": True, "changed": ["numbers"], "trunks_added": [],
                "trunks_removed": [], "trunks_changed": []}  # fmt: skip

    async def command(self, name: str, args: dict[str, Any]) -> Any:
        if name.startswith("campaign."):
            return await self.campaigns(name, args)
        if name.startswith("webhook."):
            return await self.webhooks(name, args)
        return await run_operation(self, name, args)  # type: ignore[arg-type]

    async def front_health(self) -> FrontHealth | None:
        return self.front

    def event(self, event: ev.WorkerEvent) -> None:
        self.ledger.record(event, time.time())
        self.metrics.observe(event)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def node(tmp_path: Path) -> Iterator[FakeNode]:
    fake = FakeNode(tmp_path)
    yield fake
    fake.store.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(node: FakeNode, clock: Clock) -> Iterator[TestClient]:
    app = create_app(node, node.config.api, clock=clock)  # type: ignore[arg-type]
    with TestClient(app) as c:
        yield c


def originate(client: TestClient, **body: Any) -> httpx.Response:
    payload = {"to": "+15551234567", "agent": "echo", **body}
    return client.post("/v1/calls", json=payload, headers=AUTH)


def add_call(node: FakeNode, call_id: str, **fields: Any) -> StoredCall:
    record = StoredCall(id=call_id, **{"direction": "inbound", "status": "completed", **fields})
    node.store.create_call(record)
    return record


def error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return dict(body["error"])


# --- authentication ---------------------------------------------------------------------


def test_v1_needs_a_valid_bearer_key(client: TestClient) -> None:
    error(client.get("/v1/calls"), 401, "unauthorized")
    wrong = client.get("/v1/calls", headers={"Authorization": "Bearer sk-wrong"})
    assert error(wrong, 401, "unauthorized")["message"].startswith("a valid API key")
    assert wrong.headers["WWW-Authenticate"] == "Bearer"
    error(client.get("/v1/calls", headers={"Authorization": f"Basic {KEY}"}), 401, "unauthorized")
    error(client.get("/v1/nope"), 401, "unauthorized")  # routes are not revealed without a key
    assert client.get("/v1/calls", headers=AUTH).status_code == 200
    other = client.get("/v1/calls", headers={"Authorization": f"bearer  {OTHER_KEY} "})
    assert other.status_code == 200


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch: Any) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_auth.hmac, "compare_digest", spy)
    keys = ApiKeys([api_auth.SecretStr(k) for k in ("first", "second", "third")])
    assert keys.identify("first") == "key-1"  # found first, and still compared with all three
    assert len(calls) == 3 and {len(a) for a, _ in calls} == {32}
    assert keys.identify("x" * 500) is None and len(calls) == 6  # digests: equal lengths
    assert keys.identify("") is None and len(calls) == 6
    assert bearer_token("Bearer abc") == "abc" and bearer_token("Bearer ") is None
    assert bearer_token(None) is None and bearer_token("Token abc") is None


def test_operational_endpoints_need_no_key(client: TestClient) -> None:
    for path in (
        "/health",
        "/readiness",
        "/liveness",
        "/version",
        "/metrics",
        "/openapi.json",
        "/docs",
    ):
        assert client.get(path).status_code == 200, path


# --- rate limit ---------------------------------------------------------------------------


def test_rate_limit_headers_on_every_response_and_429_past_the_limit(
    node: FakeNode, clock: Clock
) -> None:
    settings = node.config.api.model_copy(update={"rate_limit_per_minute": 3})
    app = create_app(node, settings, clock=clock)  # type: ignore[arg-type]
    with TestClient(app) as client:
        reset = str(int(clock.now) // 60 * 60 + 60)
        for remaining in (2, 1, 0):
            ok = client.get("/v1/calls", headers=AUTH)
            assert ok.status_code == 200
            assert ok.headers["X-RateLimit-Limit"] == "3"
            assert ok.headers["X-RateLimit-Remaining"] == str(remaining)
            assert ok.headers["X-RateLimit-Reset"] == reset
        limited = client.get("/v1/calls", headers=AUTH)
        error(limited, 429, "rate_limit_exceeded")
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert int(limited.headers["Retry-After"]) == int(reset) - int(clock.now)
        # Per key: the other key still has its own budget; health is never limited.
        other = client.get("/v1/calls", headers={"Authorization": f"Bearer {OTHER_KEY}"})
        assert other.status_code == 200
        health = client.get("/health")
        assert health.status_code == 200 and "X-RateLimit-Limit" in health.headers
        # Failed authentication counts against the client address: no free key guessing.
        for _ in range(3):
            error(client.get("/v1/calls"), 401, "unauthorized")
        error(client.get("/v1/calls"), 429, "rate_limit_exceeded")
        # Errors carry the headers too, and the next window refills the bucket.
        assert "X-RateLimit-Reset" in client.get("/v1/calls/call_x", headers=AUTH).headers
        clock.now += 60
        again = client.get("/v1/calls", headers=AUTH)
        assert again.status_code == 200 and again.headers["X-RateLimit-Remaining"] == "2"


def test_rate_limiter_windows() -> None:
    clock = Clock()
    limiter = RateLimiter(2, clock)
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.peek("a").remaining == 0 and limiter.peek("b").remaining == 2
    clock.now += 61
    assert limiter.hit("a").remaining == 1


# --- placing and controlling calls --------------------------------------------------------


def test_post_calls_returns_202_dialing_and_the_call(client: TestClient, node: FakeNode) -> None:
    res = originate(client, variables={"lead": "42"}, trunk="carrier", **{"from": "+15550001"})
    assert res.status_code == 202, res.text
    call = res.json()["data"]
    assert call["id"].startswith("call_") and call["status"] == "dialing"
    assert call["to"] == "+15551234567" and call["from"] == "+15550001"
    assert call["variables"] == {"lead": "42"} and call["trunk"] == "carrier"
    assert call["direction"] == "outbound" and call["created_at"].endswith("Z")
    assert res.headers["Location"] == f"/v1/calls/{call['id']}"
    op, args = node.worker.requests[-1]
    assert op == "originate" and args["caller_id"] == "+15550001"
    got = client.get(f"/v1/calls/{call['id']}", headers=AUTH)
    assert got.status_code == 200 and got.json()["data"]["id"] == call["id"]


def test_post_calls_rejects_bad_bodies_naming_the_field(client: TestClient) -> None:
    unknown = error(originate(client, colour="red"), 422, "invalid_parameter")
    assert unknown["message"] == "unknown field 'colour'"
    assert unknown["details"][0]["field"] == "colour"
    bad_to = error(originate(client, to="5551234"), 422, "invalid_parameter")
    assert bad_to["details"][0]["field"] == "to"
    missing = client.post("/v1/calls", json={"to": "+15551234567"}, headers=AUTH)
    assert error(missing, 422, "invalid_parameter")["message"] == "agent is required"
    agent = error(originate(client, agent="nobody"), 422, "invalid_parameter")
    assert agent["message"] == "agent 'nobody' is not configured"
    assert [(d["field"], d["type"]) for d in agent["details"]] == [("agent", "not_configured")]
    error(originate(client, to="+4420700000"), 422, "invalid_parameter")  # no trunk dials it
    error(originate(client, trunk="nope"), 422, "invalid_parameter")


def test_idempotency_key_replays_and_conflicts(client: TestClient, node: FakeNode) -> None:
    first = client.post(
        "/v1/calls",
        json={"to": "+15551234567", "agent": "echo"},
        headers={**AUTH, "Idempotency-Key": "order-77"},
    )
    assert first.status_code == 202
    again = client.post(
        "/v1/calls",
        json={"to": "+15551234567", "agent": "echo"},
        headers={**AUTH, "Idempotency-Key": "order-77"},
    )
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert again.json()["data"]["replayed"] is True
    assert [op for op, _ in node.worker.requests] == ["originate"]  # dialled once
    other = client.post(
        "/v1/calls",
        json={"to": "+15559999999", "agent": "echo"},
        headers={**AUTH, "Idempotency-Key": "order-77"},
    )
    reused = error(other, 409, "conflict")["details"]
    assert [(d["field"], d["type"]) for d in reused] == [
        ("idempotency_key", "idempotency_key_reused")
    ]


def test_capacity_and_worker_errors_map_to_status_codes(client: TestClient, node: FakeNode) -> None:
    node.worker.refuse = CommandError("capacity_exceeded", "node is full")
    full = originate(client)
    error(full, 503, "capacity_exceeded")
    assert full.headers["Retry-After"] == "5"
    node.worker.refuse = CommandError("internal_error", "SIP worker is not running")
    error(originate(client), 500, "internal_error")


def test_hangup_transfer_dtmf_on_a_live_call(client: TestClient, node: FakeNode) -> None:
    call_id = originate(client).json()["data"]["id"]
    hang = client.post(f"/v1/calls/{call_id}/hangup", headers=AUTH)
    assert hang.status_code == 202 and hang.json()["data"] == {
        "id": call_id,
        "status": "hanging_up",
        "target": None,
        "digits": None,
    }
    xfer = client.post(
        f"/v1/calls/{call_id}/transfer", json={"target": "sip:desk@pbx.example"}, headers=AUTH
    )
    assert xfer.status_code == 202 and xfer.json()["data"]["target"] == "sip:desk@pbx.example"
    dtmf = client.post(f"/v1/calls/{call_id}/dtmf", json={"digits": "12#"}, headers=AUTH)
    assert dtmf.status_code == 202 and dtmf.json()["data"]["digits"] == "12#"
    assert [op for op, _ in node.worker.requests] == [
        "originate",
        "hangup",
        "transfer",
        "send_dtmf",
    ]
    assert node.worker.requests[1][1] == {"call_id": call_id, "by": "control_plane"}
    error(
        client.post(f"/v1/calls/{call_id}/dtmf", json={"digits": "x"}, headers=AUTH),
        422,
        "invalid_parameter",
    )
    error(
        client.post(f"/v1/calls/{call_id}/transfer", json={"target": "12"}, headers=AUTH),
        422,
        "invalid_parameter",
    )
    extra = client.post(f"/v1/calls/{call_id}/dtmf", json={"digits": "1", "x": 1}, headers=AUTH)
    assert error(extra, 422, "invalid_parameter")["message"] == "unknown field 'x'"


def test_actions_on_unknown_or_ended_calls(client: TestClient, node: FakeNode) -> None:
    for action in ("hangup", "transfer", "dtmf"):
        body = {"transfer": {"target": "+15551112222"}, "dtmf": {"digits": "1"}}.get(action)
        missing = client.post(f"/v1/calls/call_{'0' * 24}/{action}", json=body, headers=AUTH)
        error(missing, 404, "resource_not_found")
    add_call(node, "call_" + "e" * 24, status="completed")
    ended = client.post(f"/v1/calls/call_{'e' * 24}/hangup", headers=AUTH)
    ended_error = error(ended, 409, "conflict")
    assert ended_error["message"] == f"call call_{'e' * 24} has already ended (completed)"
    assert ended_error["details"][0]["field"] == "call_id"


# --- the call log ---------------------------------------------------------------------------


def seed_calls(node: FakeNode) -> list[str]:
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    ids = []
    for i in range(25):
        call_id = f"call_{i:024x}"
        add_call(node, call_id, direction="inbound" if i % 2 else "outbound",
                 status="completed" if i % 3 else "failed",
                 trunk="carrier" if i < 20 else "static", agent="echo" if i % 5 else "bot",
                 from_number=f"+1555000{i:04d}", to_number="+15550100" if i % 2 else "+15559999",
                 created_at=base + timedelta(minutes=i), duration=float(i))  # fmt: skip
        ids.append(call_id)
    return ids


def test_list_calls_paginates(client: TestClient, node: FakeNode) -> None:
    ids = seed_calls(node)
    first = client.get("/v1/calls", headers=AUTH).json()
    assert first["meta"] == {"total": 25, "page": 1, "per_page": 20, "skip": 0, "limit": 20}
    assert [c["id"] for c in first["data"]] == ids[::-1][:20]  # newest first
    last = client.get("/v1/calls?page=2", headers=AUTH).json()
    assert [c["id"] for c in last["data"]] == ids[::-1][20:]
    beyond = client.get("/v1/calls?page=9&per_page=100", headers=AUTH).json()
    assert beyond == {"data": [], "meta": {"total": 25, "page": 9, "per_page": 100,
                                           "skip": 800, "limit": 100}}  # fmt: skip


def test_every_list_takes_skip_and_limit_and_says_both(client: TestClient, node: FakeNode) -> None:
    ids = seed_calls(node)[::-1]
    res = client.get("/v1/calls?skip=5&limit=3", headers=AUTH).json()
    assert [c["id"] for c in res["data"]] == ids[5:8]
    assert res["meta"] == {"total": 25, "page": 2, "per_page": 3, "skip": 5, "limit": 3}
    aligned = client.get("/v1/calls?skip=20&limit=10", headers=AUTH).json()["meta"]
    assert (aligned["page"], aligned["per_page"]) == (3, 10)
    paged = client.get("/v1/calls?page=3&per_page=10", headers=AUTH).json()["meta"]
    assert (paged["skip"], paged["limit"]) == (20, 10)
    assert client.get("/v1/calls?limit=7", headers=AUTH).json()["meta"]["skip"] == 0
    cid = originate(client).json()["data"]["id"]
    campaign = client.post("/v1/campaigns", headers=AUTH, json={
        "name": "n", "agent": "echo", "contacts": [{"to": f"+155512300{i:02d}"} for i in range(5)]
    }).json()["data"]["id"]  # fmt: skip
    for path, total in (("/v1/trunks", 2), ("/v1/numbers", 1), ("/v1/agents", 2),
                        (f"/v1/calls/{cid}/events", 1), ("/v1/campaigns", 1),
                        (f"/v1/campaigns/{campaign}/contacts", 5)):  # fmt: skip
        res = client.get(f"{path}?skip=1&limit=1", headers=AUTH)
        assert res.status_code == 200, (path, res.text)
        body = res.json()
        assert body["meta"] == {"total": total, "page": 2, "per_page": 1, "skip": 1, "limit": 1}
        assert len(body["data"]) == (1 if total > 1 else 0), path


def test_mixing_page_and_skip_is_a_422_naming_both(client: TestClient) -> None:
    for path in ("/v1/calls", "/v1/trunks", "/v1/campaigns"):
        body = error(client.get(f"{path}?page=2&limit=5", headers=AUTH), 422, "invalid_parameter")
        assert [d["field"] for d in body["details"]] == ["page", "limit"]
        assert "page/per_page or skip/limit" in body["message"]
    for query, limit in (("limit=101", 100), ("skip=-1", 0)):
        name = query.split("=")[0]
        bounded = error(client.get(f"/v1/calls?{query}", headers=AUTH), 422, "invalid_parameter")
        assert (bounded["details"][0]["field"], bounded["details"][0]["limit"]) == (name, limit)


def test_pagination_errors_name_the_parameter(client: TestClient) -> None:
    for query in (
        "per_page=0",
        "per_page=101",
        "page=0",
        "page=x",
        "sort=colour",
        "status=dancing",
        "date_from=yesterday",
        "date_to=0.5",  # a number is not taken as a Unix time: the schema says date-time
    ):
        name = query.split("=")[0]
        detail = error(client.get(f"/v1/calls?{query}", headers=AUTH), 422, "invalid_parameter")[
            "details"
        ][0]
        assert (detail["location"], detail["field"]) == ("query", name), detail


def test_list_calls_filters_and_sorts(client: TestClient, node: FakeNode) -> None:
    ids = seed_calls(node)

    def listed(query: str) -> list[str]:
        res = client.get(f"/v1/calls?per_page=100&{query}", headers=AUTH)
        assert res.status_code == 200, res.text
        return [c["id"] for c in res.json()["data"]]

    assert set(listed("status=failed")) == {ids[i] for i in range(0, 25, 3)}
    assert set(listed("direction=inbound")) == {ids[i] for i in range(1, 25, 2)}
    assert set(listed("trunk=static")) == set(ids[20:])
    assert set(listed("agent=bot")) == {ids[i] for i in range(0, 25, 5)}
    assert listed("number=%2B15550000007") == [ids[7]]  # matches from
    assert set(listed("number=%2B15550100")) == {ids[i] for i in range(1, 25, 2)}  # or to
    window = listed("date_from=2024-05-01T12:05:00Z&date_to=2024-05-01T12:08:00Z")
    assert window == [ids[7], ids[6], ids[5]]
    assert listed("date_from=2024-05-01T12:23:00") == [ids[24], ids[23]]  # no zone: UTC
    assert listed("sort=created_at")[:2] == [ids[0], ids[1]]
    assert listed("sort=-duration")[0] == ids[24]
    assert listed("status=completed&direction=outbound&trunk=static") == [ids[22], ids[20]]


# --- analytics ----------------------------------------------------------------------------


def test_analytics_over_calls_the_ledger_recorded(client: TestClient, node: FakeNode) -> None:
    seed_calls(node)  # 2024: outside the window below
    since = datetime.now(UTC) - timedelta(minutes=1)
    ids = [originate(client, variables={"campaign_id": "cmp_a"} if i else {}).json()["data"]["id"]
           for i in range(3)]  # fmt: skip
    for call_id, duration in zip(ids[:2], (4.0, 6.0), strict=True):
        node.event(ev.Answered(call_id=call_id, codec="PCMU", answered_at=time.time()))
        node.event(
            ev.Completed(
                call_id=call_id,
                duration=duration,
                reason="normal",
                hangup_by="callee",
                latency={"response_p50_ms": 500.0, "response_p95_ms": 800.0},
            )
        )
    node.event(ev.Failed(call_id=ids[2], reason="busy", sip_code=486, hangup_by="callee"))
    query = f"date_from={since.isoformat().replace('+00:00', 'Z')}"
    got = client.get(f"/v1/analytics/calls?{query}", headers=AUTH).json()["data"]
    assert (got["total"], got["answered"], got["failed"], got["answer_rate"]) == (3, 2, 1, 0.6667)
    assert got["by_direction"] == {"outbound": 3}
    assert [(c["id"], c["total"]) for c in got["by_campaign"]] == [("cmp_a", 2)]
    assert got["duration"]["average"] == 5.0 and got["duration"]["p50"] == 4.0
    assert got["agent_latency"]["average_response_p50_ms"] == 500.0
    one = client.get(f"/v1/calls/{ids[0]}", headers=AUTH).json()["data"]
    assert one["latency"] == {"response_p50_ms": 500.0, "response_p95_ms": 800.0}
    campaign = client.get(f"/v1/analytics/calls?{query}&campaign_id=cmp_a", headers=AUTH)
    assert campaign.json()["data"]["total"] == 2
    everything = client.get("/v1/analytics/calls?trunk=static", headers=AUTH).json()["data"]
    assert everything["total"] == 5  # seeded calls 20..24
    hourly = client.get(f"/v1/analytics/calls/hourly?{query}&timezone=Asia/Kolkata",
                        headers=AUTH).json()["data"]  # fmt: skip
    assert hourly["unit"] == "hour" and hourly["timezone"] == "Asia/Kolkata"
    assert sum(b["total"] for b in hourly["buckets"]) == 3
    assert all(b["start"].endswith("+05:30") for b in hourly["buckets"])
    daily = client.get("/v1/analytics/calls/daily?date_to=2024-05-02T00:00:00Z", headers=AUTH)
    assert daily.json()["data"]["buckets"] == [
        {
            "start": "2024-05-01T00:00:00+00:00",
            "total": 25,
            "answered": 0,
            "failed": 9,
            "average_duration": 12.0,
        }
    ]  # fmt: skip  seeded calls: completed ones 1, 2, 4, 5, ... 23 (no answered_at recorded)


def test_analytics_refuse_an_unknown_time_zone_by_name(client: TestClient) -> None:
    for path in ("hourly", "daily"):
        res = client.get(f"/v1/analytics/calls/{path}?timezone=Mars/Olympus", headers=AUTH)
        bad = error(res, 422, "invalid_parameter")
        assert bad["details"][0]["field"] == "timezone" and "IANA" in bad["message"]
    unknown = client.get("/v1/analytics/calls?zone=UTC", headers=AUTH)
    assert error(unknown, 422, "invalid_parameter")["details"][0]["field"] == "zone"


# --- events and recordings ----------------------------------------------------------------


def test_call_events_in_order_with_pagination(client: TestClient, node: FakeNode) -> None:
    call_id = originate(client).json()["data"]["id"]
    node.event(ev.Ringing(call_id=call_id))
    node.event(ev.Answered(call_id=call_id, codec="PCMU", answered_at=time.time()))
    node.event(ev.Completed(call_id=call_id, duration=2.5, reason="normal",
                            hangup_by="callee"))  # fmt: skip
    res = client.get(f"/v1/calls/{call_id}/events", headers=AUTH).json()
    assert [e["type"] for e in res["data"]] == [
        "call.placed",
        "call.ringing",
        "call.answered",
        "call.completed",
    ]
    assert [e["seq"] for e in res["data"]] == [1, 2, 3, 4]
    assert res["meta"] == {"total": 4, "page": 1, "per_page": 20, "skip": 0, "limit": 20}
    page2 = client.get(f"/v1/calls/{call_id}/events?per_page=3&page=2", headers=AUTH).json()
    assert [e["seq"] for e in page2["data"]] == [4]
    error(client.get("/v1/calls/call_nope/events", headers=AUTH), 404, "resource_not_found")
    log = client.get("/v1/calls", headers=AUTH).json()["data"][0]
    assert log["status"] == "completed" and log["billable_seconds"] == 3


def write_wav(path: Path, frames: int = 8000) -> bytes:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(range(256)) * (frames * 4 // 256))
    return path.read_bytes()


def test_recording_download_with_range(client: TestClient, node: FakeNode, tmp_path: Path) -> None:
    data = write_wav(tmp_path / "rec.wav")
    add_call(node, "call_" + "a" * 24, recording_path=str(tmp_path / "rec.wav"))
    url = f"/v1/calls/call_{'a' * 24}/recording"
    whole = client.get(url, headers=AUTH)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "audio/wav"
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-length"] == str(len(data))
    head = client.get(url, headers={**AUTH, "Range": "bytes=0-43"})
    assert head.status_code == 206 and head.content == data[:44] and head.content[:4] == b"RIFF"
    assert head.headers["content-range"] == f"bytes 0-43/{len(data)}"
    tail = client.get(url, headers={**AUTH, "Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == data[-100:]
    rest = client.get(url, headers={**AUTH, "Range": f"bytes={len(data) - 10}-"})
    assert rest.content == data[-10:]
    over = client.get(url, headers={**AUTH, "Range": f"bytes={len(data)}-"})
    error(over, 416, "range_not_satisfiable")
    assert over.headers["content-range"] == f"bytes */{len(data)}"
    assert (
        client.get(f"/v1/calls/call_{'a' * 24}", headers=AUTH).json()["data"]["recording_url"]
        == url
    )


def test_recording_missing_is_404(client: TestClient, node: FakeNode, tmp_path: Path) -> None:
    add_call(node, "call_" + "b" * 24)
    add_call(node, "call_" + "c" * 24, recording_path=str(tmp_path / "gone.wav"))
    for call_id in ("b" * 24, "c" * 24, "0" * 24):
        error(
            client.get(f"/v1/calls/call_{call_id}/recording", headers=AUTH),
            404,
            "resource_not_found",
        )


def finished_recording(node: FakeNode, call_id: str, path: Path) -> int:
    write_wav(path)
    size = path.stat().st_size
    node.event(ev.RecordingFinished(call_id=call_id, path=str(path), duration=1.0, bytes=size))
    return size


def test_recordings_list_metadata_audio_and_delete(
    client: TestClient, node: FakeNode, tmp_path: Path
) -> None:
    ids = [originate(client, variables={"campaign_id": "cmp_r"} if i else {}).json()["data"]["id"]
           for i in range(3)]  # fmt: skip
    sizes = [finished_recording(node, call_id, tmp_path / f"{call_id}.wav") for call_id in ids]
    listed = client.get("/v1/recordings?limit=2", headers=AUTH).json()
    assert listed["meta"] == {"total": 3, "page": 1, "per_page": 2, "skip": 0, "limit": 2}
    assert [r["call_id"] for r in listed["data"]] == [ids[2], ids[1]]
    by_campaign = client.get("/v1/recordings?campaign_id=cmp_r", headers=AUTH).json()
    assert {r["call_id"] for r in by_campaign["data"]} == set(ids[1:])
    assert client.get(f"/v1/recordings?call_id={ids[0]}", headers=AUTH).json()["meta"]["total"] == 1
    one = client.get(f"/v1/recordings/{ids[0]}", headers=AUTH).json()["data"]
    assert (one["bytes"], one["channels"], one["sample_rate"], one["format"]) == (
        sizes[0], 2, 8000, "wav/pcm_s16le")  # fmt: skip
    assert one["duration"] == 1.0 and one["trunk"] == "carrier" and one["available"] is True
    audio = client.get(one["url"], headers={**AUTH, "Range": "bytes=0-3"})
    assert audio.status_code == 206 and audio.content == b"RIFF"
    gone = client.delete(f"/v1/recordings/{ids[0]}", headers=AUTH)
    assert gone.status_code == 200, gone.text
    assert gone.json()["data"]["available"] is False and gone.json()["data"]["deleted_at"]
    assert not (tmp_path / f"{ids[0]}.wav").exists()
    events = client.get(f"/v1/calls/{ids[0]}/events", headers=AUTH).json()["data"]
    assert events[-1]["type"] == "call.recording.deleted"
    assert events[-1]["data"] == {"path": str(tmp_path / f"{ids[0]}.wav"), "bytes": sizes[0],
                                  "reason": "request"}  # fmt: skip
    for url in (f"/v1/recordings/{ids[0]}", f"/v1/recordings/{ids[0]}/audio",
                f"/v1/calls/{ids[0]}/recording"):  # fmt: skip
        error(client.get(url, headers=AUTH), 404, "resource_not_found")
    error(client.delete(f"/v1/recordings/{ids[0]}", headers=AUTH), 404, "resource_not_found")
    assert client.get("/v1/recordings", headers=AUTH).json()["meta"]["total"] == 2
    assert client.get(f"/v1/calls/{ids[0]}", headers=AUTH).json()["data"]["recording_url"] is None


async def test_recording_commands_over_mqtt_answer_as_the_api(
    node: FakeNode, tmp_path: Path
) -> None:
    add_call(node, "call_" + "e" * 24)
    finished_recording(node, "call_" + "e" * 24, tmp_path / "e.wav")
    got = await node.command("recording.get", {"call_id": "call_" + "e" * 24})
    assert got["channels"] == 2
    listed = await node.command("recording.list", {"limit": 5})
    assert listed["meta"] == {"total": 1, "skip": 0, "limit": 5}
    deleted = await node.command("recording.delete", {"call_id": "call_" + "e" * 24})
    assert deleted["available"] is False and not (tmp_path / "e.wav").exists()
    with pytest.raises(CommandError) as missing:
        await node.command("recording.get", {"call_id": "call_" + "e" * 24})
    assert missing.value.code == "resource_not_found"
    with pytest.raises(CommandError) as bad:
        await node.command("recording.list", {"limit": 500})
    assert bad.value.code == "invalid_parameter"


def test_byte_range_parsing() -> None:
    assert byte_range(None, 100) is None
    assert byte_range("bytes=0-0", 100) == (0, 0)
    assert byte_range("bytes=90-200", 100) == (90, 99)
    assert byte_range("bytes=-0", 100) is False
    assert byte_range("bytes=-500", 100) == (0, 99)
    assert byte_range("bytes=5-4", 100) is False
    assert byte_range("bytes=0-1,5-6", 100) is None  # several ranges: the whole file
    assert byte_range("items=0-1", 100) is None


# --- trunks, numbers, agents ----------------------------------------------------------------


def test_trunks_with_state_and_no_secrets(client: TestClient, node: FakeNode) -> None:
    node.event(
        ev.TrunkStateChanged(
            trunk="carrier",
            registers=True,
            state="failed",
            sip_code=403,
            reason="Forbidden",
            next_retry_at=1_700_000_060.0,
            active_calls=3,  # stale: active calls are counted from the live calls
            max_concurrent_calls=5,
        )
    )
    originate(client, trunk="carrier")
    res = client.get("/v1/trunks", headers=AUTH)
    assert res.status_code == 200 and res.json()["meta"]["total"] == 2
    carrier, static = res.json()["data"]
    assert carrier["state"] == "failed" and carrier["sip_code"] == 403
    assert carrier["next_retry_at"] == "2023-11-14T22:14:20.000Z" and carrier["register"] is True
    assert carrier["active_calls"] == 1 and carrier["max_concurrent_calls"] == 5
    assert static["state"] == "static" and static["allowed_ips"] == ["127.0.0.0/8"]
    assert static["active_calls"] == 0
    one = client.get("/v1/trunks/static", headers=AUTH)
    assert one.json()["data"] == static
    error(client.get("/v1/trunks/nope", headers=AUTH), 404, "resource_not_found")
    assert not any(s in res.text for s in SECRETS)


def test_numbers_and_agents_without_secrets(client: TestClient) -> None:
    numbers = client.get("/v1/numbers", headers=AUTH).json()
    assert numbers["data"] == [
        {
            "number": "+15550100",
            "agent": "echo",
            "trunk": None,
            "variables": {"campaign": "c1"},
            "answer_delay_ms": 0,
        }
    ]
    agents = client.get("/v1/agents", headers=AUTH)
    bot = agents.json()["data"][1]
    assert bot["url"] == "wss://bot.example.com/ws" and bot["header_names"] == ["X-Api-Key"]
    assert not any(s in agents.text for s in SECRETS)
    assert client.get("/v1/agents?per_page=1&page=2", headers=AUTH).json()["data"][0]["id"] == "bot"


# --- health, readiness, metrics, errors -------------------------------------------------------


def test_health_and_readiness_report_reasons(client: TestClient, node: FakeNode) -> None:
    ok = client.get("/health").json()
    assert ok["status"] == "ok" and ok["checks"]["sip_worker"] == "ok"
    assert client.get("/readiness").json()["status"] == "ready"
    node.draining = True
    draining = client.get("/readiness")
    assert draining.status_code == 503 and draining.json()["reasons"] == ["node is draining"]
    assert client.get("/health").status_code == 200  # draining is healthy, just not ready
    node.worker.exited.set()
    down = client.get("/health")
    assert down.status_code == 503 and "SIP worker is down" in down.json()["reasons"]
    node.store.close()
    broken = client.get("/health").json()
    assert broken["checks"]["store"] == "unwritable"
    assert client.get("/liveness").json()["status"] == "alive"


def test_readiness_is_503_before_trunks_are_loaded(client: TestClient, node: FakeNode) -> None:
    node.worker.ready.clear()
    res = client.get("/readiness")
    assert res.status_code == 503 and res.json()["reasons"][0].startswith("trunks are not loaded")


def test_version_and_metrics(client: TestClient, node: FakeNode) -> None:
    assert client.get("/version").json()["node"] == "api-node"
    call_id = originate(client).json()["data"]["id"]
    node.event(
        ev.AgentLinkDown(
            call_id=call_id, agent="echo", transport="echo", reason="connect_timeout after 5s"
        )
    )
    node.event(
        ev.Completed(
            call_id=call_id, duration=1.0, reason="normal", latency={"response_p50_ms": 180.0}
        )
    )
    other = originate(client).json()["data"]["id"]
    node.event(ev.Failed(call_id=other, reason="busy", sip_code=486))
    text = client.get("/metrics").text
    assert client.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'sipedge_calls_total{direction="outbound",result="completed"} 1' in text
    assert 'sipedge_calls_total{direction="outbound",result="busy"} 1' in text
    assert "sipedge_active_calls 0" in text and "sipedge_outbox_backlog" in text
    assert 'sipedge_trunk_registration_state{trunk="carrier",state="registering"} 1' in text
    assert 'sipedge_agent_connect_failures_total{agent="echo",reason="connect_timeout"} 1' in text
    assert (
        'sipedge_media_latency_milliseconds_bucket{path="response",stat="p50",le="200"} 1' in text
    )
    assert 'sipedge_media_latency_milliseconds_count{path="response",stat="p50"} 1' in text


def test_unknown_routes_and_methods_use_the_envelope(client: TestClient) -> None:
    error(client.get("/v1/calls/call_nope", headers=AUTH), 404, "resource_not_found")
    error(client.get("/v1/nowhere", headers=AUTH), 404, "resource_not_found")
    error(client.get("/nowhere"), 401, "unauthorized")
    wrong = client.delete("/v1/trunks", headers=AUTH)
    assert error(wrong, 405, "method_not_allowed")["message"].endswith("(allowed: GET)")
    assert wrong.headers["allow"] == "GET"


# --- hygiene: bounds, strict types, one error vocabulary ----------------------------------

DETAIL_KEYS = {"location", "field", "message", "type", "limit"}


def test_page_and_per_page_are_bounded_with_422_naming_the_limit(client: TestClient) -> None:
    for path in ("/v1/calls", "/v1/calls/call_x/events", "/v1/trunks", "/v1/agents"):
        res = client.get(f"{path}?page=9223372036854775807", headers=AUTH)
        bounded = error(res, 422, "invalid_parameter")
        assert bounded["message"] == f"page: at most {MAX_PAGE}", path
        assert bounded["details"][0]["limit"] == MAX_PAGE
    assert client.get(f"/v1/calls?page={MAX_PAGE}", headers=AUTH).json()["data"] == []


def test_unknown_query_parameters_are_refused_by_name(client: TestClient, node: FakeNode) -> None:
    seed_calls(node)
    typo = error(client.get("/v1/calls?stauts=failed", headers=AUTH), 422, "invalid_parameter")
    assert typo["message"] == "unknown query parameter 'stauts'"
    assert typo["details"][0] | {"message": ""} == {
        "location": "query", "field": "stauts", "message": "", "type": "extra_forbidden",
        "limit": None,
    }  # fmt: skip
    for path in ("/v1/trunks?pgae=2", "/v1/numbers?x=1", "/v1/calls/call_x?full=1"):
        error(client.get(path, headers=AUTH), 422, "invalid_parameter")
    assert client.get("/v1/calls?status=failed&page=1", headers=AUTH).status_code == 200


def test_malformed_json_is_a_documented_400_with_the_envelope(client: TestClient) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    syntax = error(client.post("/v1/calls", content=b"{not json", headers=headers), 400,
                   "invalid_json")  # fmt: skip
    assert syntax["message"].startswith("request body is not valid JSON: Expecting property")
    assert syntax["details"][0]["field"] is None  # not the byte offset FastAPI reports there
    encoding = client.post("/v1/calls", content=b'{"to": "\xff"}', headers=headers)
    assert "UTF-8" in error(encoding, 400, "invalid_json")["message"]
    dtmf = client.post("/v1/calls/call_x/dtmf", content=b"[", headers=headers)
    error(dtmf, 400, "invalid_json")
    doc = client.get("/openapi.json").json()
    for path in ("/v1/calls", "/v1/calls/{call_id}/dtmf", "/v1/calls/{call_id}/transfer"):
        assert "400" in doc["paths"][path]["post"]["responses"], path


def test_types_are_strict_not_coerced(client: TestClient, node: FakeNode) -> None:
    coercible = [("ring_timeout", True), ("ring_timeout", "30"), ("ring_timeout", 30.5),
                 ("record", "yes"), ("record", 1), ("variables", {"lead": 42})]  # fmt: skip
    for field, value in coercible:
        body = error(originate(client, **{field: value}), 422, "invalid_parameter")
        assert body["details"][0]["field"].split(".")[0] == field, (field, value)
    assert not node.worker.requests
    assert originate(client, ring_timeout=30, record=True).status_code == 202
    assert originate(client, ring_timeout=30.0).status_code == 202  # a JSON Schema integer
    # The AMD settings too (schemathesis sent initial_silence_ms 2953.0: refused with a 422)
    assert originate(client, amd={"initial_silence_ms": 2953.0}).status_code == 202
    for value in (True, "2953", 2953.5):
        body = error(originate(client, amd={"initial_silence_ms": value}), 422,
                     "invalid_parameter")  # fmt: skip
        assert body["details"][0]["field"] == "amd.initial_silence_ms", value


def test_the_schema_carries_the_constraints_the_code_enforces(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    create = doc["components"]["schemas"]["CallCreate"]["properties"]
    assert create["agent"]["minLength"] == 1 and create["agent"]["pattern"]
    trunk = next(s for s in create["trunk"]["anyOf"] if s.get("type") == "string")
    assert trunk["minLength"] == 1
    ring = next(s for s in create["ring_timeout"]["anyOf"] if s.get("type") == "integer")
    assert (ring["minimum"], ring["maximum"]) == (1, 600)
    variables = create["variables"]
    assert variables["maxProperties"] == 64
    assert variables["additionalProperties"]["maxLength"] == 1024
    assert variables["propertyNames"]["maxLength"] == 64
    target = doc["components"]["schemas"]["CallTransferRequest"]["properties"]["target"]
    assert target["pattern"] and target["maxLength"] == 256
    empty = error(originate(client, agent=""), 422, "invalid_parameter")
    assert empty["message"] == "agent: must not be empty"


def test_405_lists_every_method_of_the_path(client: TestClient) -> None:
    calls = client.delete("/v1/calls", headers=AUTH)
    assert error(calls, 405, "method_not_allowed")["details"][0]["type"] == "method_not_allowed"
    assert calls.headers["allow"] == "GET, POST"
    one = client.put("/v1/calls/call_x", headers=AUTH)
    assert one.status_code == 405 and one.headers["allow"] == "GET"


def test_e164_and_pattern_errors_are_said_in_words(client: TestClient) -> None:
    bad_to = error(originate(client, to="5551234"), 422, "invalid_parameter")
    assert bad_to["message"] == "to: must be E.164, e.g. +15551234567"
    bad_from = error(originate(client, **{"from": "0044"}), 422, "invalid_parameter")
    assert bad_from["message"] == "from: must be E.164, e.g. +15551234567"
    number = error(client.get("/v1/calls?number=555", headers=AUTH), 422, "invalid_parameter")
    assert number["message"] == "number: must be E.164, e.g. +15551234567"
    call_id = originate(client).json()["data"]["id"]
    dtmf = client.post(f"/v1/calls/{call_id}/dtmf", json={"digits": "x"}, headers=AUTH)
    assert "DTMF digits" in error(dtmf, 422, "invalid_parameter")["message"]
    sort = error(client.get("/v1/calls?sort=colour", headers=AUTH), 422, "invalid_parameter")
    assert sort["message"].startswith("sort: must be one of created_at, answered_at")
    for body in (bad_to, bad_from, number, sort):
        assert "^" not in body["message"] and "[0-9]" not in str(body)


def test_details_is_a_list_of_one_shape_on_every_error(
    node: FakeNode, clock: Clock, tmp_path: Path
) -> None:
    settings = node.config.api.model_copy(update={"rate_limit_per_minute": 12})
    app = create_app(node, settings, clock=clock)  # type: ignore[arg-type]
    write_wav(tmp_path / "r.wav")
    add_call(node, "call_" + "e" * 24, recording_path=str(tmp_path / "r.wav"))
    past_the_end = {**AUTH, "Range": "bytes=9999999-"}
    with TestClient(app) as client:
        responses = [
            client.get("/v1/calls"),  # 401
            client.get("/v1/calls/call_x", headers=AUTH),  # 404
            client.get("/v1/trunks/x", headers=AUTH),  # 404
            client.delete("/v1/calls", headers=AUTH),  # 405
            client.post(f"/v1/calls/call_{'e' * 24}/hangup", headers=AUTH),  # 409
            client.get(f"/v1/calls/call_{'e' * 24}/recording", headers=past_the_end),  # 416
            originate(client, agent="nobody"),  # 422 from the operation
            originate(client, to="1"),  # 422 from the model
            client.get("/v1/calls?page=0", headers=AUTH),  # 422 from the query
        ]
        node.worker.refuse = CommandError("capacity_exceeded", "full")
        responses.append(originate(client))  # 503
        while len(responses) < 14:
            responses.append(client.get("/v1/calls", headers=AUTH))
        responses.append(client.get("/v1/calls", headers=AUTH))  # 429
    statuses = [r.status_code for r in responses]
    assert {401, 404, 405, 409, 416, 422, 429, 503} <= set(statuses), statuses
    for res in (r for r in responses if r.status_code >= 400):
        details = res.json()["error"]["details"]
        assert isinstance(details, list), res.text
        assert all(set(d) == DETAIL_KEYS for d in details), res.text


def test_one_vocabulary_maps_codes_to_statuses() -> None:
    assert set(HTTP_STATUS) == set(typing.get_args(ErrorCode))
    assert CommandError("payload_too_large", "x").http_status == 413
    assert refusal_code("call_not_found") == "resource_not_found"
    assert refusal_code("draining") == "capacity_exceeded"
    assert refusal_code("") == "internal_error"
    assert CallRefused("unknown_agent", "no").code == "invalid_parameter"


def mqtt(node: FakeNode) -> Publisher:
    """The node's MQTT command side, answering through the same operations (no broker needed:
    execute() is what a command message runs)."""
    return Publisher(node.store, BrokerConnection(), "api-node", command_handler=node.command)


@pytest.mark.parametrize("body", [
    {"to": "5551234", "agent": "echo"},
    {"to": "+15551234567", "agent": "nobody"},
    {"to": "+15551234567", "agent": "echo", "colour": "red"},
    {"to": "+15551234567", "agent": "echo", "ring_timeout": True},
    {"to": "+15551234567", "agent": "echo", "variables": {f"k{i}": "v" for i in range(65)}},
    {"to": "+15551234567"},
])  # fmt: skip
async def test_mqtt_commands_and_http_answer_the_same_error(
    client: TestClient, node: FakeNode, body: dict[str, Any]
) -> None:
    http = client.post("/v1/calls", json=body, headers=AUTH)
    reply = await mqtt(node).execute("call.originate", json.dumps(body).encode())
    assert reply == http.json(), (reply, http.text)
    assert http.status_code == HTTP_STATUS[reply["error"]["code"]]


async def test_mqtt_command_errors_use_the_api_codes(node: FakeNode) -> None:
    publisher = mqtt(node)
    bad = await publisher.execute("call.hangup", b"{not json")
    assert bad["error"]["code"] == "invalid_json" and bad["error"]["details"][0]["type"]
    unknown = await publisher.execute("call.explode", b"{}")
    assert unknown["error"]["code"] == "resource_not_found"
    assert unknown["error"]["details"][0]["field"] == "command"
    missing = await publisher.execute("call.send_dtmf", b'{"call_id": "call_x"}')
    assert missing["error"]["message"] == "digits is required"


# --- request size limits ------------------------------------------------------------------


def test_a_body_over_64_kib_is_413_naming_the_limit(client: TestClient, node: FakeNode) -> None:
    res = originate(client, variables={"notes": "x" * 70_000})
    body = error(res, 413, "payload_too_large")
    assert body["message"].startswith(f"request body exceeds {MAX_REQUEST_BYTES} bytes (got 7")
    assert body["details"][0]["limit"] == MAX_REQUEST_BYTES

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while the route reads
        yield b'{"to": "+15551234567", "agent": "echo", "variables": {"notes": "'
        for _ in range(80):
            yield b"x" * 1000
        yield b'"}}'

    chunked = client.post("/v1/calls", content=chunks(),
                          headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert "content-length" not in {k.lower() for k in chunked.request.headers}
    assert error(chunked, 413, "payload_too_large")["details"][0]["limit"] == MAX_REQUEST_BYTES
    assert not node.worker.requests  # nothing reached the worker
    assert originate(client).status_code == 202


def test_variables_are_bounded_in_count_name_value_and_total(
    client: TestClient, node: FakeNode
) -> None:
    def refused(variables: dict[str, str]) -> dict[str, Any]:
        body = error(originate(client, variables=variables), 422, "invalid_parameter")
        return dict(body["details"][0])

    many = refused({f"k{i}": "v" for i in range(MAX_VARIABLES + 1)})
    assert (many["field"], many["limit"]) == ("variables", MAX_VARIABLES)
    assert many["message"] == f"variables: at most {MAX_VARIABLES} entries"
    name = refused({"k" * (MAX_VARIABLE_NAME + 1): "v"})
    assert name["field"].startswith("variables.") and name["limit"] == MAX_VARIABLE_NAME
    value = refused({"lead": "v" * (MAX_VARIABLE_VALUE + 1)})
    assert (value["field"], value["limit"]) == ("variables.lead", MAX_VARIABLE_VALUE)
    assert value["message"] == f"variables.lead: at most {MAX_VARIABLE_VALUE} characters"
    total = refused({f"k{i}": "v" * 1000 for i in range(20)})
    assert (total["field"], total["limit"]) == ("variables", MAX_VARIABLES_BYTES)
    assert f"at most {MAX_VARIABLES_BYTES} bytes" in total["message"]
    assert not node.worker.requests
    fits = {f"k{i}": "v" * 200 for i in range(MAX_VARIABLES)}
    assert originate(client, variables=fits).status_code == 202


async def test_an_mqtt_originate_over_64_kib_is_refused_naming_the_limit(node: FakeNode) -> None:
    body = {"to": "+15551234567", "agent": "echo", "variables": {"notes": "x" * 70_000}}
    reply = await mqtt(node).execute("call.originate", json.dumps(body).encode())
    assert reply["error"]["code"] == "payload_too_large"
    assert reply["error"]["details"][0]["limit"] == MAX_REQUEST_BYTES
    assert not node.worker.requests


# --- docs ---------------------------------------------------------------------------------


def test_docs_are_served_from_the_package_without_a_cdn(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs/static/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        res = client.get(f"/docs/static/{asset}")  # no key needed, like /docs
        assert res.status_code == 200 and len(res.content) > 10_000, asset


# --- the OpenAPI document -------------------------------------------------------------------


def test_openapi_document_validates_and_matches_responses(
    client: TestClient, node: FakeNode, tmp_path: Path, clock: Clock
) -> None:
    doc = client.get("/openapi.json").json()
    validate(doc)
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    seen: set[tuple[str, str, str]] = set()

    def check(method: str, url: str, template: str, **kw: Any) -> httpx.Response:
        res = client.request(method, url, **kw)
        op = doc["paths"][template][method.lower()]
        documented = op["responses"].get(str(res.status_code))
        assert documented, f"{method} {template} answered {res.status_code}, undocumented"
        content = documented.get("content", {})
        if "application/json" in content:
            schema = {**content["application/json"]["schema"], "components": doc["components"]}
            jsonschema.Draft202012Validator(schema).validate(res.json())
        seen.add((template, method.lower(), str(res.status_code)))
        return res

    write_wav(tmp_path / "r.wav")
    add_call(node, "call_" + "d" * 24, recording_path=str(tmp_path / "r.wav"))
    rec = "/v1/calls/call_" + "d" * 24
    call_id = check("POST", "/v1/calls", "/v1/calls", json={"to": "+15551234567",
                    "agent": "echo"}, headers=AUTH).json()["data"]["id"]  # fmt: skip
    live = f"/v1/calls/{call_id}"
    check("POST", "/v1/calls", "/v1/calls", json={"to": "1"}, headers=AUTH)
    malformed = {**AUTH, "Content-Type": "application/json"}
    huge = {"to": "+15551234567", "agent": "echo", "variables": {"a": "x" * 70_000}}
    check("POST", "/v1/calls", "/v1/calls", content=b"{not json", headers=malformed)
    check("POST", "/v1/calls", "/v1/calls", json=huge, headers=AUTH)
    for action in ("transfer", "dtmf"):
        template = "/v1/calls/{call_id}/" + action
        check("POST", f"{live}/{action}", template, content=b"[", headers=malformed)
        check("POST", f"{live}/{action}", template, json={"x": "y" * 70_000}, headers=AUTH)
    check("POST", "/v1/calls", "/v1/calls", json={}, headers={"Authorization": "Bearer x"})
    check(
        "POST",
        "/v1/calls",
        "/v1/calls",
        json={"to": "+15551234567", "agent": "echo"},
        headers={**AUTH, "Idempotency-Key": "k"},
    )
    check(
        "POST",
        "/v1/calls",
        "/v1/calls",
        json={"to": "+15551234568", "agent": "echo"},
        headers={**AUTH, "Idempotency-Key": "k"},
    )
    node.worker.refuse = CommandError("capacity_exceeded", "full")
    check(
        "POST", "/v1/calls", "/v1/calls", json={"to": "+15551234567", "agent": "echo"}, headers=AUTH
    )
    node.worker.refuse = None
    check("GET", "/v1/calls?status=dialing", "/v1/calls", headers=AUTH)
    check("GET", "/v1/calls?per_page=0", "/v1/calls", headers=AUTH)
    check("GET", live, "/v1/calls/{call_id}", headers=AUTH)
    check("GET", "/v1/calls/call_x", "/v1/calls/{call_id}", headers=AUTH)
    for action, body in (
        ("transfer", {"target": "+15550002"}),
        ("dtmf", {"digits": "1"}),
        ("hangup", None),
    ):
        template = "/v1/calls/{call_id}/" + action
        check("POST", f"{live}/{action}", template, json=body, headers=AUTH)
        check("POST", f"/v1/calls/call_x/{action}", template, json=body, headers=AUTH)
        check("POST", f"{rec}/{action}", template, json=body, headers=AUTH)
    check("POST", f"{live}/dtmf", "/v1/calls/{call_id}/dtmf", json={"digits": "?"}, headers=AUTH)
    check("POST", f"{live}/transfer", "/v1/calls/{call_id}/transfer", json={}, headers=AUTH)
    check("GET", f"{live}/events", "/v1/calls/{call_id}/events", headers=AUTH)
    check("GET", "/v1/calls/call_x/events", "/v1/calls/{call_id}/events", headers=AUTH)
    check("GET", f"{rec}/recording", "/v1/calls/{call_id}/recording", headers=AUTH)
    check(
        "GET",
        f"{rec}/recording",
        "/v1/calls/{call_id}/recording",
        headers={**AUTH, "Range": "bytes=0-9"},
    )
    check(
        "GET",
        f"{rec}/recording",
        "/v1/calls/{call_id}/recording",
        headers={**AUTH, "Range": "bytes=999999-"},
    )
    check("GET", f"{live}/recording", "/v1/calls/{call_id}/recording", headers=AUTH)
    check("GET", "/v1/trunks", "/v1/trunks", headers=AUTH)
    check("GET", "/v1/trunks/carrier", "/v1/trunks/{trunk_id}", headers=AUTH)
    check("GET", "/v1/trunks/x", "/v1/trunks/{trunk_id}", headers=AUTH)
    for path in ("/v1/trunks", "/v1/numbers", "/v1/agents"):
        check("GET", path, path, headers=AUTH)
        check("GET", f"{path}?per_page=0", path, headers=AUTH)
    check("GET", f"{live}/events?page=0", "/v1/calls/{call_id}/events", headers=AUTH)
    for path in ("/health", "/readiness", "/liveness", "/version", "/metrics"):
        check("GET", path, path)
    node.draining = True
    check("GET", "/readiness", "/readiness")
    node.worker.exited.set()
    check("GET", "/health", "/health")
    exercise_campaigns(check)
    clock.now += 60  # a new minute for the rate limit: the requests above took 100
    exercise_webhooks(check, node)
    clock.now += 60  # and another for the recordings' and analytics' requests
    exercise_recordings(check, node, tmp_path)
    for path in ("/v1/analytics/calls", "/v1/analytics/calls/hourly", "/v1/analytics/calls/daily"):
        check("GET", f"{path}?trunk=carrier", path, headers=AUTH)
        check("GET", f"{path}?date_from=yesterday", path, headers=AUTH)
    check("POST", "/v1/node/reload", "/v1/node/reload", headers=AUTH)
    node.reload_problems = ["node.yaml: numbers[0].agent: 'x' is not one of the agents (bot)"]
    check("POST", "/v1/node/reload", "/v1/node/reload", headers=AUTH)
    client.app.state.limiter.per_minute = 0  # type: ignore[attr-defined]
    check("POST", "/v1/calls", "/v1/calls", json={}, headers=AUTH)
    documented = {(p, m, s) for p, ops in doc["paths"].items() for m, op in ops.items()
                  for s in op["responses"]}  # fmt: skip
    # Every documented response was produced, except: 401 and 429 come from one guard in
    # front of every route (produced above on POST /v1/calls), and 422 cannot happen on
    # routes whose only parameters are ids in the path.
    path_only = {
        "/v1/campaigns/{campaign_id}",
        "/v1/campaigns/{campaign_id}/launch",
        "/v1/campaigns/{campaign_id}/pause",
        "/v1/campaigns/{campaign_id}/resume",
        "/v1/campaigns/{campaign_id}/stop",
        "/v1/campaigns/{campaign_id}/stats",
        "/v1/calls/{call_id}",
        "/v1/calls/{call_id}/hangup",
        "/v1/calls/{call_id}/recording",
        "/v1/recordings/{call_id}",
        "/v1/recordings/{call_id}/audio",
        "/v1/trunks/{trunk_id}",
        "/v1/webhooks/{webhook_id}",  # GET and DELETE (PATCH has a body)
        "/v1/webhooks/{webhook_id}/test",
    }
    assert {("/v1/calls", "post", "401"), ("/v1/calls", "post", "429")} <= seen
    missing = {
        d
        for d in documented - seen
        if d[2] not in ("401", "429") and not (d[2] == "422" and d[0] in path_only)
    }
    assert not missing, sorted(missing)


# --- the CLI against the API ----------------------------------------------------------------


def test_cli_call_and_calls_print_tables_or_json(
    client: TestClient, monkeypatch: Any, capsys: Any
) -> None:
    from gateway.cli import client as api_client
    from gateway.cli import main

    def via_app(method: str, url: str, **kw: Any) -> httpx.Response:
        kw.pop("timeout", None)
        return client.request(method, url.removeprefix("http://node:8080"), **kw)

    monkeypatch.setattr(api_client.httpx, "request", via_app)
    monkeypatch.setenv("SIPEDGE_API_URL", "http://node:8080")
    monkeypatch.setenv("SIPEDGE_API_KEY", KEY)
    argv = ["call", "--to", "+15551234567", "--agent", "echo", "--var", "lead=42"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "status    dialing" in out and "var lead  42" in out and KEY not in out
    assert main(["calls", "--status", "dialing"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "STATUS", "DIR", "FROM", "TO", "TRUNK", "AGENT", "CREATED",
                                "SECS", "REASON"]  # fmt: skip
    assert "+15551234567" in table[1] and table[-1] == "page 1 of 1, 1 calls"
    assert main(["calls", "--json"]) == 0
    assert '"total": 1' in capsys.readouterr().out
    assert main(["calls", "--api-key", "wrong"]) == 1
    assert "HTTP 401: unauthorized" in capsys.readouterr().err
    assert main(["call", "--to", "+15551234567", "--agent", "echo", "--var", "novalue"]) == 2


def test_health_and_metrics_report_the_sip_front(client: TestClient, node: FakeNode) -> None:
    worker = FrontWorker("sip:127.0.0.1:5160", "worker-1", active=True, probing=True, calls=2)
    node.front = FrontHealth("embedded", True, [worker], {"script:front_flood_dropped": 7})
    health = client.get("/health").json()
    assert health["checks"]["sip_front"] == "ok"
    assert health["checks"]["sip_front_workers"] == "1/1 active"
    text = client.get("/metrics").text
    assert "sipedge_front_up 1" in text and "sipedge_front_flood_dropped_total 7" in text
    assert 'sipedge_front_worker_calls{worker="1"} 2' in text
    node.front = FrontHealth("embedded", False)
    down = client.get("/health")
    assert down.status_code == 503 and "SIP front is down" in down.json()["reasons"]
    assert client.get("/readiness").status_code == 503
    assert "sipedge_front_up 0" in client.get("/metrics").text
    node.front = FrontHealth("external", True)
    assert client.get("/health").json()["checks"]["sip_front"] == "external"
    assert "sipedge_front_up" not in client.get("/metrics").text


def test_a_reload_answers_what_changed_or_each_problem_of_a_refused_file(
    client: httpx.Client, node: FakeNode
) -> None:
    ok = client.post("/v1/node/reload", headers=AUTH)
    assert ok.status_code == 200, ok.text
    assert ok.json()["data"]["changed"] == ["numbers"]
    node.reload_problems = ["node.yaml: sip.port: changed; restart", "node.yaml: x: bad"]
    refused = client.post("/v1/node/reload", headers=AUTH)
    assert refused.status_code == 422, refused.text
    details = refused.json()["error"]["details"]
    assert [d["message"] for d in details] == node.reload_problems
    assert client.post("/v1/node/reload").status_code == 401


def exercise_recordings(check: Callable[..., httpx.Response], node: FakeNode, tmp: Path) -> None:
    """Every documented answer of /v1/recordings, once (the OpenAPI test's part)."""
    call_id = "call_" + "f" * 24
    add_call(node, call_id)
    finished_recording(node, call_id, tmp / "f.wav")
    root, one = "/v1/recordings", "/v1/recordings/{call_id}"
    check("GET", root, root, headers=AUTH)
    check("GET", f"{root}?page=1&skip=1", root, headers=AUTH)
    check("GET", f"{root}/{call_id}", one, headers=AUTH)
    check("GET", f"{root}/call_nope", one, headers=AUTH)
    audio = one + "/audio"
    check("GET", f"{root}/{call_id}/audio", audio, headers=AUTH)
    check("GET", f"{root}/{call_id}/audio", audio, headers={**AUTH, "Range": "bytes=0-1"})
    check("GET", f"{root}/{call_id}/audio", audio, headers={**AUTH, "Range": "bytes=99999999-"})
    check("GET", f"{root}/call_nope/audio", audio, headers=AUTH)
    check("DELETE", f"{root}/{call_id}", one, headers=AUTH)
    check("DELETE", f"{root}/{call_id}", one, headers=AUTH)  # 404: deleted already


def exercise_campaigns(check: Callable[..., httpx.Response]) -> None:
    """Every documented answer of /v1/campaigns, once (the OpenAPI test's part)."""
    root, one = "/v1/campaigns", "/v1/campaigns/{campaign_id}"
    body = {"name": "n", "agent": "echo", "contacts": [{"to": "+15551230001"}]}
    created = check("POST", root, root, json=body, headers={**AUTH, "Idempotency-Key": "c1"})
    cid = created.json()["data"]["id"]
    check("POST", root, root, json={**body, "name": "m"}, headers={**AUTH, "Idempotency-Key": "c1"})
    check("POST", root, root, json={"name": "n"}, headers=AUTH)  # 422: no agent
    malformed = {**AUTH, "Content-Type": "application/json"}
    check("POST", root, root, content=b"{", headers=malformed)
    check("POST", root, root, json={**body, "name": "x" * 70_000}, headers=AUTH)
    check("GET", root, root, headers=AUTH)
    check("GET", f"{root}?status=bogus", root, headers=AUTH)
    url = f"{root}/{cid}"
    check("GET", url, one, headers=AUTH)
    check("GET", f"{root}/cmp_nope", one, headers=AUTH)
    contacts = one + "/contacts"
    check("GET", f"{url}/contacts", contacts, headers=AUTH)
    check("GET", f"{url}/contacts?status=bogus", contacts, headers=AUTH)
    check("GET", f"{root}/cmp_nope/contacts", contacts, headers=AUTH)
    csv_headers = {**AUTH, "Content-Type": "text/csv"}
    check("POST", f"{url}/contacts", contacts, content=b"to,lead\n+15551230002,L2\n",
          headers=csv_headers)  # fmt: skip
    check("POST", f"{url}/contacts", contacts, content=b"{", headers=malformed)
    check("POST", f"{url}/contacts", contacts, json={"contacts": [{"to": "x" * 70_000}]},
          headers=AUTH)  # fmt: skip
    check("POST", f"{url}/contacts", contacts, json={"contacts": [{"to": "5"}]}, headers=AUTH)
    check("POST", f"{root}/cmp_nope/contacts", contacts,
          json={"contacts": [{"to": "+15551230008"}]}, headers=AUTH)  # fmt: skip
    check("GET", f"{url}/stats", one + "/stats", headers=AUTH)
    check("GET", f"{root}/cmp_nope/stats", one + "/stats", headers=AUTH)
    for op in ("pause", "resume", "launch", "stop"):
        check("POST", f"{root}/cmp_nope/{op}", f"{one}/{op}", headers=AUTH)
    check("POST", f"{url}/pause", one + "/pause", headers=AUTH)  # 409: a draft
    check("POST", f"{url}/launch", one + "/launch", headers=AUTH)
    check("POST", f"{url}/pause", one + "/pause", headers=AUTH)
    check("POST", f"{url}/resume", one + "/resume", headers=AUTH)
    check("DELETE", url, one, headers=AUTH)  # 409: not a draft
    check("POST", f"{url}/stop", one + "/stop", headers=AUTH)
    check("POST", f"{url}/resume", one + "/resume", headers=AUTH)  # 409: stopped
    check("POST", f"{url}/launch", one + "/launch", headers=AUTH)  # 409
    check("POST", f"{url}/stop", one + "/stop", headers=AUTH)  # 409
    check(
        "POST",
        f"{url}/contacts",
        contacts,
        json={"contacts": [{"to": "+15551230009"}]},
        headers=AUTH,
    )  # fmt: skip  409: stopped
    draft = check("POST", root, root, json=body, headers=AUTH).json()["data"]["id"]
    check("DELETE", f"{root}/{draft}", one, headers=AUTH)
    check("DELETE", f"{root}/{draft}", one, headers=AUTH)  # 404


def exercise_webhooks(check: Callable[..., httpx.Response], node: FakeNode) -> None:
    """Every documented answer of /v1/webhooks, once (the OpenAPI test's part)."""
    root, one = "/v1/webhooks", "/v1/webhooks/{webhook_id}"
    created = check("POST", root, root, json={"url": "http://127.0.0.1:9/h"}, headers=AUTH)
    url = f"{root}/{created.json()['data']['id']}"
    check("POST", root, root, json={"url": "ftp://x"}, headers=AUTH)  # 422
    malformed = {**AUTH, "Content-Type": "application/json"}
    check("POST", root, root, content=b"{", headers=malformed)
    check("POST", root, root, json={"url": "http://x/" + "x" * 70_000}, headers=AUTH)
    check("GET", root, root, headers=AUTH)
    check("GET", f"{root}?per_page=0", root, headers=AUTH)
    check("GET", url, one, headers=AUTH)
    check("GET", f"{root}/whk_nope", one, headers=AUTH)
    check("PATCH", url, one, json={"enabled": False}, headers=AUTH)
    check("PATCH", url, one, json={"enabled": "maybe"}, headers=AUTH)  # 422
    check("PATCH", url, one, content=b"{", headers=malformed)
    check("PATCH", url, one, json={"enabled": True, "x": "y" * 70_000}, headers=AUTH)
    check("PATCH", f"{root}/whk_nope", one, json={"enabled": True}, headers=AUTH)
    check("POST", f"{url}/test", one + "/test", headers=AUTH)
    check("POST", f"{root}/whk_nope/test", one + "/test", headers=AUTH)
    log = one + "/deliveries"
    check("GET", f"{url}/deliveries", log, headers=AUTH)
    check("GET", f"{url}/deliveries?status=bogus", log, headers=AUTH)
    check("GET", f"{root}/whk_nope/deliveries", log, headers=AUTH)
    node.webhook_store.sync_config(
        [ConfiguredWebhook("cp", "http://127.0.0.1:9/h", ["*"], True, "s" * 16)]
    )
    check("DELETE", f"{root}/cp", one, headers=AUTH)  # 409: in the config file
    check("DELETE", url, one, headers=AUTH)
    check("DELETE", url, one, headers=AUTH)  # 404


def test_campaigns_through_the_api_with_csv_contacts_and_named_problems(
    client: httpx.Client, node: FakeNode
) -> None:
    body = {"name": "renewals", "agent": "echo", "trunks": ["carrier"],
            "contacts": [{"to": "+15551230001", "variables": {"lead": "L1"}}],
            "window": {"start": "09:00", "end": "17:00", "timezone": "Europe/London"}}  # fmt: skip
    created = client.post("/v1/campaigns", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    campaign = created.json()["data"]
    assert (campaign["status"], campaign["contacts_total"]) == ("draft", 1)
    url = f"/v1/campaigns/{campaign['id']}"
    csv = b"to,timezone,lead\n+15551230002,America/New_York,L2\n+15551230003,,L3\n"
    added = client.post(f"{url}/contacts", content=csv,
                        headers={**AUTH, "Content-Type": "text/csv"})  # fmt: skip
    assert added.status_code == 200, added.text
    assert added.json()["data"]["contacts_total"] == 3
    listed = client.get(f"{url}/contacts", headers=AUTH).json()
    rows = {c["to"]: c for c in listed["data"]}
    assert rows["+15551230002"]["timezone"] == "America/New_York"
    assert rows["+15551230003"]["variables"] == {"lead": "L3"}
    assert listed["meta"]["total"] == 3

    duplicate = client.post(f"{url}/contacts", json={"contacts": [{"to": "+15551230001"}]},
                            headers=AUTH)  # fmt: skip
    assert duplicate.status_code == 422
    assert "+15551230001" in duplicate.json()["error"]["message"]
    bad_row = client.post(f"{url}/contacts", content=b"to\n+15551230004\n555\n",
                          headers={**AUTH, "Content-Type": "text/csv"})  # fmt: skip
    assert bad_row.status_code == 422
    no_to = client.post(f"{url}/contacts", content=b"number\n+15551230004\n",
                        headers={**AUTH, "Content-Type": "text/csv"})  # fmt: skip
    assert no_to.status_code == 422 and "`to` column" in no_to.json()["error"]["message"]
    unknown_agent = client.post("/v1/campaigns", json={**body, "agent": "nobody"}, headers=AUTH)
    assert unknown_agent.status_code == 422
    assert unknown_agent.json()["error"]["details"][0]["field"] == "agent"
    bad_zone = client.post("/v1/campaigns", json={**body, "window": {"timezone": "Nowhere/X"}},
                           headers=AUTH)  # fmt: skip
    assert bad_zone.status_code == 422 and "IANA" in bad_zone.text
    stats = client.get(f"{url}/stats", headers=AUTH).json()["data"]
    assert stats["contacts"]["pending"] == 3 and stats["calls"]["attempted"] == 0
