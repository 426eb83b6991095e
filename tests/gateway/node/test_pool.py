"""The worker pool's routing, with links that stand in for worker processes (no processes)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from gateway.calls import events as ev
from gateway.config import Config
from gateway.errors import CommandError
from gateway.node.link import WorkerLink, WorkerRefused
from gateway.node.placement import WorkerPhase
from gateway.node.pool import WorkerPool

CONFIG = {
    "node": {"workers": 3},
    "sip": {"listen": "127.0.0.1", "front": {"mode": "external"},
            "rtp_ports": {"start": 30000, "end": 30299}},
    "trunks": [
        {"id": "carrier", "register": True, "registrar": "sip:127.0.0.1:5999",
         "username": "alice", "password": "${PW}", "allowed_destinations": ["+1"],
         "max_concurrent_calls": 5},
        {"id": "static", "proxy": "sip:127.0.0.1:5998", "allowed_destinations": ["+1"]},
    ],
    "agents": [{"id": "echo", "type": "echo"}],
    "limits": {"max_concurrent_calls": 100},
}  # fmt: skip


class FakeLink:
    """A running worker: answers requests, or refuses them with `refuse` (a reason)."""

    def __init__(self, index: int, capacity: int = 4) -> None:
        self.index = index
        self.status: dict[str, Any] = {"capacity": capacity, "engine_call_limit": 4}
        self.ready = asyncio.Event()
        self.ready.set()
        self.exited = asyncio.Event()
        self.pid = 1000 + index
        self.refuse: str | None = None
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @property
    def phase(self) -> WorkerPhase:
        return "stopped" if self.exited.is_set() else "running"

    @property
    def running(self) -> bool:
        return self.phase == "running"

    @property
    def capacity(self) -> int:
        return int(self.status["capacity"])

    async def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 0) -> Any:
        self.requests.append((op, args or {}))
        if self.refuse is not None:
            raise WorkerRefused(self.refuse, f"worker {self.index} refuses ({self.refuse})")
        return {"call_id": (args or {}).get("call_id")}


class Recorder:
    def __init__(self) -> None:
        self.events: list[ev.WorkerEvent] = []
        self.lost: list[tuple[int, set[str]]] = []

    def on_event(self, event: ev.WorkerEvent, ts: float) -> None:
        self.events.append(event)

    def on_lost(self, worker: int, calls: set[str]) -> int:
        self.lost.append((worker, calls))
        return len(calls)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def pool(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> WorkerPool:
    monkeypatch.setenv("PW", "secret")
    config = Config.model_validate(CONFIG)
    pool = WorkerPool(config, Path("node.yaml"), recorder.on_event, recorder.on_lost)
    pool.links = {i: FakeLink(i) for i in pool.links}  # type: ignore[misc]
    return pool


def link(pool: WorkerPool, index: int) -> FakeLink:
    fake = pool.links[index]
    assert isinstance(fake, FakeLink)
    return fake


def event(pool: WorkerPool, worker: int, happening: ev.WorkerEvent) -> None:
    pool._event(pool.links[worker], happening, 0.0)  # noqa: SLF001 - what a link's reader calls


def offered(call_id: str) -> ev.CallOffered:
    return ev.CallOffered(call_id=call_id, from_number="+15557654321", to_number="+15550100",
                          trunk="static", agent="echo")  # fmt: skip


def trunk_state(trunk: str, state: str) -> ev.TrunkStateChanged:
    return ev.TrunkStateChanged(trunk=trunk, registers=trunk == "carrier", state=state)


def originate(call_id: str, trunk: str = "static") -> dict[str, Any]:
    return {"call_id": call_id, "to": "+15551230000", "trunk": trunk, "agent": "echo"}


async def test_each_outbound_call_goes_to_the_worker_with_the_most_free_slots(
    pool: WorkerPool,
) -> None:
    for n in range(4):
        await pool.request("originate", originate(f"call_{n}"))
    assert [len(link(pool, i).requests) for i in (1, 2, 3)] == [2, 1, 1]  # 1, 2, 3, then 1
    await pool.request("hangup", {"call_id": "call_1", "by": "control_plane"})
    assert link(pool, 2).requests[-1] == ("hangup", {"call_id": "call_1", "by": "control_plane"})


async def test_a_full_worker_is_skipped_and_the_next_one_takes_the_call(pool: WorkerPool) -> None:
    link(pool, 1).refuse = "capacity_exceeded"  # e.g. its media sockets ran out
    await pool.request("originate", originate("call_a"))
    assert [op for op, _ in link(pool, 1).requests] == ["originate"]
    assert [op for op, _ in link(pool, 2).requests] == ["originate"]
    await pool.request("send_dtmf", {"call_id": "call_a", "digits": "1"})
    assert link(pool, 2).requests[-1][0] == "send_dtmf"
    assert pool.calls.worker_of("call_a") == 2


async def test_when_every_worker_is_full_the_call_is_refused_with_capacity_exceeded(
    pool: WorkerPool,
) -> None:
    for index in (1, 2, 3):
        link(pool, index).refuse = "capacity_exceeded"
    with pytest.raises(WorkerRefused) as refused:
        await pool.request("originate", originate("call_a"))
    assert refused.value.code == "capacity_exceeded" and "node at capacity" in str(refused.value)
    assert pool.calls.worker_of("call_a") is None  # no worker holds it
    assert all(len(link(pool, i).requests) == 1 for i in (1, 2, 3))


async def test_a_refusal_that_another_worker_would_repeat_is_not_retried(
    pool: WorkerPool,
) -> None:
    link(pool, 1).refuse = "draining"
    with pytest.raises(WorkerRefused) as refused:
        await pool.request("originate", originate("call_a"))
    assert refused.value.reason == "draining"
    assert not link(pool, 2).requests and not link(pool, 3).requests


async def test_a_trunks_limit_holds_over_all_workers(pool: WorkerPool) -> None:
    for n in range(5):  # carrier: max_concurrent_calls 5, over three 4-call workers
        await pool.request("originate", originate(f"call_{n}", trunk="carrier"))
    with pytest.raises(WorkerRefused, match="trunk carrier at max_concurrent_calls"):
        await pool.request("originate", originate("call_6", trunk="carrier"))
    await pool.request("originate", originate("call_7"))  # another trunk still dials


async def test_an_inbound_calls_commands_reach_the_worker_that_announced_it(
    pool: WorkerPool, recorder: Recorder
) -> None:
    event(pool, 2, offered("call_in"))
    await pool.request("hangup", {"call_id": "call_in", "by": "control_plane"})
    assert link(pool, 2).requests == [("hangup", {"call_id": "call_in", "by": "control_plane"})]
    assert [s.active_calls for s in pool.states()] == [0, 1, 0]
    event(pool, 2, ev.Completed(call_id="call_in", duration=1.0, reason="normal"))
    with pytest.raises(WorkerRefused) as gone:
        await pool.request("hangup", {"call_id": "call_in"})
    assert gone.value.code == "resource_not_found"
    assert [type(e) for e in recorder.events] == [ev.CallOffered, ev.Completed]


async def test_a_trunks_state_is_heard_from_its_reporting_worker_only(
    pool: WorkerPool, recorder: Recorder
) -> None:
    assert pool.trunk_owner == {"carrier": 1, "static": 2}
    for worker in (1, 2, 3):
        event(pool, worker, trunk_state("carrier", "registered"))
        event(pool, worker, trunk_state("static", "static"))
    heard = [(e.trunk, e.state) for e in recorder.events if isinstance(e, ev.TrunkStateChanged)]
    assert heard == [("carrier", "registered"), ("static", "static")]


async def test_a_trunks_state_carries_its_own_limit_not_its_workers_share(
    pool: WorkerPool, recorder: Recorder
) -> None:
    share = dataclasses.replace(trunk_state("carrier", "registered"), max_concurrent_calls=2)
    event(pool, 1, share)  # carrier's 5 calls over 3 workers: 2, 2 and 1
    [heard] = [e for e in recorder.events if isinstance(e, ev.TrunkStateChanged)]
    assert heard.max_concurrent_calls == 5
    link(pool, 1).status["trunks"] = {"carrier": share.as_status()}
    assert pool.trunk_status()["carrier"]["max_concurrent_calls"] == 5


async def test_only_the_first_owner_of_a_registering_trunk_registers_it(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", "secret")
    pool = WorkerPool(Config.model_validate(CONFIG), Path("n.yaml"), recorder.on_event,
                      recorder.on_lost)  # fmt: skip
    assert [link.registers for _, link in sorted(pool.links.items())] == [["carrier"], [], []]
    assert all(isinstance(link, WorkerLink) for link in pool.links.values())


async def test_a_lost_worker_ends_only_its_calls_and_its_trunks_go_to_a_running_worker(
    pool: WorkerPool, recorder: Recorder
) -> None:
    event(pool, 1, offered("call_one"))
    event(pool, 2, offered("call_two"))
    await pool.request("originate", originate("call_three"))  # worker 3: the most free slots
    stop = asyncio.Event()
    supervising = asyncio.ensure_future(pool.supervise(stop))
    original = recorder.on_lost

    def lost(worker: int, calls: set[str]) -> int:
        stop.set()  # no restart: that would start a real worker process
        return original(worker, calls)

    pool._on_lost = lost  # noqa: SLF001
    link(pool, 1).exited.set()  # kill -9
    await asyncio.wait_for(supervising, 5)
    assert recorder.lost == [(1, {"call_one"})]
    assert pool.calls.worker_of("call_two") == 2 and pool.calls.worker_of("call_three") == 3
    # carrier registered on worker 1; it goes to the running worker with the fewest trunks.
    assert pool.trunk_owner == {"carrier": 3, "static": 2}
    await asyncio.gather(*pool._tasks)  # noqa: SLF001 - the register request, in the background
    assert link(pool, 3).requests[-1] == ("register", {"trunks": ["carrier"]})
    assert [s.phase for s in pool.states()] == ["stopped", "running", "running"]


async def test_an_operation_with_no_worker_to_go_to_is_an_internal_error(
    pool: WorkerPool,
) -> None:
    with pytest.raises(CommandError) as error:
        await pool.request("status")
    assert error.value.code == "internal_error"
    for index in (1, 2, 3):
        link(pool, index).exited.set()
    with pytest.raises(CommandError, match="SIP worker is not running"):
        await pool.request("originate", originate("call_a"))


async def test_each_worker_is_started_against_its_own_plane_every_time(
    recorder: Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker i connects to plane (i - 1) mod N: 3 workers on 2 planes give 1, 2, 1; a worker
    started again (after a death) gets the same plane, whose calls it then carries."""
    monkeypatch.setenv("PW", "secret")
    pool = WorkerPool(Config.model_validate(CONFIG), Path("n.yaml"), recorder.on_event,
                      recorder.on_lost, planes=["@plane-1", "@plane-2"])  # fmt: skip
    assert [pool.links[i].plane for i in (1, 2, 3)] == ["@plane-1", "@plane-2", "@plane-1"]
    assert pool._spawn(2).plane == "@plane-2"
    alone = WorkerPool(Config.model_validate(CONFIG), Path("n.yaml"), recorder.on_event,
                       recorder.on_lost)  # fmt: skip
    assert all(link.plane is None for link in alone.links.values())  # node.media: worker
