"""What bench/soak.py measures on the node's processes: worker PIDs over time (every restart
is a new one), RSS of the worker and the supervisor, CPU of the whole process tree, all read
from /proc once a second."""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.sipp_load import CLK_TCK, read_proc


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the probe started
    finished: int  # calls the node has finished (call.completed / call.failed seen on MQTT)
    supervisor_kb: int
    worker_pid: int | None
    worker_kb: int
    cpu: float  # utime+stime of the tree, plus what the supervisor reaped (dead workers)


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def is_worker(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return b"gateway.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def reaped_cpu(pid: int) -> float:
    """cutime + cstime: CPU of the children `pid` has waited for (workers that died)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


@dataclass
class NodeProbe:
    supervisor: int
    finished: Callable[[], int]
    period: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)  # in the order first seen

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> NodeProbe:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> Sample | None:
        try:
            cpu, sup_kb, _, _ = read_proc(self.supervisor)
            cpu += reaped_cpu(self.supervisor)
        except (OSError, AttributeError):
            return None  # the node is gone
        worker, worker_kb = None, 0
        for child in children(self.supervisor):
            with contextlib.suppress(OSError, AttributeError):
                child_cpu, kb, _, _ = read_proc(child)
                cpu += child_cpu
                if is_worker(child):
                    worker, worker_kb = child, kb
        if worker is not None and worker not in self.worker_pids:
            self.worker_pids.append(worker)
        s = Sample(time.monotonic() - self._t0, self.finished(), sup_kb, worker, worker_kb, cpu)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


def growth_per_100(
    samples: list[Sample], warmup: int = 50, worker_warmup: int = 20
) -> dict[str, float | None]:
    """Least-squares RSS growth, kB per 100 finished calls: the supervisor's after `warmup`
    calls, the worker's over the life of one worker PID (a restarted worker starts from
    scratch) after its own first `worker_warmup` calls, for the life that saw the most calls
    past its warm-up. None when no stretch of calls is long enough to measure."""
    lives: dict[int, list[Sample]] = {}
    for s in samples:
        if s.worker_pid is not None:
            lives.setdefault(s.worker_pid, []).append(s)
    measured = [
        [s for s in life if s.finished - life[0].finished >= worker_warmup]
        for life in lives.values()
    ]
    longest = max(measured, key=lambda life: _span(life), default=[])
    sup = _slope([s for s in samples if s.finished >= warmup], lambda s: s.supervisor_kb)
    wrk = _slope(longest, lambda s: s.worker_kb) if _span(longest) >= worker_warmup else None
    total = None if sup is None or wrk is None else sup + wrk
    return {"supervisor_kb": sup, "worker_kb": wrk, "total_kb": total}


def _span(samples: list[Sample]) -> int:
    return samples[-1].finished - samples[0].finished if samples else 0


def _slope(samples: list[Sample], value: Callable[[Sample], int]) -> float | None:
    xs = [s.finished for s in samples]
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, [value(s) for s in samples]).slope * 100
