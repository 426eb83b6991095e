"""The peers bench/soak.py talks to besides SIPp: the streaming echo agent of
bench/media_latency.py with a route on which it drops the call, and an MQTT watcher that
indexes the node's events by call (a 30-minute run collects tens of thousands)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter, defaultdict
from typing import Any

from bench.media_latency import EchoBot
from tests.integration.mqtt_watch import MqttWatch


class DroppingEchoBot(EchoBot):
    """The streaming echo agent; a connection on /drop is closed by the agent mid-call."""

    drop_after = 1.5

    async def _handle(self, ws: Any) -> None:
        if ws.request.path.startswith("/drop"):
            loop = asyncio.get_running_loop()
            loop.call_later(self.drop_after, lambda: asyncio.ensure_future(ws.close()))
        with contextlib.suppress(Exception):  # the node may go away mid-call (crash tests)
            await super()._handle(ws)


class EventWatch(MqttWatch):
    """MqttWatch with the node's events indexed by call, for cheap waits over a long run."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.by_call: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.event_ids: Counter[str] = Counter()
        self.ended = 0  # call.completed / call.failed received

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                event = json.loads(msg.payload)
                if isinstance(event, dict) and "id" in event and "seq" in event:
                    self.event_ids[event["id"]] += 1
                    if event.get("call_id"):
                        self.by_call[event["call_id"]].append(event)
                    self.ended += event.get("type") in ("call.completed", "call.failed")
            super()._on_message(client, userdata, msg)

    def finished(self) -> int:
        return self.ended

    def first(self, call_id: str, types: tuple[str, ...], timeout: float) -> dict[str, Any] | None:
        def find() -> dict[str, Any] | None:
            return next((e for e in self.by_call.get(call_id, []) if e["type"] in types), None)

        with contextlib.suppress(AssertionError):
            return self.wait(find, timeout, f"{types} of {call_id}")  # type: ignore[no-any-return]
        return None
