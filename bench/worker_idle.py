#!/usr/bin/env python3
"""What an idle SIP worker costs: node start time, CPU and memory per worker with no calls.

Starts a real sipedge node on loopback (the integration tests' `base_config`: echo agent,
embedded mosquitto, UDP+TCP; with `--workers` above 1 the workers sit behind the node's
embedded front, `workers_config`), waits until every worker is ready, then
for each worker process (the supervisor's `gateway.worker` children):

  * start: seconds from spawning `sipedge run` until the node answers SIP (NodeProcess.start
    polls every 0.1 s);
  * idle CPU: utime+stime (all threads, /proc/<pid>/stat) over `--seconds`, `--repeats`
    times, as % of one core;
  * PSS and RSS (/proc/<pid>/smaps_rollup): PSS shares the pages several workers map (the
    Python binary, shared libraries) between them, so it is what each worker adds;
  * modules: how many modules the worker had imported when it became ready (its
    `event=sip_worker_ready` log line; absent in versions that did not log it).

    python bench/worker_idle.py                       # 1 worker, 3 x 30 s
    python bench/worker_idle.py --workers 3
    python bench/worker_idle.py --workers 3 --seconds 10 --repeats 1

Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.node import NodeProcess, base_config, workers_config  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
READY = re.compile(r"event=worker_ready worker=(\d+) pid=(\d+)")
MODULES = re.compile(r"worker=(\d+) event=sip_worker_ready .*modules=(\d+)")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in kB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    pss = int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    rss = int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    return pss, rss


def worker_pids(node: NodeProcess, count: int, timeout: float = 30.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {int(w): int(p) for w, p in READY.findall(node.log())}
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise RuntimeError(f"{count} workers not ready:\n{node.log()[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of one window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before measuring")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sipedge-idle-") as tmp_dir:
        tmp = Path(tmp_dir)
        config = workers_config(tmp, args.workers) if args.workers > 1 else base_config(tmp)
        node = NodeProcess(tmp, config, log_level="INFO")
        started = time.monotonic()
        node.start(timeout=60)
        start_s = time.monotonic() - started
        try:
            pids = worker_pids(node, args.workers)
            time.sleep(args.settle)
            windows: dict[int, list[float]] = {w: [] for w in pids}
            for _ in range(args.repeats):
                before = {w: cpu_seconds(p) for w, p in pids.items()}
                t0 = time.monotonic()
                time.sleep(args.seconds)
                elapsed = time.monotonic() - t0
                for w, p in pids.items():
                    windows[w].append(100 * (cpu_seconds(p) - before[w]) / elapsed)
            memory = {w: memory_kb(p) for w, p in pids.items()}
            modules = {int(w): int(n) for w, n in MODULES.findall(node.log())}
        finally:
            node.stop()

    print(f"workers {args.workers}: node answered SIP {start_s:.2f} s after `sipedge run`")
    print(f"idle CPU over {args.repeats} x {args.seconds:g} s windows (% of one core):")
    for w in sorted(windows):
        figures = " ".join(f"{v:.2f}" for v in windows[w])
        pss, rss = memory[w]
        print(
            f"  worker {w} pid {pids[w]}: {figures}  (median {statistics.median(windows[w]):.2f})"
            f"  PSS {pss / 1024:.1f} MB  RSS {rss / 1024:.1f} MB"
            f"  modules {modules.get(w, '-')}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
