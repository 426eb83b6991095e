"""The node process: config, store, MQTT, and the SIP worker process it supervises.

SIGTERM/SIGINT drain the node: new calls get 503, active calls may finish for up to
`node.drain_timeout` seconds, the rest are hung up, trunks unregister, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.calls.events import WorkerEvent
from gateway.config import Config, capacity_warning, public_url, worker_count
from gateway.errors import detail, refusal_code
from gateway.events.publisher import BrokerConnection, Publisher
from gateway.events.schema import CommandError
from gateway.metrics import NodeMetrics
from gateway.node.broker import EmbeddedBroker
from gateway.node.ledger import Ledger
from gateway.node.ports import check_ports_free
from gateway.store.sqlite import Store
from gateway.worker.ipc import IpcError, encode, event_from, read_message

if TYPE_CHECKING:
    from gateway.api import ApiServer

log = logging.getLogger("sipedge.node")

WORKER_START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0
WORKER_RESTART_MAX = 30.0
HEARTBEAT_S = 2.0


class WorkerLink:
    """The supervisor's end of one SIP worker process."""

    def __init__(self, node: Node, index: int) -> None:
        self.node = node
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [
            sys.executable,
            "-m",
            "gateway.worker",
            "--config",
            str(self.node.config_path),
            "--fd",
            str(child.fileno()),
            "--slot",
            str(self.index),
            "--log-level",
            logging.getLevelName(log.getEffectiveLevel()),
        ]
        self.proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=(child.fileno(),))
        child.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        self._reader_task = asyncio.create_task(self._read(reader))
        try:
            await asyncio.wait_for(self.ready.wait(), WORKER_START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError("SIP worker did not become ready") from None
        if self.exited.is_set():
            raise RuntimeError("SIP worker exited during start (see its log above)")
        log.info(
            "event=worker_ready worker=%d pid=%d status=%s",
            self.index,
            self.proc.pid,
            {k: v for k, v in self.status.items() if k != "trunks"},
        )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    message = await read_message(reader)
                except IpcError as exc:  # one bad frame is dropped; the link stays in step
                    log.error("event=worker_frame_dropped worker=%d error=%s", self.index, exc)
                    continue
                if message is None:
                    break
                kind = message.get("kind")
                if kind == "event":
                    try:
                        event, ts = event_from(message)
                    except IpcError as exc:
                        log.error("event=worker_event_dropped worker=%d error=%s", self.index, exc)
                        continue
                    self.node.on_worker_event(event, ts)
                elif kind == "reply":
                    future = self._pending.pop(int(message["id"]), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif kind == "ready":
                    self.status = message["status"]
                    self.ready.set()
        except (ConnectionError, ValueError) as exc:
            log.error("event=worker_link_broken worker=%d error=%s", self.index, exc)
        finally:
            if self.proc is not None:
                code = await self.proc.wait()
                level = logging.INFO if code == 0 else logging.ERROR
                log.log(level, "event=worker_exited worker=%d code=%s", self.index, code)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CommandError("internal_error", "SIP worker exited"))
            self.exited.set()
            self.ready.set()

    async def request(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        if self.writer is None or self.exited.is_set():
            raise CommandError("internal_error", "SIP worker is not running")
        rid = next(self._ids)
        frame = encode({"kind": "request", "id": rid, "op": op, "args": args or {}})
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self.writer.write(frame)
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        reason, message = str(error.get("code") or ""), str(error.get("message") or "failed")
        raise CommandError(refusal_code(reason), message,
                           [detail(message, type=reason or "internal_error")])  # fmt: skip

    async def stop(self, timeout: float) -> None:
        if self.proc is None or self.exited.is_set():
            return
        try:
            await self.request("stop", timeout=5)
        except (CommandError, TimeoutError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            log.error("event=worker_kill worker=%d reason=stop_timeout", self.index)
            self.proc.kill()
            await self.exited.wait()


class Node:
    def __init__(self, config: Config, config_path: str | Path) -> None:
        self.config = config
        self.config_path = Path(config_path).resolve()
        self.started_at = time.time()
        self.broker: EmbeddedBroker | None = None
        self.store = Store(config.storage.path, prefix=config.mqtt.prefix)
        self.publisher: Publisher | None = None
        self.ledger = Ledger(self.store, config.node.id, self._wake_publisher, self._trunk_state)
        self.worker = WorkerLink(self, 1)
        self.metrics = NodeMetrics()
        self.api: ApiServer | None = None
        self.draining = False
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()

    # -- wiring -------------------------------------------------------------------------------

    def _wake_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.wake()

    def _trunk_state(self, trunk: str, state: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish_trunk_state(trunk, state)

    def on_worker_event(self, event: WorkerEvent, ts: float) -> None:
        before = len(self.ledger.active)
        self.ledger.record(event, ts)
        self.metrics.observe(event)
        if len(self.ledger.active) != before and self.publisher is not None:
            self.publisher.refresh_status()
        if not self.ledger.active:
            self._idle.set()
        else:
            self._idle.clear()

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "active_calls": len(self.ledger.active),
            "capacity": self.worker.status.get("capacity"),
            "engine_call_limit": self.worker.status.get("engine_call_limit"),
            "draining": self.draining,
            "uptime": round(time.time() - self.started_at, 1),
        }

    async def command(self, name: str, args: dict[str, Any]) -> Any:
        """One implementation of each operation, shared by MQTT commands and the HTTP API."""
        from gateway.node.operations import run_operation

        return await run_operation(self, name, args)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        check_ports_free(self.config)  # name the busy port rather than fail half-way
        log_routing(self.config)
        mqtt = self.config.mqtt
        settings = BrokerConnection.from_config(mqtt)
        if mqtt.embedded:
            self.broker = EmbeddedBroker(mqtt.port, host=mqtt.host)
            await asyncio.to_thread(self.broker.start)
            log.info("event=embedded_broker_started host=%s port=%d", mqtt.host, self.broker.port)
        self.publisher = Publisher(
            self.store,
            settings,
            self.config.node.id,
            mqtt.prefix,
            command_handler=self.command,
            status_provider=self.status,
            max_backlog=mqtt.max_backlog,
            backoff_max=5.0,
        )
        await self.publisher.start()
        if self.config.api.enabled:
            # Before the worker: /readiness answers 503 until the trunks are loaded.
            from gateway.api import ApiServer

            self.api = ApiServer(self, self.config.api)
            await self.api.start()
        # Calls a previous run left open (killed mid-call) ended with it, at its last heartbeat.
        self.ledger.close_orphans("node_restart", alive_until=self.store.last_beat())
        self.store.beat(time.time())
        await self.worker.start()
        self._worker_started()

    def _worker_started(self) -> None:
        """The worker knows the real capacity: publish it, and say when it is below the
        configured limit."""
        if self.publisher is not None:
            self.publisher.refresh_status()
        capacity = self.worker.status.get("capacity")
        if isinstance(capacity, int) and capacity_warning(self.config, capacity):
            log.warning(
                "event=capacity_capped max_concurrent_calls=%d capacity=%d workers=%d "
                "engine_call_limit=%s calls_over_capacity=503",
                self.config.limits.max_concurrent_calls,
                capacity,
                worker_count(self.config),
                self.worker.status.get("engine_call_limit"),
            )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
        except Exception as exc:
            log.error("event=start_failed error=%s", exc)
            await self.shutdown()
            return 1
        log.info("event=node_running node=%s pid=%d", self.config.node.id, os.getpid())
        heartbeat = asyncio.create_task(self._heartbeat())
        await self._supervise()
        heartbeat.cancel()
        await self.shutdown()
        return 0

    async def _heartbeat(self) -> None:
        """Record that the node is alive, so a kill -9 still leaves calls a true end time."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                self.store.beat(time.time())
            except Exception:  # a full disk must not stop the node; the next beat retries
                log.exception("event=heartbeat_failed")

    async def _supervise(self) -> None:
        """Until asked to stop: when the SIP worker dies, end its calls in the ledger (the
        control plane must hear they ended) and start a new worker, with backoff."""
        restarts = 0
        started = time.monotonic()
        while not self._stop.is_set():
            stop = asyncio.create_task(self._stop.wait())
            died = asyncio.create_task(self.worker.exited.wait())
            await asyncio.wait({stop, died}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            died.cancel()
            if self._stop.is_set():
                return
            closed = self.ledger.close_orphans("worker_lost", alive_until=time.time())
            self.ledger.active.clear()
            if time.monotonic() - started > 60:
                restarts = 0  # it had been running fine: not a crash loop
            delay = min(WORKER_RESTART_MAX, 0.5 * 2**restarts)
            restarts += 1
            log.error(
                "event=worker_died calls_closed=%d restart_in=%.1f restarts=%d",
                closed,
                delay,
                restarts,
            )
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            except TimeoutError:
                pass
            self.worker = WorkerLink(self, 1)
            started = time.monotonic()
            try:
                await self.worker.start()
                if self.publisher is not None:
                    self.publisher.refresh_status()
            except RuntimeError as exc:
                log.error("event=worker_restart_failed error=%s", exc)

    async def shutdown(self) -> None:
        self.draining = True
        if self.publisher is not None:
            self.publisher.refresh_status()  # draining: true now, not after the hang-ups
        if not self.worker.exited.is_set() and self.worker.writer is not None:
            try:
                await self.worker.request("drain", timeout=5)
                log.info(
                    "event=draining active_calls=%d timeout=%s",
                    len(self.ledger.active),
                    self.config.node.drain_timeout,
                )
                if self.ledger.active:
                    self._idle.clear()
                    await asyncio.wait_for(self._idle.wait(), self.config.node.drain_timeout)
            except (TimeoutError, CommandError):
                log.info("event=drain_timeout hanging_up=%d", len(self.ledger.active))
            await self.worker.stop(timeout=15)
        if self.publisher is not None:
            await self._flush_outbox(timeout=3.0)
            await self.publisher.stop(timeout=3)
        if self.api is not None:  # served /readiness as 503 while draining
            await self.api.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        self.store.close()
        log.info("event=node_stopped")

    async def _flush_outbox(self, timeout: float) -> None:
        """Give the publisher a moment to deliver the last events; what it cannot deliver
        stays in the outbox and goes out at the next start."""
        assert self.publisher is not None
        deadline = time.monotonic() + timeout
        while self.publisher.connected and self.publisher.backlog and time.monotonic() < deadline:
            self.publisher.wake()
            await asyncio.sleep(0.05)
        if self.publisher.backlog:
            log.warning("event=outbox_not_flushed backlog=%d", self.publisher.backlog)


def log_routing(config: Config) -> None:
    """One line per trunk, number and agent, so the log says what this node answers and
    dials. No secrets: no passwords, header values, URL credentials or variable values."""
    for t in config.trunks:
        log.info(
            "event=trunk_configured trunk=%s register=%s registrar=%s username=%s proxy=%s "
            "transport=%s allowed_ips=%s allowed_destinations=%s max_concurrent_calls=%d",
            t.id, str(t.registers).lower(), t.registrar or "-", t.username or "-",
            t.proxy or "-", t.transport, ",".join(t.allowed_ips) or "-",
            ",".join(t.allowed_destinations), t.max_concurrent_calls,
        )  # fmt: skip
    for n in config.numbers:
        log.info(
            "event=number_configured number=%s agent=%s trunk=%s answer_delay_ms=%d "
            "variables=%s",
            n.number, n.agent, n.trunk or "any", n.answer_delay_ms,
            ",".join(sorted(n.variables)) or "-",
        )  # fmt: skip
    for a in config.agents:
        log.info(
            "event=agent_configured agent=%s type=%s url=%s headers=%s connect_timeout=%g "
            "on_agent_failure=%s sample_rate=%d",
            a.id, a.type, public_url(a.url) or "-", ",".join(sorted(a.headers)) or "-",
            a.connect_timeout, a.on_agent_failure, a.sample_rate,
        )  # fmt: skip


def run_node(config: Config, config_path: str | Path) -> int:
    return asyncio.run(Node(config, config_path).run())
