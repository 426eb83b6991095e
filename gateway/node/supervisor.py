"""The node process: config, store, MQTT, and the SIP worker processes it supervises
(gateway/node/pool.py).

SIGTERM/SIGINT drain the node: new calls get 503, active calls may finish for up to
`node.drain_timeout` seconds, the rest are hung up, trunks unregister, and the process exits 0.
SIGHUP (or `sipedge reload`, the node.reload command) reads the config file again: trunks,
numbers, agents and limits change with no call dropped (gateway/node/reload.py says what a
reload may change); a config that does not pass is refused and the node runs on as it was.

The workers and the media plane read the config the node runs on, not the operator's file: a
copy of the file as last accepted (its text, `${ENV}` references unexpanded), in a directory
of the node's own. A worker restarted after the operator saved a broken file starts with the
config the node runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.calls.events import WorkerEvent
from gateway.campaigns.store import CampaignStore
from gateway.config import (
    Config,
    capacity_warning,
    load_config,
    plane_count,
    public_url,
    worker_count,
    worker_slots,
)
from gateway.errors import CommandError, ConfigError, detail
from gateway.events.publisher import BrokerConnection, Publisher
from gateway.events.schema import (
    Event,
    EventData,
    NodeConfigRejected,
    NodeConfigReloaded,
    WebhookDisabled,
)
from gateway.front.health import FrontHealth
from gateway.front.process import FrontError, FrontProcess
from gateway.front.render import worker_uri
from gateway.front.rpc import FrontRpcError
from gateway.front.security import front_environment
from gateway.metrics import NodeMetrics
from gateway.node.broker import EmbeddedBroker
from gateway.node.campaigns import CampaignOperations, CampaignRunner
from gateway.node.ledger import Ledger
from gateway.node.plane import PlaneProcess, PlaneReloadError
from gateway.node.pool import WorkerPool
from gateway.node.ports import check_ports_free
from gateway.node.reload import plan_reload
from gateway.node.webhooks import WebhookOperations, sync_config
from gateway.store.recordings import sweep_recordings
from gateway.store.sqlite import Store
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.store import Subscription, WebhookStore

if TYPE_CHECKING:
    from gateway.api import ApiServer

log = logging.getLogger("sipedge.node")

HEARTBEAT_S = 2.0
RECORDING_SWEEP_S = 3600.0  # retention is in days: an hour late at most
FRONT_RESTART_MAX = 30.0


class Node:
    def __init__(self, config: Config, config_path: str | Path) -> None:
        self.config = config
        self.source = Path(config_path).resolve()  # the operator's file
        self._run_dir = Path(tempfile.mkdtemp(prefix="sipedge-node-"))
        self.config_path = self._run_dir / "config.yaml"  # what workers and the plane read
        self._accept_text(self.source.read_text(encoding="utf-8"))
        self.started_at = time.time()
        self.broker: EmbeddedBroker | None = None
        self.store = Store(config.storage.path, prefix=config.mqtt.prefix)
        self.campaign_store = CampaignStore(config.storage.path)
        self.campaign_runner = CampaignRunner(self, self.campaign_store, self._record)
        self.campaigns = CampaignOperations(self, self.campaign_runner)
        self.webhook_store = WebhookStore(config.storage.path)
        self.webhook_sender = WebhookSender(
            self.webhook_store,
            self.store,  # the outbox, read as the event log
            max_failures=config.webhooks_max_failures,
            on_disabled=self._webhook_disabled,
        )
        self.webhooks = WebhookOperations(self.webhook_store, self.webhook_sender, config.node.id)
        self.publisher: Publisher | None = None
        self.ledger = Ledger(self.store, config.node.id, self._wake_publisher, self._trunk_state)
        self.planes = [PlaneProcess(config.node.id, self.config_path, i)
                       for i in range(1, plane_count(config) + 1)]  # fmt: skip
        self.workers = WorkerPool(
            config,
            self.config_path,
            self.on_worker_event,
            self._calls_lost,
            self._workers_changed,
            planes=[plane.address for plane in self.planes],
        )
        self.front: FrontProcess | None = None
        self.metrics = NodeMetrics()
        self.api: ApiServer | None = None
        self.draining = False
        self._idle = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reloading = asyncio.Lock()
        self._front_settled = asyncio.Event()  # cleared while a reload restarts the front
        self._front_settled.set()

    # -- wiring -------------------------------------------------------------------------------

    def _wake_publisher(self) -> None:
        """New events are in the outbox: for MQTT and for webhooks."""
        if self.publisher is not None:
            self.publisher.wake()
        self.webhook_sender.wake()

    def _webhook_disabled(self, sub: Subscription, reason: str) -> None:
        failures = self.config.webhooks_max_failures
        self._record(WebhookDisabled(webhook_id=sub.id, url=public_url(sub.url) or "",
                                     reason=reason, consecutive_failures=failures))  # fmt: skip

    def _trunk_state(self, trunk: str, state: dict[str, Any]) -> None:
        if self.publisher is not None:
            self.publisher.publish_trunk_state(trunk, state)

    def _refresh_status(self) -> None:
        if self.publisher is not None:
            self.publisher.refresh_status()

    def _workers_changed(self) -> None:
        """A worker died or came back: capacity changed, and the front must know at once."""
        self._refresh_status()
        self._background(self._front_follows_workers())

    def _calls_lost(self, worker: int, call_ids: set[str]) -> int:
        """A worker died: its calls are gone on the SIP side, and the control plane must hear
        that they ended. The calls of the other workers go on."""
        closed = self.ledger.close_orphans("worker_lost", alive_until=time.time(), only=call_ids)
        self.ledger.active.difference_update(call_ids)
        if not self.ledger.active:
            self._idle.set()
        self._refresh_status()
        return closed

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
            "capacity": self.workers.capacity,
            "engine_call_limit": self.workers.engine_call_limit,
            "draining": self.draining,
            "uptime": round(time.time() - self.started_at, 1),
            "workers": [w.as_dict() for w in self.workers.states()],
        }

    # -- reload -------------------------------------------------------------------------------

    def _accept_text(self, text: str) -> None:
        """The config text the node now runs on, for its workers and media plane."""
        partial = self.config_path.with_suffix(".tmp")
        partial.write_text(text, encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(self.config_path)

    async def reload(self) -> dict[str, Any]:
        """Read the operator's file again and apply what a running node can (trunks, numbers,
        agents, limits, VAD, recording) with no call dropped. A config that does not pass, or
        changes what needs a restart, is refused (CommandError) with the problems
        check-config prints; the node then runs on as it was."""
        async with self._reloading:
            try:
                text = self.source.read_text(encoding="utf-8")
            except OSError as exc:
                return self._rejected([f"{self.source}: cannot read file: {exc.strerror}"])
            try:
                new = load_config(self.source)  # the same reading, and messages, as check-config
            except ConfigError as exc:
                return self._rejected(exc.problems)
            plan = plan_reload(str(self.source), self.config, new)
            if plan.problems:
                return self._rejected(plan.problems)
            self._accept_text(text)
            self.config = new
            sync_config(self.webhook_store, new)
            self.webhook_sender.max_failures = new.webhooks_max_failures
            self.webhook_sender.wake()
            for plane in self.planes:
                try:  # first: a call the workers take from now on gets the new agents
                    await plane.reload()
                except PlaneReloadError as exc:
                    log.error("event=media_plane_reload_failed plane=%d error=%s", plane.index, exc)
            await self.workers.reconfigure(new)
            await self._front_follows_config()
            log_routing(new)
            log.info(
                "event=config_reloaded changed=%s trunks_added=%s trunks_removed=%s "
                "trunks_changed=%s",
                ",".join(plan.changed) or "-", ",".join(plan.trunks_added) or "-",
                ",".join(plan.trunks_removed) or "-", ",".join(plan.trunks_changed) or "-",
            )  # fmt: skip
            self._record(NodeConfigReloaded(**plan.as_event_data()))
            self._refresh_status()
            return {"reloaded": True, **plan.as_event_data()}

    def _rejected(self, problems: list[str]) -> dict[str, Any]:
        for problem in problems:
            log.error("event=config_rejected problem=%r", problem)
        self._record(NodeConfigRejected(problems=problems))
        message = "the config was refused; the node runs on the config it had"
        raise CommandError(
            "invalid_parameter",
            message,
            [detail(p, field="config", location="body", type="config_invalid") for p in problems],
        )

    def _record(self, data: EventData) -> None:
        self.store.add_event(Event.of(data, node=self.config.node.id))
        self._wake_publisher()

    def _on_sighup(self) -> None:
        async def reload() -> None:
            with contextlib.suppress(CommandError):  # logged and evented as it was refused
                await self.reload()

        self._background(reload())

    async def command(self, name: str, args: dict[str, Any]) -> Any:
        """One implementation of each operation, shared by MQTT commands and the HTTP API."""
        if name.startswith("campaign."):
            return await self.campaigns(name, args)
        if name.startswith("webhook."):
            return await self.webhooks(name, args)
        from gateway.node.operations import run_operation

        try:
            return await run_operation(self, name, args)
        finally:
            self._wake_publisher()  # a recording deleted has an event to send

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        check_ports_free(self.config)  # name the busy port rather than fail half-way
        log_routing(self.config)
        mqtt = self.config.mqtt
        settings = BrokerConnection.from_config(mqtt)
        if mqtt.embedded:
            self.broker = EmbeddedBroker(mqtt.port, host=mqtt.host, die_with_parent=True)
            # On this (the main) thread: the broker ends with it, so with the node, even by
            # kill -9. It blocks the loop for the broker's start (~0.1 s), before any call.
            self.broker.start()
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
        sync_config(self.webhook_store, self.config)
        await self.webhook_sender.start()
        if self.config.api.enabled:
            # Before the worker: /readiness answers 503 until the trunks are loaded.
            from gateway.api import ApiServer

            self.api = ApiServer(self, self.config.api)
            await self.api.start()
        # Calls a previous run left open (killed mid-call) ended with it, at its last heartbeat.
        self.ledger.close_orphans("node_restart", alive_until=self.store.last_beat())
        self.store.beat(time.time())
        await self._start_front()
        for plane in self.planes:
            await plane.start()  # workers connect to its socket as they start
        await self.workers.start()
        await self._front_follows_workers()
        self._workers_started()

    def _workers_started(self) -> None:
        """The workers know the real capacity: publish it, and say when it is below the
        configured limit."""
        self._refresh_status()
        capacity = self.workers.capacity
        if capacity_warning(self.config, capacity):
            log.warning(
                "event=capacity_capped max_concurrent_calls=%d capacity=%d workers=%d "
                "engine_call_limit=%s calls_over_capacity=503",
                self.config.limits.max_concurrent_calls,
                capacity,
                worker_count(self.config),
                self.workers.engine_call_limit,
            )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the node runs: then a reload
        try:
            await self.start()
        except Exception as exc:
            log.error("event=start_failed error=%s", exc)
            await self.shutdown()
            return 1
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        log.info("event=node_running node=%s pid=%d", self.config.node.id, os.getpid())
        heartbeat = asyncio.create_task(self._heartbeat())
        front = asyncio.create_task(self._watch_front())
        campaigns = asyncio.create_task(self.campaign_runner.run(self._stop))
        sweeper = asyncio.create_task(self._sweep_recordings())
        await self._supervise()
        heartbeat.cancel()
        front.cancel()
        sweeper.cancel()
        await campaigns  # it ends with _stop: no new campaign call once the node stops
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

    async def _sweep_recordings(self, every: float = RECORDING_SWEEP_S) -> None:
        """Delete recordings older than `recording.retention_days` (read each time: a reload
        changes it), at start and then every `every` seconds."""
        while True:
            days = self.config.recording.retention_days
            if days is not None:
                try:
                    swept = await asyncio.to_thread(
                        sweep_recordings, self.store, self.config.node.id, days
                    )
                    if swept:
                        self._wake_publisher()
                except Exception:  # a bad disk must not stop the node; the next sweep retries
                    log.exception("event=recording_sweep_failed")
            await asyncio.sleep(every)

    async def _supervise(self) -> None:
        """Until asked to stop: each SIP worker that dies is restarted (gateway/node/pool.py)."""
        await asyncio.gather(
            self.workers.supervise(self._stop), *(p.supervise(self._stop) for p in self.planes)
        )

    async def shutdown(self) -> None:
        self.draining = True
        if self.publisher is not None:
            self.publisher.refresh_status()  # draining: true now, not after the hang-ups
        await self._drain_front()
        if self.workers.running:
            await self.workers.drain()  # every worker at once
            log.info(
                "event=draining active_calls=%d timeout=%s workers=%d",
                len(self.ledger.active),
                self.config.node.drain_timeout,
                len(self.workers.running),
            )
            try:
                if self.ledger.active:
                    self._idle.clear()
                    await asyncio.wait_for(self._idle.wait(), self.config.node.drain_timeout)
            except TimeoutError:
                log.info("event=drain_timeout hanging_up=%d", len(self.ledger.active))
        await self.workers.stop(timeout=15)
        await asyncio.gather(*(plane.stop() for plane in self.planes))
        await self._stop_front()
        if self.publisher is not None:
            await self._flush_outbox(timeout=3.0)
            await self.publisher.stop(timeout=3)
        await self.webhook_sender.stop()  # attempts in flight are made again at the next start
        if self.api is not None:  # served /readiness as 503 while draining
            await self.api.stop()
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        self.campaign_store.close()
        self.webhook_store.close()
        self.store.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        log.info("event=node_stopped")

    # -- the SIP front (sip.front.mode embedded) ----------------------------------------------

    async def _start_front(self) -> None:
        """Before the workers: the front owns the public SIP port and dispatches to them as
        they come up (its OPTIONS probes put each in rotation once it answers)."""
        if self.config.sip.front.mode != "embedded":
            return
        self.front = FrontProcess(
            self.config,
            worker_slots(self.config),
            log_level=logging.getLevelName(log.getEffectiveLevel()),
        )
        try:
            await self.front.start()
        except FrontError:
            self.front.close()
            self.front = None
            raise

    async def _watch_front(self) -> None:
        """When the front dies, restart it, with backoff. Calls in progress survive a restart:
        their in-dialog requests are routed by the Record-Route set they carry, not by state
        the front kept (only transactions in flight and the call-load counts are lost)."""
        restarts = 0
        while self.front is not None:
            front = self.front
            up_since = time.monotonic()
            await front.exited.wait()
            if self._stop.is_set():
                return
            if not self._front_settled.is_set() or not front.exited.is_set():
                await self._front_settled.wait()  # a reload restarted it: watch the new one
                continue
            if front.stopping:
                return
            if time.monotonic() - up_since > 60:
                restarts = 0  # it had been running fine: not a crash loop
            delay = min(FRONT_RESTART_MAX, 0.5 * 2**restarts)
            restarts += 1
            log.error("event=front_died restart_in=%.1f restarts=%d", delay, restarts)
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
                return
            except TimeoutError:
                pass
            try:
                await front.start()
                log.info("event=front_restarted pid=%s restarts=%d", front.pid, restarts)
                await self._front_follows_workers()
            except FrontError as exc:
                log.error("event=front_restart_failed error=%s", exc)

    async def _front_follows_config(self) -> None:
        """After a reload: a front whose Kamailio config changed (numbers, trunks' addresses,
        limits) restarts on the new one. Calls in progress survive it, as a restart after a
        crash (see _watch_front); a new INVITE in the gap is retransmitted (UDP) or refused
        with a connection error (TCP) and sent again by the carrier."""
        front = self.front
        if front is None:
            return
        old = (front.files(), front_environment(front.config))
        front.config = self.config
        if (front.files(), front_environment(front.config)) == old or not front.running:
            return  # the same files and the same secrets in its environment
        self._front_settled.clear()
        try:
            await front.stop()
            await front.start()
            log.info("event=front_restarted pid=%s reason=config_reloaded", front.pid)
        except FrontError as exc:
            log.error("event=front_restart_failed error=%s", exc)
            front.stopping = False  # the watcher starts it again, with backoff
        finally:
            self._front_settled.set()
        await self._front_follows_workers()

    async def _front_follows_workers(self) -> None:
        """Tell the front at once which workers run, rather than letting its next OPTIONS
        probe find out (up to 2 s of INVITEs to a dead worker, or 503s while a new one waits
        for its first probe)."""
        if self.front is None or not self.front.running:
            return
        running = {state.index for state in self.workers.states() if state.running}
        for slot in worker_slots(self.config):
            try:
                await self.front.rpc.set_worker(worker_uri(slot), slot.index in running)
            except FrontRpcError as exc:
                log.warning("event=front_worker_state_failed worker=%d error=%s", slot.index, exc)

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_front(self) -> None:
        """New INVITEs get 503 at the front at once; in-dialog requests keep passing."""
        if self.front is not None and self.front.running:
            try:
                await self.front.rpc.drain()
            except FrontRpcError as exc:
                log.warning("event=front_drain_failed error=%s", exc)

    async def _stop_front(self) -> None:
        """After the workers: their last BYEs and unREGISTERs went out through it."""
        if self.front is not None:
            await self.front.stop()
            self.front.close()

    async def front_health(self) -> FrontHealth | None:
        """The front's state for /health and /metrics; None without a front."""
        mode = self.config.sip.front.mode
        if mode == "none":
            return None
        if self.front is None or not self.front.running:
            return FrontHealth(mode=mode, up=mode == "external")
        health = await self.front.rpc.health(mode)
        return dataclasses.replace(health, tls_refused=dict(self.front.tls_refused))

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
