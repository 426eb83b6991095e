#!/usr/bin/env python3
"""SIP load through the front: calls/s sustained, calls held with RTP, and what each process
costs, for a node of N workers behind its embedded front.

Starts a real node on loopback (the integration tests' `workers_config`: `--workers` SIP
workers behind the node's own Kamailio front, echo agent on +15550100, embedded mosquitto,
HTTP API for /health and /metrics, log at INFO) and drives the front with SIPp's
`sipp_scenarios/uac_rtp_hold.xml` (INVITE, RTP for the whole call, BYE), one SIPp as one
carrier (a single source address):

  * idle: CPU of every process over `--idle` seconds, PSS of each;
  * ramp: for each of `--rates`, `--step` seconds of calls `--call-ms` long at that rate
    (SIPp -r; at most 4 x workers in flight): calls attempted / succeeded / failed, 503s seen
    by SIPp and who answered them (the front's refusals by reason, the workers' gate by
    reason, from /metrics), the rate SIPp achieved, and CPU of the front (utime+stime of all
    kamailio processes), of each worker, of the supervisor (`sipedge run`), of mosquitto and
    of SIPp itself, as % of one core and in ms per call. The sustained rate is the highest
    step with fewer than 0.1 % failed calls that SIPp drove at >= 95 % of its rate;
  * held: `--held` calls (default every slot: 4 x workers) set up at 10/s, each held
    `--hold` seconds with RTP both ways; once all are up, CPU over `--window` seconds and
    PSS of each process, and one more INVITE, which the front must answer 503.
    limits.media_timeout is 10 s, so a held call whose RTP did not reach its worker is hung
    up by the worker and counts as failed.

    python bench/front_load.py --workers 3
    python bench/front_load.py --workers 10 --rates 10,25,50,75 --json

The node's per-source limits are raised for the one SIPp source (a carrier is one source):
limits.invites_per_second_per_source 2 x the highest rate, max_unconfirmed_per_source
4 x workers; the front's per-worker cap (sip.front.worker_invites_per_second, default 20/s)
is left as configured, so N workers take at most 20 x N new calls/s. Run from the
repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from tests.integration.node import NodeProcess, workers_config  # noqa: E402
from tests.integration.peers import HOST, Sipp, free_port, free_udp_port_run  # noqa: E402
from tests.integration.rawsip import RawUac  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NUMBER = "+15550100"
SCENARIO = "uac_rtp_hold.xml"
READY = re.compile(r"event=worker_ready worker=(\d+) pid=(\d+)")
SAMPLE = re.compile(r'^(sipedge_(?:front_)?invites_refused_total)\{reason="(\w+)"\} (\d+)$', re.M)
UNEXPECTED = re.compile(r"received 'SIP/2\.0 (\d{3})")
FRONT_CALLS = re.compile(r'^sipedge_front_worker_calls\{worker="(\w+)"\} (\d+)$', re.M)
COUNTER = re.compile(r"^(sipedge_front_(?:failovers|invites_dispatched)_total) (\d+)$", re.M)


# -- processes ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of all the process's threads, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def pss_kb(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    found = re.search(r"^Pss:\s+(\d+)", text, re.M)
    return int(found.group(1)) if found else 0


@dataclass
class Roles:
    """The node's processes by role: what each figure adds up."""

    supervisor: int
    workers: dict[int, int]  # worker index -> pid
    front: list[int]  # every kamailio process
    broker: list[int]

    @classmethod
    def of(cls, node: NodeProcess, workers: int) -> Roles:
        assert node.proc is not None
        pids = {int(w): int(p) for w, p in READY.findall(node.log())}
        if len(pids) < workers:
            raise RuntimeError(f"{workers} workers not ready: {pids}")
        tree = descendants(node.proc.pid)
        return cls(
            supervisor=node.proc.pid,
            workers=pids,
            front=[p for p in tree if comm(p) == "kamailio"],
            broker=[p for p in tree if comm(p) == "mosquitto"],
        )

    def groups(self, sipp: int | None = None) -> dict[str, list[int]]:
        out = {"front": self.front, "supervisor": [self.supervisor], "mosquitto": self.broker}
        out |= {f"worker{w}": [p] for w, p in sorted(self.workers.items())}
        if sipp is not None:
            out["sipp"] = [sipp]
        return out


def cpu_snapshot(groups: dict[str, list[int]]) -> dict[int, float]:
    snap: dict[int, float] = {}
    for pids in groups.values():
        for pid in pids:
            value = cpu_seconds(pid)
            if value is not None:
                snap[pid] = value
    return snap


def cpu_use(groups: dict[str, list[int]], before: dict[int, float], after: dict[int, float],
            seconds: float) -> dict[str, float]:  # fmt: skip
    """% of one core per group, over processes alive at both ends."""
    return {
        name: 100 * sum(after[p] - before[p] for p in pids if p in before and p in after) / seconds
        for name, pids in groups.items()
    }


def pss_use(groups: dict[str, list[int]]) -> dict[str, float]:
    """PSS per group in MB."""
    return {name: sum(pss_kb(p) for p in pids) / 1024 for name, pids in groups.items()}


# -- the node's own view --------------------------------------------------------------------


def counters(api: httpx.Client) -> dict[str, int]:
    """Refusals (front and workers, by reason), dispatches and failovers from /metrics."""
    text = api.get("/metrics").text
    out = {f"{name}:{reason}": int(n) for name, reason, n in SAMPLE.findall(text)}
    out |= {name: int(n) for name, n in COUNTER.findall(text)}
    return out


def front_calls(api: httpx.Client) -> int:
    """Calls the front's dispatcher counts on the workers (0 once every call has ended)."""
    return sum(int(n) for _, n in FRONT_CALLS.findall(api.get("/metrics").text))


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] != before.get(k, 0)}


def active_calls(api: httpx.Client) -> int:
    return int(sum(w["active_calls"] for w in api.get("/health").json()["workers"]))


def reach_active(api: httpx.Client, wanted: int, timeout: float) -> bool:
    """Whether the workers hold `wanted` calls, in all, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while active_calls(api) != wanted:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def wait_active(api: httpx.Client, wanted: int, timeout: float) -> None:
    if not reach_active(api, wanted, timeout):
        raise RuntimeError(f"{active_calls(api)} calls up, waited for {wanted}")


# -- load -----------------------------------------------------------------------------------


@dataclass
class Step:
    rate: float
    calls: int
    wall: float
    achieved: float
    ok: int
    failed: int
    sipp_503: int
    failed_pct: float
    answers: dict[str, int]  # the unexpected SIP answers behind SIPp's failed calls
    front_calls_after: int  # calls the front still counted once the workers had none
    pss_mb: dict[str, float]  # after the step
    refused: dict[str, int]
    cpu: dict[str, float]  # % of one core
    ms_per_call: dict[str, float]


@dataclass
class Held:
    calls: int
    ok: int
    failed: int
    up: int  # calls up at once, as the workers counted them
    extra_invite: int  # the front's answer to one more
    cpu: dict[str, float]
    pss_mb: dict[str, float]
    refused: dict[str, int] = field(default_factory=dict)


def media_port() -> int:
    """SIPp's first RTP port: [auto_media_port] walks 10000 ports up from it, call by call,
    so it must start below 55536 (above, SDP gets ports past 65535 and the worker 400)."""
    while (port := free_udp_port_run(2, step=2)) >= 55000:
        pass
    return port


def speech_ulaw() -> bytes:
    """The speech signal of the pcaps as raw mu-law (uac_rtp_hold.xml's rtp_stream input)."""
    spec = importlib.util.spec_from_file_location(
        "make_pcap", REPO / "sipp_scenarios" / "make_pcap.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return bytes(module.pcmu_payload(3.0))


def sipp(tmp: Path, port: int, name: str, **options: Any) -> Sipp:
    caller = Sipp(SCENARIO, remote=(HOST, port), service=NUMBER, workdir=tmp / name,
                  media_port=media_port(), **options)  # fmt: skip
    (caller.workdir / "speech_pcmu.ulaw").write_bytes(speech_ulaw())
    return caller


def ramp_step(node: NodeProcess, api: httpx.Client, roles: Roles, args: argparse.Namespace,
              rate: float) -> Step:  # fmt: skip
    wait_active(api, 0, 60)
    time.sleep(args.settle)  # closed media sockets rejoin the workers' ioqueues later
    calls = max(1, round(rate * args.step))
    caller = sipp(node.tmp, node.sip_port, f"cps-{rate:g}", calls=calls, rate=rate,
                  limit=4 * args.workers, duration_ms=args.call_ms)  # fmt: skip
    seen0 = counters(api)
    caller.start()
    groups = roles.groups(caller.proc.pid if caller.proc else None)
    snap0, t0 = cpu_snapshot(groups), time.monotonic()
    snap1, t1 = snap0, t0
    while caller.proc is not None and caller.proc.poll() is None:
        snap1, t1 = cpu_snapshot(groups), time.monotonic()  # SIPp's own CPU: while it runs
        time.sleep(0.2)
    result = caller.wait(args.step * 4 + 60)
    wall = t1 - t0
    wait_active(api, 0, 60)
    time.sleep(1)
    created = int(result.stats.get("TotalCallCreated") or result.successful + result.failed)
    cpu = cpu_use(groups, snap0, snap1, wall)
    cpu["workers"] = sum(v for k, v in cpu.items() if k.startswith("worker"))
    sending = max(wall - args.call_ms / 1000, 1e-3)  # SIPp's run less the last call's length
    return Step(
        rate=rate, calls=created, wall=round(wall, 2), achieved=round(created / sending, 2),
        ok=result.successful, failed=result.failed, sipp_503=result.errors.count("SIP/2.0 503"),
        failed_pct=round(100 * result.failed / max(created, 1), 3),
        answers=dict(Counter(UNEXPECTED.findall(result.errors))),
        front_calls_after=front_calls(api),
        pss_mb={k: round(v, 1) for k, v in pss_use(roles.groups()).items()},
        refused=delta(seen0, counters(api)),
        cpu={k: round(v, 2) for k, v in cpu.items()},
        ms_per_call={k: round(10 * v * wall / max(result.successful, 1), 2)
                     for k, v in cpu.items()},
    )  # fmt: skip


def held_calls(node: NodeProcess, api: httpx.Client, roles: Roles,
               args: argparse.Namespace) -> Held:  # fmt: skip
    wait_active(api, 0, 60)
    time.sleep(args.settle)
    count = args.held or 4 * args.workers
    seen0 = counters(api)
    caller = sipp(node.tmp, node.sip_port, "held", calls=count, rate=10, limit=count,
                  duration_ms=int(args.hold * 1000)).start()  # fmt: skip
    reach_active(api, count, 60)  # measured as it is when not all of them came up
    groups = roles.groups(caller.proc.pid if caller.proc else None)
    snap0, t0 = cpu_snapshot(groups), time.monotonic()
    time.sleep(args.window)
    snap1, t1 = cpu_snapshot(groups), time.monotonic()
    up = active_calls(api)
    pss = pss_use(groups)
    with RawUac(node.sip_port) as uac:
        extra = uac.invite()
        answer = uac.wait_final(extra)
        uac.ack(extra, answer)
    result = caller.wait(args.hold + 120)
    cpu = cpu_use(groups, snap0, snap1, t1 - t0)
    cpu["workers"] = sum(v for k, v in cpu.items() if k.startswith("worker"))
    return Held(
        calls=count, ok=result.successful, failed=result.failed, up=up,
        extra_invite=answer.status, cpu={k: round(v, 2) for k, v in cpu.items()},
        pss_mb={k: round(v, 1) for k, v in pss.items()}, refused=delta(seen0, counters(api)),
    )  # fmt: skip


def sustained(steps: list[dict[str, Any]]) -> float | None:
    """The highest rate SIPp achieved in a step with fewer than 0.1 % failed calls (a step
    SIPp could not drive at its rate was bound by the slots: 4 x workers calls in flight)."""
    good = [s["achieved"] for s in steps if s["failed_pct"] < 0.1]
    return max(good) if good else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="sipedge-front-load-"))
    api_port = free_port("tcp")
    top = max(args.rates)
    limits = {
        "max_concurrent_calls": 4 * args.workers,
        "invites_per_second_per_source": 2 * top,
        "invite_burst_per_source": 4 * top,
        "max_unconfirmed_per_source": 4 * args.workers,
        "media_timeout": 10.0,
    }
    config = workers_config(
        tmp, args.workers, limits=limits,
        api={"enabled": True, "listen": HOST, "port": api_port, "api_keys": []},
    )  # fmt: skip
    # 40 RTP ports per worker (base_config's 100 are too few for 10), below the test nodes'.
    span = 40 * args.workers
    first = 10000 + (os.getpid() % (20000 // span)) * span
    config["sip"]["rtp_ports"] = {"start": first, "end": first + span - 1}
    for trunk in config["trunks"]:  # the test trunk's 10 would refuse held calls past 10
        trunk["max_concurrent_calls"] = 4 * args.workers
    load_before = os.getloadavg()
    node = NodeProcess(tmp, config, log_level="INFO").start(timeout=120)
    api = httpx.Client(base_url=f"http://{HOST}:{api_port}", timeout=10)
    try:
        wait_active(api, 0, 30)
        roles = Roles.of(node, args.workers)
        time.sleep(args.settle)
        groups = roles.groups()
        snap0, t0 = cpu_snapshot(groups), time.monotonic()
        time.sleep(args.idle)
        idle = cpu_use(groups, snap0, cpu_snapshot(groups), time.monotonic() - t0)
        idle_pss = pss_use(groups)
        steps = [ramp_step(node, api, roles, args, rate) for rate in args.rates]
        held = held_calls(node, api, roles, args) if args.hold > 0 else None
        restarts = node.log().count("event=worker_died")
    finally:
        api.close()
        node.stop()
    return {
        "workers": args.workers,
        "call_ms": args.call_ms,
        "limits": limits,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "idle_cpu": {k: round(v, 2) for k, v in idle.items()},
        "idle_pss_mb": {k: round(v, 1) for k, v in idle_pss.items()},
        "steps": [asdict(s) for s in steps],
        "sustained_cps": sustained([asdict(s) for s in steps]),
        "held": asdict(held) if held else None,
        "worker_restarts": restarts,
        "front_processes": len(roles.front),
        "artifacts": str(tmp),
    }


# -- report ---------------------------------------------------------------------------------


def per_worker(figures: dict[str, float], unit: str) -> str:
    values = [v for k, v in figures.items() if re.fullmatch(r"worker\d+", k)]
    if not values:
        return "-"
    return (f"{statistics.fmean(values):.2f}{unit} mean, {min(values):.2f}-{max(values):.2f}"
            f"{unit}")  # fmt: skip


def report(r: dict[str, Any]) -> None:
    print(f"sipedge front load: {r['workers']} workers behind the embedded front "
          f"({r['front_processes']} kamailio processes); load average before "
          f"{r['loadavg_before'][0]}, after {r['loadavg_after'][0]}")  # fmt: skip
    idle, pss = r["idle_cpu"], r["idle_pss_mb"]
    print(f"idle (% of one core): front {idle['front']:.2f}, supervisor {idle['supervisor']:.2f},"
          f" mosquitto {idle['mosquitto']:.2f}, per worker {per_worker(idle, '')}")  # fmt: skip
    print(f"idle PSS: front {pss['front']:.1f} MB, supervisor {pss['supervisor']:.1f} MB, "
          f"per worker {per_worker(pss, ' MB')}")  # fmt: skip
    print(f"ramp: calls of {r['call_ms']} ms after the ACK, RTP throughout, one source")
    print("  rate  achieved  calls    ok  failed  fail%   503 | CPU % of a core: front  workers"
          "  supervisor  mosquitto  sipp | ms/call: front workers")  # fmt: skip
    for s in r["steps"]:
        c, m = s["cpu"], s["ms_per_call"]
        print(f"  {s['rate']:4g}  {s['achieved']:8.2f} {s['calls']:6d} {s['ok']:5d} "
              f"{s['failed']:7d} {s['failed_pct']:6.2f} {s['sipp_503']:5d} |"
              f" {c['front']:21.1f} {c['workers']:8.1f} {c['supervisor']:11.1f}"
              f" {c['mosquitto']:10.1f} {c.get('sipp', 0):5.1f} |"
              f" {m['front']:14.2f} {m['workers']:7.2f}")  # fmt: skip
        if s["refused"]:
            print(f"        {', '.join(f'{k}={v}' for k, v in s['refused'].items())}")
        if s["answers"]:
            print(f"        failed calls' answers: {s['answers']}")
        if s["front_calls_after"]:
            print(f"        the front still counts {s['front_calls_after']} calls on the workers")
        print(
            f"        per worker CPU: {per_worker(c, ' %')}"
            + (f"; PSS after: {per_worker(s['pss_mb'], ' MB')}" if "pss_mb" in s else "")
        )
    print(f"sustained: {sustained(r['steps'])} calls/s with < 0.1 % failed")
    h = r["held"]
    if h:
        c, p = h["cpu"], h["pss_mb"]
        print(f"held: {h['calls']} calls with RTP, {h['up']} up at once; ok {h['ok']}, failed "
              f"{h['failed']}; one more INVITE answered {h['extra_invite']}")  # fmt: skip
        print(f"  CPU (% of a core): front {c['front']:.2f}, workers {c['workers']:.1f} "
              f"(per worker {per_worker(c, '')}), supervisor {c['supervisor']:.2f}, "
              f"mosquitto {c['mosquitto']:.2f}, sipp {c.get('sipp', 0):.1f}")  # fmt: skip
        print(f"  PSS: front {p['front']:.1f} MB, supervisor {p['supervisor']:.1f} MB, "
              f"per worker {per_worker(p, ' MB')}")  # fmt: skip
        if h["refused"]:
            print(f"  {', '.join(f'{k}={v}' for k, v in h['refused'].items())}")
    print(f"worker restarts: {r['worker_restarts']}; artifacts: {r['artifacts']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")],
                   default=[10.0, 25.0, 50.0, 75.0], help="calls/s of each ramp step")  # fmt: skip
    p.add_argument("--step", type=float, default=20.0, help="seconds of calls per ramp step")
    p.add_argument("--call-ms", type=int, default=250, help="ramp call length after the ACK")
    p.add_argument("--held", type=int, default=0, help="held calls (default: 4 x workers)")
    p.add_argument("--hold", type=float, default=40.0, help="seconds each held call lasts")
    p.add_argument("--window", type=float, default=15.0, help="CPU window while all are held")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle measurement")
    p.add_argument("--settle", type=float, default=3.0, help="pause before each phase")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
