"""The node's SIP workers: one WorkerLink per worker slot of the config, started together,
each restarted with backoff when it dies; requests routed to the right one (an outbound call
to the worker with the most free slots, a call's commands to the worker that owns the call);
one worker registering each trunk, another taking the registration over if it dies.

The decisions are plain code in gateway/node/placement.py; this module runs the processes
and applies them. Calls are owned by the worker whose events announced them (call.incoming,
call.placed), and an outbound call from the moment its INVITE is requested.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from gateway.calls.events import (
    CallDialed,
    CallOffered,
    Completed,
    Failed,
    TrunkStateChanged,
    WorkerEvent,
)
from gateway.config import Config, worker_slots
from gateway.events.schema import CommandError
from gateway.node.link import WorkerLink, WorkerRefused
from gateway.node.placement import (
    CallOwners,
    WorkerState,
    assign_trunks,
    claim,
    node_capacity,
    pick_worker,
    take_over,
)

log = logging.getLogger("sipedge.node")

RESTART_MAX = 30.0  # seconds between restarts of a worker that keeps dying
STABLE_S = 60.0  # a worker that ran this long before it died is not crash-looping
DRAIN_REQUEST_TIMEOUT = 5.0
CALL_OPERATIONS = frozenset({"hangup", "send_dtmf", "transfer"})


class WorkerPool:
    """`on_event(event, ts)` gets each worker event the node records (a trunk's state only
    from the worker that reports the trunk); `on_lost(worker, call_ids)` is told the calls of
    a worker that died, returns how many it closed; `on_change()` when capacity changes."""

    def __init__(
        self,
        config: Config,
        config_path: Path,
        on_event: Callable[[WorkerEvent, float], None],
        on_lost: Callable[[int, set[str]], int],
        on_change: Callable[[], None] = lambda: None,
        planes: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.planes = list(planes)  # the media planes' sockets: worker i connects to one
        self.config_path = config_path
        self._on_event = on_event
        self._on_lost = on_lost
        self._on_change = on_change
        indexes = [slot.index for slot in worker_slots(config)]
        self.links: dict[int, WorkerLink] = {}
        self.calls = CallOwners()
        # Which worker reports each trunk's state, and registers it if the trunk registers.
        self.trunk_owner: dict[str, int | None] = dict(
            assign_trunks([t.id for t in config.trunks], indexes)
        )
        self.restarts = dict.fromkeys(indexes, 0)
        self._restarting: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # every worker has started once: the trunks are loaded
        for index in indexes:
            self._spawn(index)

    # -- what the node reports ----------------------------------------------------------------

    def states(self) -> list[WorkerState]:
        return [
            WorkerState(
                index=index,
                phase="restarting" if index in self._restarting else link.phase,
                pid=None if link.exited.is_set() else link.pid,
                capacity=link.capacity,
                active_calls=self.calls.count(index),
                restarts=self.restarts[index],
                trunks=tuple(sorted(t for t, o in self.trunk_owner.items() if o == index)),
            )
            for index, link in sorted(self.links.items())
        ]

    @property
    def running(self) -> list[WorkerLink]:
        return [link for _, link in sorted(self.links.items()) if link.running]

    @property
    def capacity(self) -> int:
        """Calls the node holds at once: what its running workers hold, within
        limits.max_concurrent_calls."""
        return node_capacity(self.states(), self.config.limits.max_concurrent_calls)

    @property
    def engine_call_limit(self) -> int | None:
        """PJSUA_MAX_CALLS of one worker (the same build for all)."""
        limits = [link.status.get("engine_call_limit") for link in self.links.values()]
        known = [limit for limit in limits if isinstance(limit, int)]
        return max(known) if known else None

    def trunk_status(self) -> dict[str, dict[str, Any]]:
        """Each trunk's state as its reporting worker said when it became ready, with the
        trunk's own limit (a worker knows only its share of it)."""
        out: dict[str, dict[str, Any]] = {}
        for trunk, owner in self.trunk_owner.items():
            link = self.links.get(owner) if owner is not None else None
            state = (link.status.get("trunks") or {}).get(trunk) if link is not None else None
            if isinstance(state, dict):
                out[trunk] = {**state, "max_concurrent_calls": self._trunk_limit(trunk)}
        return out

    def _trunk_limit(self, trunk_id: str) -> int:
        trunk = self.config.trunk(trunk_id)
        return 0 if trunk is None else trunk.max_concurrent_calls

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker at once: each start is mostly its process's own work (imports,
        pjsua2), so in parallel the node is up in about the time of one."""
        links = list(self.links.values())
        results = await asyncio.gather(*(link.start() for link in links), return_exceptions=True)
        failed = [(link, r) for link, r in zip(links, results, strict=True) if r is not None]
        for link, _ in failed:
            await link.kill()
        if failed:
            link, error = failed[0]
            raise RuntimeError(f"SIP worker {link.index}: {error}")
        self.ready.set()

    async def reconfigure(self, config: Config) -> None:
        """A reload: each running worker takes `config` (the file it reads was just replaced;
        a worker started later reads it anyway). Trunks added get an owner among the running
        workers, the fewest trunks first, and are registered by it; trunks removed lose theirs."""
        self.config = config
        wanted = [t.id for t in config.trunks]
        for trunk in [t for t in self.trunk_owner if t not in wanted]:
            del self.trunk_owner[trunk]
        running = [link.index for link in self.running]
        for trunk in [t for t in wanted if t not in self.trunk_owner]:
            load = {w: sum(1 for o in self.trunk_owner.values() if o == w) for w in running}
            self.trunk_owner[trunk] = min(running, key=lambda w: (load[w], w)) if running else None
        links = self.running
        results = await asyncio.gather(
            *(self._reconfigure(link) for link in links), return_exceptions=True
        )
        for link, result in zip(links, results, strict=True):
            if isinstance(result, BaseException):
                log.error("event=worker_reload_failed worker=%d error=%s", link.index, result)
        self._on_change()

    async def _reconfigure(self, link: WorkerLink) -> None:
        owned = [t for t, o in self.trunk_owner.items() if o == link.index]
        registers = [t for t in owned if self._registers(t)]
        status = await link.request("reload", {"registers": registers})
        if isinstance(status, dict):
            link.status = status

    async def supervise(self, stop: asyncio.Event) -> None:
        """Until `stop` is set: when a worker dies, end its calls (the control plane must hear
        they ended), hand its trunks to another worker, and start it again with backoff.
        Calls on the other workers go on untouched."""
        await asyncio.gather(*(self._keep(index, stop) for index in list(self.links)))

    async def drain(self) -> None:
        """Every running worker stops taking calls (503) while its calls go on."""
        running = self.running
        results = await asyncio.gather(
            *(link.request("drain", timeout=DRAIN_REQUEST_TIMEOUT) for link in running),
            return_exceptions=True,
        )
        for link, result in zip(running, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("event=drain_failed worker=%d error=%s", link.index, result)

    async def stop(self, timeout: float) -> None:
        """Stop every worker at once: each hangs up what is left and unregisters its trunks."""
        await asyncio.gather(*(link.stop(timeout) for link in self.links.values()))

    # -- routing ------------------------------------------------------------------------------

    async def request(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """One operation on the node's workers: `originate` goes to the worker with the most
        free slots (and on to the next while workers answer capacity_exceeded), hangup,
        transfer and send_dtmf to the worker that owns the call."""
        args = args or {}
        if op == "originate":
            return await self._originate(args)
        if op in CALL_OPERATIONS:
            call_id = str(args.get("call_id"))
            owner = self.calls.worker_of(call_id)
            link = self.links.get(owner) if owner is not None else None
            if link is None or not link.running:
                raise WorkerRefused("call_not_found", f"no active call {call_id}")
            return await link.request(op, args)
        raise CommandError("internal_error", f"operation {op!r} has no worker to go to")

    async def _originate(self, args: dict[str, Any]) -> Any:
        call_id, trunk_id = str(args["call_id"]), str(args["trunk"])
        trunk = self.config.trunk(trunk_id)
        # Each worker counts only its own calls: the node's limits hold node-wide here.
        limit = self.config.limits.max_concurrent_calls
        if len(self.calls) >= limit:
            raise WorkerRefused(
                "capacity_exceeded", f"node at limits.max_concurrent_calls ({limit})"
            )
        if trunk is not None and self.calls.on_trunk(trunk_id) >= trunk.max_concurrent_calls:
            raise WorkerRefused("capacity_exceeded", f"trunk {trunk_id} at max_concurrent_calls")
        if not self.running:
            raise CommandError("internal_error", "SIP worker is not running")
        tried: set[int] = set()
        while (index := pick_worker(self.states(), tried)) is not None:
            tried.add(index)
            self.calls.add(call_id, index, trunk_id)  # a hangup may follow before any event
            try:
                return await self.links[index].request("originate", args)
            except WorkerRefused as exc:
                self.calls.drop(call_id)  # refused before any INVITE went out
                if exc.reason != "capacity_exceeded":
                    raise
                log.info("event=originate_refused call_id=%s worker=%d reason=%s next=try_another",
                         call_id, index, exc.reason)  # fmt: skip
        raise WorkerRefused(
            "capacity_exceeded",
            f"node at capacity ({self.capacity} calls on {len(self.running)} SIP workers)",
        )

    # -- events -------------------------------------------------------------------------------

    def _event(self, link: WorkerLink, event: WorkerEvent, ts: float) -> None:
        if isinstance(event, TrunkStateChanged):
            if self.trunk_owner.get(event.trunk) != link.index:
                return  # one voice per trunk: the worker that registers (or reports) it
            event = dataclasses.replace(event, max_concurrent_calls=self._trunk_limit(event.trunk))
        if isinstance(event, CallOffered | CallDialed):
            self.calls.add(event.call_id, link.index, event.trunk)
        elif isinstance(event, Completed | Failed):
            self.calls.drop(event.call_id)
        self._on_event(event, ts)

    # -- workers coming and going -------------------------------------------------------------

    def _spawn(self, index: int) -> WorkerLink:
        """A new link for worker `index`, registering its own trunks and the unowned ones."""
        trunks = claim(self.trunk_owner, index)
        self.trunk_owner.update(dict.fromkeys(trunks, index))
        registers = [t for t in trunks if self._registers(t)]
        link = WorkerLink(index, self.config_path, self._event, registers, self.plane_of(index))
        self.links[index] = link
        return link

    def plane_of(self, index: int) -> str | None:
        """The media plane worker `index` (1-based) sends its calls to: (index - 1) mod N,
        the same one every time the worker is started (None with node.media: worker)."""
        if not self.planes:
            return None
        return self.planes[(index - 1) % len(self.planes)]

    def _registers(self, trunk_id: str) -> bool:
        trunk = self.config.trunk(trunk_id)
        return trunk is not None and trunk.registers

    async def _keep(self, index: int, stop: asyncio.Event) -> None:
        restarts = 0
        started = time.monotonic()
        while not stop.is_set():
            if not await _exited_before(self.links[index], stop):
                return
            closed = self._on_lost(index, self.calls.release(index))
            self._hand_over_trunks(index)
            if time.monotonic() - started > STABLE_S:
                restarts = 0  # it had been running fine: not a crash loop
            delay = min(RESTART_MAX, 0.5 * 2**restarts)
            restarts += 1
            self.restarts[index] += 1
            self._restarting.add(index)
            log.error("event=worker_died worker=%d calls_closed=%d restart_in=%.1f restarts=%d",
                      index, closed, delay, restarts)  # fmt: skip
            self._on_change()
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            finally:
                self._restarting.discard(index)
            link = self._spawn(index)
            started = time.monotonic()
            try:
                await link.start()
            except RuntimeError as exc:
                log.error("event=worker_restart_failed worker=%d error=%s", index, exc)
                await link.kill()
                continue
            self._take_unowned_trunks(index)
            self._on_change()

    def _hand_over_trunks(self, lost: int) -> None:
        """The trunks of a lost worker go to running workers at once: a registering trunk is
        registered again within a round trip, not after its worker's restart."""
        running = [link.index for link in self.running]
        moves = take_over(self.trunk_owner, lost, running)
        self.trunk_owner.update(moves)
        for trunk, worker in sorted(moves.items()):
            log.warning("event=trunk_handed_over trunk=%s from_worker=%d to_worker=%s",
                        trunk, lost, worker or "none_running")  # fmt: skip
        self._register_on(moves)

    def _take_unowned_trunks(self, index: int) -> None:
        """Trunks left unowned while no worker ran, for a worker that has just started."""
        unowned = {t: index for t, o in self.trunk_owner.items() if o is None}
        self.trunk_owner.update(unowned)
        self._register_on(dict(unowned))

    def _register_on(self, owners: dict[str, int | None]) -> None:
        by_worker: dict[int, list[str]] = {}
        for trunk, worker in owners.items():
            if worker is not None and self._registers(trunk):
                by_worker.setdefault(worker, []).append(trunk)
        for worker, trunks in by_worker.items():
            self._background(self._register(worker, trunks))

    async def _register(self, index: int, trunks: list[str]) -> None:
        try:
            await self.links[index].request("register", {"trunks": trunks})
        except (CommandError, TimeoutError) as exc:  # if it died, its own death moves them on
            log.error("event=trunk_takeover_failed worker=%d trunks=%s error=%s",
                      index, ",".join(trunks), exc)  # fmt: skip

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _exited_before(link: WorkerLink, stop: asyncio.Event) -> bool:
    """Wait until the worker exits (True) or `stop` is set (False)."""
    stopping = asyncio.ensure_future(stop.wait())
    died = asyncio.ensure_future(link.exited.wait())
    await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    died.cancel()
    return not stop.is_set()
