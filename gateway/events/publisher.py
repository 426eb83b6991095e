"""MQTT side of a node: sends the store's event outbox (QoS 1, in order, at least once), keeps
node status and trunk state retained, and answers commands with MQTT 5 request/response.

Callers never wait on MQTT: they write to the store and call wake(). This task reconnects with
capped backoff and replays whatever is undelivered, so a broker outage only delays events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from gateway import __version__
from gateway.errors import detail, validation_details
from gateway.events.commands import MAX_REQUEST_BYTES
from gateway.events.outbox import Outbox, OutboxRow
from gateway.events.schema import (
    CommandError,
    command_name,
    command_topic,
    iso_z,
    status_topic,
    trunk_state_topic,
    utc_now,
)

log = logging.getLogger("gateway.publisher")  # the name it logged under before the move

CommandHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
StatusProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class BrokerConnection:
    """Connection settings; TLS is on when `tls` or any tls_* option is set."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = "sipedge"
    client_id: str | None = None
    keepalive: int = 30
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_insecure: bool = False
    tls: bool = False

    @property
    def tls_enabled(self) -> bool:
        return self.tls or bool(self.tls_ca or self.tls_cert or self.tls_insecure)

    @classmethod
    def from_config(cls, cfg: Any) -> BrokerConnection:
        """From `gateway.config.MqttSettings` (a SecretStr password, an optional tls block)."""
        password = cfg.password
        if password is not None and hasattr(password, "get_secret_value"):
            password = password.get_secret_value()
        tls = getattr(cfg, "tls", None)
        return cls(
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=password,
            prefix=cfg.prefix,
            client_id=cfg.client_id,
            keepalive=cfg.keepalive,
            tls_ca=getattr(tls, "ca_file", None),
            tls_cert=getattr(tls, "cert_file", None),
            tls_key=getattr(tls, "key_file", None),
            tls_insecure=bool(getattr(tls, "insecure", False)),
            tls=tls is not None,
        )


def _error(code: str, message: str, **where: Any) -> dict[str, Any]:
    """An error reply in the API's vocabulary, with one detail saying the same."""
    return CommandError(code, message, [detail(message, **where)]).to_dict()


def _causes(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _causes(sub)]
    return [exc]


class Publisher:
    """Outbox sender, retained state and command listener for one node."""

    def __init__(
        self,
        store: Outbox,
        settings: BrokerConnection,
        node: str,
        prefix: str | None = None,
        *,
        command_handler: CommandHandler | None = None,
        commands: Collection[str] | None = None,
        status_provider: StatusProvider | None = None,
        version: str = __version__,
        batch_size: int = 100,
        max_backlog: int = 100_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        poll_interval: float = 1.0,
        status_interval: float = 30.0,
        publish_timeout: float = 10.0,
        max_payload_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self._store = store
        self._settings = settings
        self.node = node
        self.prefix = prefix or settings.prefix
        self._handler = command_handler
        self._commands = frozenset(commands) if commands is not None else None
        self._status_provider = status_provider
        self._version = version
        self._batch_size = batch_size
        self.max_backlog = max_backlog
        self._backoff = (backoff_initial, backoff_max)
        self._poll_interval = poll_interval
        self._status_interval = status_interval
        self._publish_timeout = publish_timeout
        self.max_payload_bytes = max_payload_bytes

        self.delivered_total = 0
        self._backlog_warned = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiomqtt.Client | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._retained_wake = asyncio.Event()
        self._status_dirty = True
        self._trunk_states: dict[str, dict[str, Any]] = {}
        self._dirty_trunks: set[str] = set()
        self._command_tasks: set[asyncio.Task[None]] = set()

    # --- what callers use ----------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name=f"mqtt-publisher-{self.node}")

    async def stop(self, timeout: float = 2.0) -> None:
        """Say offline (retained), disconnect cleanly and end the task; undelivered rows stay
        in the outbox for the next start."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        client = self._client
        if client is not None:
            payload = json.dumps({"state": "offline", "ts": iso_z(utc_now())})
            try:
                await client.publish(self._status_topic, payload, 1, True, timeout=timeout)
            except aiomqtt.MqttError as exc:
                log.warning("event=mqtt_offline_not_sent node=%s error=%s", self.node, exc)
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        for pending in list(self._command_tasks):
            pending.cancel()
        log.info("event=mqtt_publisher_stopped node=%s backlog=%d", self.node, self.backlog)

    def wake(self) -> None:
        """Tell the publisher that new events are in the store (callable from any thread)."""
        self._set(self._wake)

    def _set(self, event: asyncio.Event) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if self._loop is None or running is self._loop:
            event.set()
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(event.set)

    @property
    def backlog(self) -> int:
        """Events written to the store and not yet acknowledged by the broker."""
        return self._store.backlog()

    @property
    def backlog_exceeded(self) -> bool:
        return self.backlog > self.max_backlog

    @property
    def connected(self) -> bool:
        return self._client is not None

    def publish_trunk_state(self, trunk_id: str, state: Mapping[str, Any]) -> None:
        """Retain `state` at trunks/{id}/state; re-sent after every reconnect."""
        self._trunk_states[trunk_id] = {**state, "ts": iso_z(utc_now())}
        self._dirty_trunks.add(trunk_id)
        self._set(self._retained_wake)

    def refresh_status(self) -> None:
        """Re-publish node status now (e.g. active_calls changed)."""
        self._status_dirty = True
        self._set(self._retained_wake)

    # --- connection loop -----------------------------------------------------------------

    @property
    def _status_topic(self) -> str:
        return status_topic(self.prefix, self.node)

    def _make_client(self) -> aiomqtt.Client:
        s = self._settings
        tls_params = None
        if s.tls_enabled:
            tls_params = aiomqtt.TLSParameters(
                ca_certs=s.tls_ca,
                certfile=s.tls_cert,
                keyfile=s.tls_key,
                cert_reqs=ssl.CERT_NONE if s.tls_insecure else ssl.CERT_REQUIRED,
            )
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=s.client_id or f"sipedge-{self.node}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self._status_topic, json.dumps({"state": "offline"}), 1, True),
            keepalive=s.keepalive,
            timeout=self._publish_timeout,
            tls_params=tls_params,
            tls_insecure=s.tls_insecure if s.tls_enabled else None,
        )
        client.pending_calls_threshold = self._batch_size + 10  # a full batch is in flight
        return client

    async def _run(self) -> None:
        delay = self._backoff[0]
        where = f"host={self._settings.host} port={self._settings.port} node={self.node}"
        while not self._stopping:
            try:
                async with self._make_client() as client:
                    self._client = client
                    delay = self._backoff[0]
                    log.info("event=mqtt_connected %s backlog=%d", where, self.backlog)
                    await self._session(client)
            except Exception as exc:
                causes = _causes(exc)
                if all(isinstance(c, aiomqtt.MqttError) for c in causes):
                    log.warning("event=mqtt_disconnected %s error=%r retry_in=%.1f",
                                where, str(causes[0]), delay)  # fmt: skip
                else:
                    log.exception("event=mqtt_session_failed %s retry_in=%.1f", where, delay)
            finally:
                self._client = None
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self._backoff[1])

    async def _session(self, client: aiomqtt.Client) -> None:
        await client.subscribe(command_topic(self.prefix, self.node, "+"), qos=1)
        self._status_dirty = True
        self._dirty_trunks = set(self._trunk_states)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._drain(client))
            group.create_task(self._retained(client))
            group.create_task(self._listen(client))

    # --- outbox --------------------------------------------------------------------------

    async def _drain(self, client: aiomqtt.Client) -> None:
        while True:
            self._wake.clear()
            rows = await asyncio.to_thread(self._store.undelivered, self._batch_size)
            if rows:
                await self._publish_rows(client, rows)
                if len(rows) == self._batch_size:
                    self._watch_backlog()
                continue
            self._watch_backlog()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    async def _publish_rows(self, client: aiomqtt.Client, rows: list[OutboxRow]) -> None:
        # Tasks start in creation order, so paho sends the rows in rowid order and the broker
        # sees them in that order; several are in flight at once for throughput.
        sends = [asyncio.create_task(client.publish(row.topic, row.payload, qos=1)) for row in rows]
        results = await asyncio.gather(*sends, return_exceptions=True)
        # Mark only the acknowledged prefix: a replay then resends a suffix, still in order.
        acked: list[int] = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                break
            acked.append(row.rowid)
        if acked:
            await asyncio.to_thread(self._store.mark_delivered, acked)
            self.delivered_total += len(acked)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            raise failed

    def _watch_backlog(self) -> None:
        backlog = self.backlog
        if backlog > self.max_backlog and not self._backlog_warned:
            self._backlog_warned = True
            log.warning("event=mqtt_backlog_high node=%s backlog=%d max=%d",
                        self.node, backlog, self.max_backlog)  # fmt: skip
        elif backlog <= self.max_backlog // 2 and self._backlog_warned:
            self._backlog_warned = False
            log.info("event=mqtt_backlog_ok node=%s backlog=%d", self.node, backlog)

    # --- retained node status and trunk state ----------------------------------------------

    def _status_payload(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self._status_provider is not None:
            try:
                extra = dict(self._status_provider())
            except Exception:
                log.exception("event=status_provider_failed node=%s", self.node)
        return {
            "state": "online",
            "version": self._version,
            "active_calls": 0,
            "capacity": 0,
            **extra,
            "ts": iso_z(utc_now()),
        }

    async def _retained(self, client: aiomqtt.Client) -> None:
        while not self._stopping:
            self._retained_wake.clear()
            if self._status_dirty:
                self._status_dirty = False
                payload = json.dumps(self._status_payload())
                await client.publish(self._status_topic, payload, qos=1, retain=True)
            while self._dirty_trunks and not self._stopping:
                trunk_id = self._dirty_trunks.pop()
                topic = trunk_state_topic(self.prefix, self.node, trunk_id)
                payload = json.dumps(self._trunk_states[trunk_id])
                await client.publish(topic, payload, qos=1, retain=True)
            try:
                await asyncio.wait_for(self._retained_wake.wait(), self._status_interval)
            except TimeoutError:
                self._status_dirty = True

    # --- commands ------------------------------------------------------------------------

    async def _listen(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            name = command_name(self.prefix, self.node, str(message.topic))
            if name is None:
                continue
            task = asyncio.create_task(self._answer(client, name, message))
            self._command_tasks.add(task)
            task.add_done_callback(self._command_tasks.discard)

    async def _answer(self, client: aiomqtt.Client, name: str, message: aiomqtt.Message) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        reply = await self.execute(name, message.payload)
        outcome = reply["error"]["code"] if "error" in reply else "ok"
        log.info("event=mqtt_command node=%s name=%s result=%s", self.node, name, outcome)
        if not response_topic:
            return
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if correlation is not None:
            out.CorrelationData = correlation
        try:
            await client.publish(response_topic, json.dumps(reply), qos=1, properties=out)
        except aiomqtt.MqttError as exc:
            log.warning("event=mqtt_command_reply_lost node=%s name=%s error=%s",
                        self.node, name, exc)  # fmt: skip

    async def execute(self, name: str, payload: Any) -> dict[str, Any]:
        """Run one command; the reply is `{"data": ...}` or `{"error": {...}}`, never raises.
        Errors are those of the HTTP API: the same codes, messages and `details` list."""
        size = len(payload) if isinstance(payload, bytes | bytearray | str) else 0
        limit = self.max_payload_bytes
        if size > limit:
            message = f"command payload exceeds {limit} bytes (got {size})"
            return _error("payload_too_large", message, location="body", type="too_large",
                          limit=limit)  # fmt: skip
        try:
            text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
            args = json.loads(text) if text not in (None, "", b"") else {}
        except (ValueError, TypeError) as exc:
            return _error("invalid_json", f"command payload is not valid JSON: {exc}",
                          location="body", type="json_invalid")  # fmt: skip
        if not isinstance(args, dict):
            return _error("invalid_parameter", "command payload must be a JSON object",
                          location="body", type="model_type")  # fmt: skip
        if self._handler is None or (self._commands is not None and name not in self._commands):
            return _error("resource_not_found", f"unknown command {name!r}", field="command",
                          type="unknown_command")  # fmt: skip
        try:
            result = await self._handler(name, args)
            reply: dict[str, Any] = json.loads(json.dumps({"data": result}))  # JSON-safe or raise
            return reply
        except CommandError as exc:
            return exc.to_dict()
        except ValidationError as exc:
            details = validation_details(exc.errors(include_url=False))
            return CommandError("invalid_parameter", details[0]["message"], details).to_dict()
        except Exception:
            log.exception("event=mqtt_command_failed node=%s name=%s", self.node, name)
            return _error("internal_error", f"command {name} failed")
