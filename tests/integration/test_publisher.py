"""The publisher against a real mosquitto on 127.0.0.1: order, outages, replay, commands."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.events.outbox import OutboxRow
from gateway.events.publisher import BrokerConnection, Publisher
from gateway.events.schema import (
    CallDtmf,
    CallIncoming,
    CommandError,
    Event,
    new_call_id,
    status_topic,
    trunk_state_topic,
)
from gateway.node.broker import EmbeddedBroker
from gateway.store.sqlite import Store, StoredCall
from tests.integration.mosquitto import (  # noqa: F401 - fixtures
    mosquitto_fixture,
    persistent_mosquitto_fixture,
)

NODE = "node-a"
REPO = Path(__file__).resolve().parents[2]
PREFIX = "it"
EVENTS = f"{PREFIX}/{NODE}/calls/+/events"


def settings(broker: EmbeddedBroker) -> BrokerConnection:
    return BrokerConnection(host=broker.host, port=broker.port, prefix=PREFIX)


def new_publisher(store: Store, broker: EmbeddedBroker, **kw: Any) -> Publisher:
    kw.setdefault("backoff_initial", 0.05)
    kw.setdefault("backoff_max", 0.3)
    kw.setdefault("poll_interval", 0.2)
    return Publisher(store, settings(broker), NODE, **kw)


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not check():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


class Collector:
    """A control-plane subscriber: keeps every message, reconnects after broker restarts."""

    def __init__(self, broker: EmbeddedBroker, topic: str, *, persistent: bool = False) -> None:
        self.broker, self.topic, self.persistent = broker, topic, persistent
        self.events: list[Event] = []
        self.stop_broker_at: int | None = None  # to stop it in the middle of a stream
        self.subscribed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def ids(self) -> set[str]:
        return {e.id for e in self.events}

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300 if self.persistent else 0
        while True:
            client = aiomqtt.Client(
                self.broker.host, self.broker.port, identifier="control-plane",
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=not self.persistent,
                properties=props,
            )  # fmt: skip
            try:
                async with client:
                    await client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.events.append(Event.from_json(message.payload))  # type: ignore[arg-type]
                        self._changed.set()
                        if len(self.events) == self.stop_broker_at:
                            self.broker.stop()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.05)

    async def wait_for(self, ids: set[str], timeout: float = 15.0) -> None:
        async def wait() -> None:
            while not ids <= self.ids():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Collector]:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), 5)
        try:
            yield self
        finally:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    def seqs_first_seen(self) -> dict[str, list[int]]:
        seen: set[str] = set()
        per_call: dict[str, list[int]] = {}
        for event in self.events:
            if event.id not in seen and event.call_id is not None:
                seen.add(event.id)
                per_call.setdefault(event.call_id, []).append(event.seq)
        return per_call


def start_calls(store: Store, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        call_id = new_call_id()
        store.create_call(StoredCall(id=call_id, direction="inbound", status="incoming"),
                          Event.of(CallIncoming(from_="+1", to="+2"), node=NODE,
                                   call_id=call_id))  # fmt: skip
        ids.append(call_id)
    return ids


def write_dtmf(store: Store, calls: list[str], rounds: int) -> set[str]:
    """Interleave events of several calls; returns the event ids written."""
    written = set()
    for _ in range(rounds):
        for call_id in calls:
            [event] = store.add_event(Event.of(CallDtmf(digit="7"), node=NODE, call_id=call_id))
            written.add(event.id)
    return written


def all_ids(store: Store, calls: list[str]) -> set[str]:
    return {e.id for c in calls for e in store.call_events(c)}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "sipedge.db"), prefix=PREFIX)


@pytest.mark.integration
async def test_events_are_delivered_in_order_per_call_and_marked(
    mosquitto: EmbeddedBroker, store: Store
) -> None:
    publisher = new_publisher(store, mosquitto)
    async with Collector(mosquitto, EVENTS).running() as collector:
        await publisher.start()
        calls = start_calls(store, 3)
        for _ in range(5):
            write_dtmf(store, calls, 4)
            publisher.wake()
        await collector.wait_for(all_ids(store, calls))
        await eventually(lambda: publisher.backlog == 0)
        await publisher.stop()
    assert collector.seqs_first_seen() == {c: list(range(1, 22)) for c in calls}
    assert len(collector.events) == 63  # nothing sent twice without a failure


@pytest.mark.integration
async def test_broker_outage_loses_nothing_and_keeps_per_call_order(
    persistent_mosquitto: EmbeddedBroker, store: Store
) -> None:
    broker = persistent_mosquitto
    publisher = new_publisher(store, broker, batch_size=10)
    collector = Collector(broker, EVENTS, persistent=True)
    async with collector.running():
        await publisher.start()
        calls = start_calls(store, 3)
        write_dtmf(store, calls, 5)
        publisher.wake()
        await collector.wait_for(all_ids(store, calls))

        collector.stop_broker_at = len(collector.events) + 20
        write_dtmf(store, calls, 30)  # the broker goes away while these are in flight
        publisher.wake()
        await eventually(lambda: not broker.running)
        during = write_dtmf(store, calls, 20)
        publisher.wake()
        assert publisher.backlog >= len(during)
        await eventually(lambda: not publisher.connected)

        await asyncio.to_thread(broker.start)
        await collector.wait_for(all_ids(store, calls), timeout=20)
        await eventually(lambda: publisher.backlog == 0)
        await publisher.stop()
    assert collector.seqs_first_seen() == {c: list(range(1, 57)) for c in calls}


class ForgetfulStore(Store):
    """Delivery is remembered in memory only: a crash between PUBACK and the commit."""

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.forgotten: set[int] = set()

    def mark_delivered(self, rowids: Iterable[int]) -> None:
        self.forgotten.update(rowids)

    def undelivered(self, limit: int = 100, after_rowid: int = 0) -> list[OutboxRow]:
        rows = super().undelivered(limit + len(self.forgotten), after_rowid)
        return [r for r in rows if r.rowid not in self.forgotten][:limit]


@pytest.mark.integration
async def test_new_publisher_replays_undelivered_rows_with_the_same_ids(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    path = str(tmp_path / "replay.db")
    crashed = ForgetfulStore(path, prefix=PREFIX)
    async with Collector(mosquitto, EVENTS).running() as collector:
        first = new_publisher(crashed, mosquitto)
        await first.start()
        calls = start_calls(crashed, 2)
        write_dtmf(crashed, calls, 3)
        first.wake()
        await collector.wait_for(all_ids(crashed, calls))
        await first.stop()
        assert crashed.backlog() == 8
        crashed.close()

        store = Store(path, prefix=PREFIX)
        later = write_dtmf(store, calls, 2)  # written while no publisher runs
        assert store.backlog() == 12
        second = new_publisher(store, mosquitto)
        await second.start()
        await eventually(lambda: len(collector.events) == 8 + 12)
        await eventually(lambda: store.backlog() == 0)
        await second.stop()

    first_copies, replay = collector.events[:8], collector.events[8:]
    assert [e.id for e in replay[:8]] == [e.id for e in first_copies]
    assert [e.to_json() for e in replay[:8]] == [e.to_json() for e in first_copies]
    assert {e.id for e in replay[8:]} == later
    assert collector.seqs_first_seen() == {c: list(range(1, 7)) for c in calls}


async def handler(name: str, args: dict[str, Any]) -> dict[str, Any]:
    if name == "echo":
        return {"echo": args}
    if name == "hangup":
        raise CommandError("resource_not_found", "no such call", [{"field": "call_id"}])
    if name == "explode":
        raise RuntimeError("bug")
    raise CommandError("resource_not_found", f"unknown command {name}")


@asynccontextmanager
async def requester(broker: EmbeddedBroker) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Sends one command and awaits the reply whose correlation data matches."""
    reply_topic = f"replies/{uuid.uuid4().hex}"
    async with aiomqtt.Client(broker.host, broker.port,
                              protocol=aiomqtt.ProtocolVersion.V5) as client:  # fmt: skip
        await client.subscribe(reply_topic, qos=1)

        async def request(name: str, payload: bytes) -> Any:
            correlation = uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = correlation
            topic = f"{PREFIX}/{NODE}/commands/{name}"
            await client.publish(topic, payload, qos=1, properties=props)
            async for message in client.messages:
                if getattr(message.properties, "CorrelationData", None) == correlation:
                    return json.loads(message.payload)  # type: ignore[arg-type]
            raise AssertionError("no reply")

        yield lambda name, payload: asyncio.wait_for(request(name, payload), 5)


@pytest.mark.integration
async def test_commands_reply_on_the_response_topic_with_correlation_data(
    mosquitto: EmbeddedBroker, store: Store
) -> None:
    publisher = new_publisher(store, mosquitto, command_handler=handler)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as watcher:
        await watcher.subscribe(status_topic(PREFIX, NODE), qos=1)
        await publisher.start()
        async for message in watcher.messages:  # online is sent after subscribing to commands
            assert json.loads(message.payload)["state"] == "online"  # type: ignore[arg-type]
            break
    async with requester(mosquitto) as request:
        assert await request("echo", b'{"x": 1}') == {"data": {"echo": {"x": 1}}}
        bad = await request("echo", b"{not json")
        assert bad["error"]["code"] == "invalid_json"
        unknown = await request("fly", b"{}")
        assert unknown["error"]["code"] == "resource_not_found"
        known = await request("hangup", b'{"call_id": "call_1"}')
        assert known["error"] == {"code": "resource_not_found", "message": "no such call",
                                  "details": [{"location": None, "field": "call_id",
                                               "message": "no such call", "type": "invalid",
                                               "limit": None}]}  # fmt: skip
        crashed = await request("explode", b"{}")
        assert crashed["error"]["code"] == "internal_error"
        assert await request("echo", b"") == {"data": {"echo": {}}}  # still listening
    await publisher.stop()


@pytest.mark.integration
async def test_status_and_trunk_state_are_retained_and_stop_says_offline(
    mosquitto: EmbeddedBroker, store: Store
) -> None:
    publisher = new_publisher(
        store, mosquitto, status_provider=lambda: {"active_calls": 2, "capacity": 4}
    )
    publisher.publish_trunk_state("carrier1", {"state": "registered", "expires": 300})
    await publisher.start()
    await eventually(lambda: publisher.connected)
    trunk = trunk_state_topic(PREFIX, NODE, "carrier1")
    status = status_topic(PREFIX, NODE)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(f"{PREFIX}/{NODE}/#", qos=1)
        seen: dict[str, dict[str, Any]] = {}

        async def collect(until: Callable[[], bool]) -> None:
            async for message in client.messages:
                seen[str(message.topic)] = json.loads(message.payload)  # type: ignore[arg-type]
                if until():
                    return

        await asyncio.wait_for(collect(lambda: {status, trunk} <= set(seen)), 5)
        assert seen[status]["state"] == "online"
        assert (seen[status]["active_calls"], seen[status]["capacity"]) == (2, 4)
        assert seen[trunk]["state"] == "registered"
        await publisher.stop()
        await asyncio.wait_for(collect(lambda: seen[status]["state"] == "offline"), 5)


async def test_execute_never_raises_and_maps_errors_to_codes(store: Store) -> None:
    publisher = Publisher(store, BrokerConnection(), NODE, command_handler=handler,
                          commands={"echo", "explode"})  # fmt: skip
    assert await publisher.execute("echo", b'{"a": [1]}') == {"data": {"echo": {"a": [1]}}}
    assert (await publisher.execute("echo", b"[1]"))["error"]["code"] == "invalid_parameter"
    assert (await publisher.execute("echo", b"\xff"))["error"]["code"] == "invalid_json"
    assert (await publisher.execute("hangup", b"{}"))["error"]["code"] == "resource_not_found"
    assert (await publisher.execute("explode", b"{}"))["error"]["code"] == "internal_error"


_PUBLISHER_PROCESS = """
import asyncio, sys
from gateway.events.publisher import BrokerConnection, Publisher
from gateway.store.sqlite import Store

async def main() -> None:
    settings = BrokerConnection(port=int(sys.argv[2]), prefix=sys.argv[3])
    publisher = Publisher(Store(sys.argv[1], prefix=sys.argv[3]), settings, sys.argv[4])
    await publisher.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.integration
async def test_last_will_marks_a_killed_node_offline(
    mosquitto: EmbeddedBroker, tmp_path: Path
) -> None:
    status = status_topic(PREFIX, NODE)
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as client:
        await client.subscribe(status, qos=1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PUBLISHER_PROCESS,
            str(tmp_path / "node.db"), str(mosquitto.port), PREFIX, NODE,
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        try:
            states = (json.loads(m.payload)["state"] async for m in client.messages)  # type: ignore[arg-type]
            assert await asyncio.wait_for(anext(states), 10) == "online"
            proc.kill()
            assert await asyncio.wait_for(anext(states), 10) == "offline"
        finally:
            with suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
