"""Which SIP worker does what, as plain decisions with no I/O: the worker an outbound call goes
to, the worker that owns each live call (where its commands go), and the worker that registers
each trunk (exactly one REGISTER per trunk, whatever the number of workers).

gateway/node/pool.py is the shell that runs the workers and applies these decisions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

WorkerPhase = Literal["starting", "running", "restarting", "stopped"]


@dataclass(frozen=True)
class WorkerState:
    """What the node knows of one worker right now (status, /health, /metrics)."""

    index: int
    phase: WorkerPhase
    pid: int | None = None
    capacity: int = 0  # calls it holds at once, known once it is ready
    active_calls: int = 0  # calls it owns (outbound ones from the moment they are sent)
    restarts: int = 0
    trunks: tuple[str, ...] = ()  # trunks whose registration (or state) this worker reports

    @property
    def running(self) -> bool:
        return self.phase == "running"

    @property
    def free_slots(self) -> int:
        return max(0, self.capacity - self.active_calls) if self.running else 0

    def as_dict(self) -> dict[str, Any]:
        """As the node's status (MQTT `status`) and /health list it."""
        return {"worker": self.index, "state": self.phase, "pid": self.pid,
                "active_calls": self.active_calls, "capacity": self.capacity,
                "free_slots": self.free_slots, "restarts": self.restarts,
                "trunks": list(self.trunks)}  # fmt: skip


def node_capacity(workers: Iterable[WorkerState], limit: int) -> int:
    """Calls the node holds at once: what its running workers hold, within `limit`
    (limits.max_concurrent_calls)."""
    return min(limit, sum(w.capacity for w in workers if w.running))


def pick_worker(workers: Iterable[WorkerState], tried: Collection[int] = ()) -> int | None:
    """The worker for a new outbound call: the running one with the most free slots that has
    not refused this call yet (lowest index on a tie), or None when no worker has room."""
    best: WorkerState | None = None
    for worker in workers:
        if worker.index in tried or worker.free_slots <= 0:
            continue
        if best is None or (worker.free_slots, -worker.index) > (best.free_slots, -best.index):
            best = worker
    return None if best is None else best.index


@dataclass
class CallOwners:
    """The worker that holds each live call, and the call's trunk."""

    _worker: dict[str, int] = field(default_factory=dict)
    _trunk: dict[str, str] = field(default_factory=dict)

    def add(self, call_id: str, worker: int, trunk: str | None) -> None:
        self._worker[call_id] = worker
        if trunk:
            self._trunk[call_id] = trunk

    def drop(self, call_id: str) -> None:
        self._worker.pop(call_id, None)
        self._trunk.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._worker)

    def worker_of(self, call_id: str) -> int | None:
        return self._worker.get(call_id)

    def count(self, worker: int) -> int:
        return sum(1 for w in self._worker.values() if w == worker)

    def on_trunk(self, trunk: str) -> int:
        """Live calls on `trunk`, over every worker."""
        return sum(1 for t in self._trunk.values() if t == trunk)

    def release(self, worker: int) -> set[str]:
        """Forget the calls of a worker that is gone; return their ids."""
        gone = {c for c, w in self._worker.items() if w == worker}
        for call_id in gone:
            self.drop(call_id)
        return gone


def assign_trunks(trunks: Sequence[str], workers: Sequence[int]) -> dict[str, int]:
    """First owners: the trunks spread over the workers in order (trunk k to worker k mod n),
    so with many registering trunks no worker carries all their REGISTER traffic."""
    if not workers:
        return {}
    return {trunk: workers[k % len(workers)] for k, trunk in enumerate(trunks)}


def take_over(
    owners: Mapping[str, int | None], lost: int, running: Collection[int]
) -> dict[str, int | None]:
    """New owners for the trunks of worker `lost`: each goes to the running worker (other than
    `lost`) that owns the fewest trunks, lowest index on a tie. With no other worker running
    they are left unowned (None) until a worker starts (`claim`)."""
    others = sorted(w for w in running if w != lost)
    load = {w: sum(1 for o in owners.values() if o == w) for w in others}
    moves: dict[str, int | None] = {}
    for trunk in sorted(t for t, o in owners.items() if o == lost):
        if not others:
            moves[trunk] = None
            continue
        worker = min(others, key=lambda w: (load[w], w))
        load[worker] += 1
        moves[trunk] = worker
    return moves


def claim(owners: Mapping[str, int | None], worker: int) -> list[str]:
    """What a starting worker reports (and registers): its own trunks and the unowned ones.

    A trunk taken over while its first owner was away stays where it went when that worker
    comes back: moving it back would send an un-REGISTER from one worker and a REGISTER from
    the other, two transactions and a moment in which the registrar holds two bindings or
    none, for no gain (a registration is one request per expiry interval)."""
    return sorted(t for t, o in owners.items() if o is None or o == worker)
