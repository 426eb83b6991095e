#!/usr/bin/env python3
"""SIP load on one worker: calls/s, CPU and memory per call, leak check, SIPp response times.

Starts a real sipedge node on loopback (`python -m gateway.cli run`, the integration tests'
`base_config`: echo agent on +15550100, embedded mosquitto, UDP+TCP), then drives SIPp's
`sipp_scenarios/uac_pcap.xml` (INVITE, 3.0 s of PCMU speech, `--hold-ms` more, BYE) at
`--rate` calls/s with at most `--limit` at once, `--calls` in total. Every second it samples
the SIP worker process (the supervisor's child running `gateway.worker`): CPU time
(utime+stime, all threads, from /proc/<pid>/stat), RSS (VmRSS from /proc/<pid>/status),
threads and open fds, and how many calls the node has finished (its log). It prints:

  * calls attempted / succeeded / failed / answered 503 (SIPp's counts and its error trace);
  * worker CPU seconds per call, and % of a core per concurrent call (idle rate subtracted);
  * worker RSS at start, after the first 50 calls and at the end, with the growth per 100
    calls between call 50 and the end (least-squares slope over the samples: the leak check);
  * SIPp's INVITE -> 200 response time (mean, and the repartition from the scenario) and
    call length.

    python bench/sipp_load.py                                # 300 calls, 2 cps, 4 at once
    python bench/sipp_load.py --calls 300 --rate 4 --limit 4 --hold-ms 0
    python bench/sipp_load.py --calls 1000 --rate 4 --limit 4 --hold-ms 0

The default limit is 4: the pjsua2-python wheel holds 4 calls per worker, and a 5th INVITE is
answered 503 (README "Known limit"). Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.node import NodeProcess, base_config  # noqa: E402
from tests.integration.peers import HOST, Sipp  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NUMBER = "+15550100"
FINISHED = re.compile(r"event=(?:call_completed|call_failed|call_refused) ")


def worker_pid(supervisor: int, timeout: float = 10.0) -> int:
    """The SIP worker: the supervisor's child whose command line contains gateway.worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"gateway.worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                        return int(child)
        time.sleep(0.1)
    raise RuntimeError(f"no gateway.worker child of {supervisor}")


@dataclass
class Sample:
    t: float  # seconds since the sampler started
    cpu: float  # utime + stime, seconds
    rss_kb: int
    threads: int
    fds: int
    finished: int  # calls the node has finished (completed, failed or refused)


def read_proc(pid: int) -> tuple[float, int, int, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return cpu, rss, threads, fds


@dataclass
class Sampler:
    pid: int
    log_path: Path
    period: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample(self) -> Sample:
        cpu, rss, threads, fds = read_proc(self.pid)
        finished = len(FINISHED.findall(self.log_path.read_text(errors="replace")))
        s = Sample(time.monotonic() - self._t0, cpu, rss, threads, fds, finished)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            with contextlib.suppress(OSError, AttributeError):
                self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(OSError, AttributeError):
            self.sample()


def slope_per_100(samples: list[Sample]) -> float | None:
    """Least-squares RSS (kB) growth per 100 finished calls."""
    xs = [s.finished for s in samples]
    if len(set(xs)) < 2:
        return None
    return statistics.linear_regression(xs, [s.rss_kb for s in samples]).slope * 100


def sipp_time_ms(value: str | None) -> float | None:
    """SIPp's 'HH:MM:SS:uuuuuu' (microseconds; older builds 'HH:MM:SS:mmm') to milliseconds."""
    if not value:
        return None
    h, m, sec, frac = value.split(":")[:4]
    scale = 1000.0 if len(frac) == 6 else 1.0
    return ((int(h) * 60 + int(m)) * 60 + int(sec)) * 1000 + int(frac) / scale


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f} MB"


def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sipedge-load-"))
    limits = {"max_concurrent_calls": 10, "max_call_duration": args.max_call_duration}
    config = base_config(tmp, limits=limits)
    node = NodeProcess(tmp, config, log_level="INFO").start()  # DEBUG logs would be measured
    try:
        assert node.proc is not None
        pid = worker_pid(node.proc.pid)
        sampler = Sampler(pid, node.log_path)
        idle0 = sampler.sample()
        time.sleep(args.idle)
        idle1 = sampler.sample()
        idle_rate = (idle1.cpu - idle0.cpu) / max(idle1.t - idle0.t, 1e-9)
        sampler.samples.clear()
        start = sampler.sample()
        sampler.start()
        sipp = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service=NUMBER,
            calls=args.calls,
            rate=args.rate,
            limit=args.limit,
            duration_ms=args.hold_ms,
            workdir=tmp / "sipp",
        )
        t0 = time.monotonic()
        res = sipp.run(timeout=args.calls * (3.5 + args.hold_ms / 1000) + 600)
        wall = time.monotonic() - t0
        time.sleep(1.5)  # let the last BYEs and the node's log lines land
        sampler.stop()
        end = sampler.samples[-1]
        worker_alive = Path(f"/proc/{pid}").exists()
        samples = sampler.samples
    finally:
        node.stop()

    stats = res.stats
    rows = read_stat_rows(tmp / "sipp" / "stats.csv")
    created = _int(stats.get("TotalCallCreated")) or res.successful + res.failed
    got_503 = res.errors.count("SIP/2.0 503")
    cpu = end.cpu - start.cpu
    busy = cpu - idle_rate * (end.t - start.t)
    concurrency = [float(r["CurrentCall"]) for r in rows if r.get("CurrentCall")]
    mean_conc = statistics.fmean(concurrency) if concurrency else 0.0
    at50 = next((s for s in samples if s.finished >= 50), None)
    after50 = [s for s in samples if s.finished >= 50]
    slope = slope_per_100(after50)

    print(
        f"sipedge SIP load: {args.calls} calls, rate {args.rate}/s, limit {args.limit}, "
        f"hold {args.hold_ms} ms (uac_pcap.xml: 3.0 s RTP + hold), worker pid {pid}"
    )
    print(
        f"  wall {wall:.1f} s, {created / wall:.2f} calls/s achieved, mean concurrent calls "
        f"{mean_conc:.2f} (SIPp CurrentCall)"
    )
    print(
        f"calls: attempted {created}  succeeded {res.successful}  failed {res.failed}  "
        f"503 {got_503}  (node finished {end.finished}; worker alive: {worker_alive})"
    )
    if res.failed:
        codes = sorted(set(re.findall(r"SIP/2\.0 (\d{3})", res.errors)))
        print(
            f"  failure answers seen: {', '.join(codes) or 'none (timeouts?)'}; see {tmp / 'sipp'}"
        )
    print(
        f"worker CPU: {cpu:.2f} s total, idle {idle_rate * 100:.2f}% of a core; "
        f"{busy / max(res.successful, 1) * 1000:.1f} ms per call (idle subtracted), "
        f"{(busy / wall) / max(mean_conc, 1e-9) * 100:.2f}% of a core per concurrent call"
    )
    print(
        f"worker RSS: start {mb(start.rss_kb)}"
        + (f", after {at50.finished} calls {mb(at50.rss_kb)}" if at50 else "")
        + f", end ({end.finished} calls) {mb(end.rss_kb)}; "
        + f"peak {mb(max(s.rss_kb for s in samples))}"
    )
    if at50 and end.finished > at50.finished:
        growth = (end.rss_kb - at50.rss_kb) / (end.finished - at50.finished) * 100
        print(
            f"  growth per 100 calls after call 50: {growth:.0f} kB (end - at50), "
            f"{slope:.0f} kB (least-squares slope over {len(after50)} samples)"
            if slope is not None
            else f"  growth per 100 calls after call 50: {growth:.0f} kB"
        )
    print(f"  threads {start.threads} -> {end.threads}, open fds {start.fds} -> {end.fds}")
    rt = sipp_time_ms(stats.get("ResponseTime1(C)"))
    rt_sd = sipp_time_ms(stats.get("ResponseTime1StDev(C)"))
    cl = sipp_time_ms(stats.get("CallLength(C)"))
    if rt is not None:
        print(
            f"SIPp INVITE -> 200: mean {rt:.1f} ms, stdev {rt_sd or 0:.1f} ms; "
            f"call length mean {cl or 0:.0f} ms"
        )
    buckets = [
        (k.split("_", 1)[1], v)
        for k, v in stats.items()
        if k.startswith("ResponseTimeRepartition1_")
    ]
    if buckets:
        print(
            "  INVITE -> 200 repartition (ms: calls): "
            + ", ".join(f"{k} {v}" for k, v in buckets if v not in ("", "0"))
        )
    if args.samples:
        print("samples (t s, finished calls, cpu s, rss kB, threads, fds):")
        for s in samples:
            print(
                f"  {s.t:7.1f} {s.finished:5d} {s.cpu:8.2f} {s.rss_kb:8d} {s.threads:3d} {s.fds:4d}"
            )
    print(f"artifacts: {tmp}")


def read_stat_rows(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.exists():
        return []
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    return [dict(zip(rows[0], r, strict=False)) for r in rows[1:]]


def _int(v: str | None) -> int:
    try:
        return int(v) if v else 0
    except ValueError:
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2.0, help="calls per second (SIPp -r)")
    p.add_argument("--limit", type=int, default=4, help="max concurrent calls (SIPp -l)")
    p.add_argument("--calls", type=int, default=300, help="total calls (SIPp -m)")
    p.add_argument("--hold-ms", type=int, default=0, help="extra hold after the 3 s pcap (-d)")
    p.add_argument(
        "--max-call-duration",
        type=int,
        default=3600,
        help="node limits.max_call_duration (s); the engine keeps a timer per "
        "answered call this long (see bench/README.md, SIP load)",
    )
    p.add_argument("--idle", type=float, default=3.0, help="seconds to measure the idle rate")
    p.add_argument("--samples", action="store_true", help="print every 1 s sample")
    run(p.parse_args())


if __name__ == "__main__":
    main()
