"""A test's view of a node's MQTT side: collect events, send commands (MQTT 5 request/response)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class MqttWatch:
    """Subscribes to `{prefix}/#` from a background paho thread; tests wait on predicates."""

    def __init__(
        self, port: int, prefix: str = "sipedge", node: str = "test-node", persistent: bool = False
    ) -> None:
        """`persistent`: an MQTT 5 session the broker keeps across our disconnects, so QoS 1
        messages published while we reconnect are queued for us, not lost."""
        self.port, self.prefix, self.node = port, prefix, node
        self.persistent = persistent
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._replies: dict[bytes, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._reply_topic = f"test/replies/{uuid.uuid4().hex[:8]}"
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            protocol=paho.MQTTv5,
            client_id=f"watch-{uuid.uuid4().hex[:8]}",
        )
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a, **k: self._subscribed.set()

    def _on_connect(self, client: paho.Client, *args: Any) -> None:
        client.subscribe([(f"{self.prefix}/#", 1), (self._reply_topic, 1)])

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            payload = {"raw": msg.payload.decode(errors="replace")}
        with self._cond:
            if msg.topic == self._reply_topic:
                corr = getattr(msg.properties, "CorrelationData", None) or b""
                self._replies[corr] = payload
            else:
                self.messages.append((msg.topic, payload))
            self._cond.notify_all()

    def __enter__(self) -> MqttWatch:
        deadline = time.monotonic() + 10
        while True:
            try:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = 600 if self.persistent else 0
                self.client.connect(
                    "127.0.0.1", self.port, clean_start=not self.persistent, properties=props
                )
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("MQTT subscribe not acknowledged")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()  # first: the network thread then ends at once, not after 1 s
        self.client.loop_stop()

    # -- events -------------------------------------------------------------------------------

    def events(self, call_id: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            out = [p for t, p in self.messages if "/calls/" in t and t.endswith("/events")]
        return [e for e in out if call_id is None or e.get("call_id") == call_id]

    def wait(self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what or predicate}; "
                        f"seen: {[p for _, p in self.messages][-15:]}"
                    )
                self._cond.wait(left)

    def wait_event(
        self, type_: str, call_id: str | None = None, timeout: float = 20.0, **data: Any
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.events(call_id):
                if e["type"] == type_ and all(e["data"].get(k) == v for k, v in data.items()):
                    return e
            return None

        return self.wait(find, timeout, f"{type_} {call_id or ''} {data}")  # type: ignore[no-any-return]

    def node_events(self, type_: str) -> list[dict[str, Any]]:
        """The node's own events (node.*, on {prefix}/{node}/events), in arrival order."""
        topic = f"{self.prefix}/{self.node}/events"
        with self._cond:
            return [p for t, p in self.messages if t == topic and p.get("type") == type_]

    def wait_node_event(self, type_: str, count: int = 1, timeout: float = 20.0) -> dict[str, Any]:
        """The `count`-th node event of `type_` (the first by default), once it arrives."""

        def find() -> dict[str, Any] | None:
            seen = self.node_events(type_)
            return seen[count - 1] if len(seen) >= count else None

        return self.wait(find, timeout, f"node event {type_} #{count}")  # type: ignore[no-any-return]

    def campaign_events(self, campaign_id: str) -> list[dict[str, Any]]:
        topic = f"{self.prefix}/{self.node}/campaigns/{campaign_id}/events"
        with self._cond:
            return [p for t, p in self.messages if t == topic]

    def wait_campaign_event(
        self, campaign_id: str, type_: str, timeout: float = 60.0
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.campaign_events(campaign_id) if e["type"] == type_), None)

        return self.wait(find, timeout, f"{type_} of {campaign_id}")  # type: ignore[no-any-return]

    def retained(self, suffix: str) -> dict[str, Any] | None:
        with self._cond:
            hits = [p for t, p in self.messages if t.endswith(suffix)]
        return hits[-1] if hits else None

    # -- commands -----------------------------------------------------------------------------

    def command(self, name: str, payload: Any, timeout: float = 15.0) -> dict[str, Any]:
        corr = uuid.uuid4().hex.encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self._reply_topic
        props.CorrelationData = corr
        body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        topic = f"{self.prefix}/{self.node}/commands/{name}"
        self.client.publish(topic, body, qos=1, properties=props)
        return self.wait(lambda: self._replies.get(corr), timeout, f"reply to {name}")  # type: ignore[no-any-return]
