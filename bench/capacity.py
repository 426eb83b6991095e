#!/usr/bin/env python3
"""Capacity: how many concurrent agent-streaming calls one node holds (issue 12's measure).

For each step of concurrent calls (`--steps`, default 25,50,100,150,200,250,300) it starts a
fresh node (`sipedge run`) with N workers behind the embedded front (N = ceil(calls / 4), or
`--workers`), an agent server in its own process that echoes every caller frame straight back
(`--agent twilio-ws`: Twilio Media Streams; `pcm-ws`; or `echo`, the node's built-in agent,
no server), and SIPp callers (a scenario made from sipp_scenarios/uac_pcap.xml playing a PCMU
pcap of speech bursts, 400 ms voiced / 200 ms silent, for the whole call): one SIPp process
placing every call (`--callers one`, the default), or one per call (`--callers each`, ten
times the CPU). `--planes N` sets node.media_planes. Calls start at `--rate` per second;
once all are up it measures for `--hold` seconds:

  * calls up (SIPp's calls still in progress) and failed calls (SIPp's failed calls);
  * speech bursts lost and wire-to-wire latency each way, by onset detection: RTP captured on
    `lo` (AF_PACKET, needs root; the kernel's arrival times) caller -> node, the agent's first
    voiced frame of each burst (agent process clock: CLOCK_MONOTONIC is one clock for all
    processes), node -> caller.
    in = caller RTP -> agent, out = agent -> RTP back to the caller. With `--agent echo`
    there is no agent on the wire: `out` is the round trip RTP in -> RTP out (echo delay 0)
    and `in` is null; the step holds if that round trip's p99 is under twice the limit;
  * sipedge CPU: utime+stime of every process of the node (supervisor, workers, kamailio,
    embedded mosquitto), % of one core, total and per call; the agent server's apart;
  * idle CPU per worker (the node before the calls start) and PSS (/proc/PID/smaps_rollup,
    summed over the node's processes) total and per call.

It stops at the first step that does not hold (0 failed calls, 0 lost bursts, p99 < 40 ms
each way) and prints the highest step held. `--json` prints one object instead of the table.

    python bench/capacity.py --steps 8,16,24 --hold 15
    python bench/capacity.py --agent echo --json

Run from the repository root, as root (packet capture).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.capacity_wire import AgentServer, Capture, pair  # noqa: E402
from gateway.config import MAX_WORKERS  # noqa: E402
from sipp_scenarios.make_pcap import build_pcap  # noqa: E402
from tests.integration.node import NodeProcess, workers_config  # noqa: E402
from tests.integration.peers import HOST, SCENARIOS, SIPP_BIN, free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CALLS_PER_WORKER = 4
ROLES = ((b"kamailio", "front"), (b"mosquitto", "broker"))
LIMIT_MS = 40.0
READY = re.compile(r"event=worker_ready worker=(\d+) pid=(\d+)")


# --- processes of the node -----------------------------------------------------------------


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    return 0.0


def pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError, AttributeError):
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        return int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    return 0


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def role(pid: int) -> str:
    """workers, plane (the media plane), front (kamailio), broker (mosquitto) or node (the
    supervisor)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "node"
    if b"gateway.worker" in cmd:
        return "workers"
    if b"gateway.plane" in cmd:
        return "plane"
    return next((name for key, name in ROLES if key in cmd), "node")


def cpu_rates(pids: list[int], seconds: float) -> dict[int, float]:
    """% of one core per pid over `seconds`."""
    before = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {p: 100 * (cpu_seconds(p) - before[p]) / elapsed for p in pids}


# --- one step ------------------------------------------------------------------------------


@dataclass
class Step:
    calls: int
    workers: int
    up: int
    failed: int
    bursts_lost: int
    bursts_lost_in: int
    bursts_lost_out: int
    in_p50_ms: float | None
    in_p99_ms: float | None
    out_p50_ms: float | None
    out_p99_ms: float | None
    cpu_total_pct: float
    cpu_roles_pct: dict[str, float]  # the total split: workers, front, broker, node
    cpu_per_call_pct: float
    idle_per_worker_pct: float
    pss_mb: float
    pss_per_call_mb: float
    pss_idle_mb: float  # the same node before its calls: workers, plane, front, supervisor
    pss_added_per_call_mb: float  # (pss - pss_idle) / calls: what a call adds
    agent_cpu_pct: float | None
    sipp_cpu_pct: float
    bench_cpu_pct: float  # this process (packet capture, onset detection)
    machine_cpu_pct: float  # every process on the machine, % of one core (noise: the rest)
    bursts: int  # caller speech-burst onsets on the wire in the measured window

    def holds(self, round_trip: bool) -> bool:
        limit_out = 2 * LIMIT_MS if round_trip else LIMIT_MS
        return (
            self.failed == 0
            and self.up == self.calls
            and self.bursts_lost == 0
            and (round_trip or (self.in_p99_ms is not None and self.in_p99_ms < LIMIT_MS))
            and self.out_p99_ms is not None
            and self.out_p99_ms < limit_out
        )


def node_config(
    tmp: Path,
    calls: int,
    workers: int,
    agent: str,
    agent_port: int,
    planes: int | str | None,
) -> dict[str, Any]:
    numbers = [number(i) for i in range(calls)]
    agents: list[dict[str, Any]] = [{"id": "bot", "type": "echo", "delay_ms": 0}]
    if agent != "echo":
        agents = [{"id": "bot", "type": agent, "url": f"ws://{HOST}:{agent_port}/"}]
    rtp_start = 20000 + (os.getpid() % 5) * 2000  # below Linux's ephemeral range (SIPp's)
    config = workers_config(
        tmp,
        workers,
        numbers=[{"number": n, "agent": "bot"} for n in numbers],
        agents=agents,
        trunks=[
            {
                "id": "loopback",
                "allowed_ips": ["127.0.0.0/8"],
                "max_concurrent_calls": workers * CALLS_PER_WORKER,  # the node's, not 100
            }
        ],
        vad={"barge_in": False},  # the echo is the caller's own voice: no barge-in on it
        limits={
            "max_concurrent_calls": workers * CALLS_PER_WORKER,
            "invites_per_second_per_source": 200,
            "invite_burst_per_source": 400,
            "max_unconfirmed_per_source": 400,
            "ring_timeout": 30,
        },
    )
    config["sip"] |= {
        "transports": ["udp"],
        "codecs": ["PCMU"],
        "rtp_ports": {"start": rtp_start, "end": rtp_start + 20 * workers - 1},
    }
    config["sip"]["front"]["worker_invites_per_second"] = 200
    if planes is not None:
        config["node"]["media_planes"] = planes
    return config


def caller_scenario(tmp: Path, seconds: float, one_sipp: bool) -> Path:
    """uac_pcap.xml playing `seconds` of speech bursts, hanging up when it ends; with
    `one_sipp`, the dialled number from the injection file's first field."""
    pcap = tmp / "speech.pcap"
    pcap.write_bytes(build_pcap(seconds))
    xml = (SCENARIOS / "uac_pcap.xml").read_text()
    xml = xml.replace("pcap/speech_pcmu.pcap", str(pcap))
    xml = xml.replace(
        '<pause milliseconds="3200"/>', f'<pause milliseconds="{seconds * 1000 + 200:.0f}"/>'
    )
    if one_sipp:
        xml = xml.replace("[service]", "[field0]")
    path = tmp / "uac_capacity.xml"
    path.write_text(xml)
    return path


class Callers:
    """The SIPp callers of one step: `calls` calls at `rate` a second, call i (0-based)
    dialling NUMBERS[i] and sending its RTP from `ports[i]`.

    `one` (the default): one SIPp process places every call (`-m calls -inf numbers.csv`);
    SIPp gives call i the media port `-mp` + 4 i ([auto_media_port]) and plays its pcap from
    there through a raw socket, so the bench binds those ports (RTP and RTCP) for the node's
    packets to land on, unread. `each`: one SIPp process per call, as first built (SIPp's
    own loop and pcap thread per call: about 1 % of a core a call, as much as sipedge)."""

    def __init__(self, kind: str, calls: int, rate: float, seconds: float, tmp: Path) -> None:
        self.kind, self.calls, self.rate, self.tmp = kind, calls, rate, tmp
        self.scenario = caller_scenario(tmp, seconds, kind == "one")
        self.timeout = seconds + 60
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sinks: list[socket.socket] = []
        if kind == "one":
            self.base, self.sinks = media_block(calls)
            self.ports = [self.base + 4 * i for i in range(calls)]
        else:
            taken: set[int] = set()
            self.ports = [free_media_port(taken) for _ in range(calls)]
        self.stats = tmp / "sipp_stats.csv"

    def start(self, sip_port: int) -> None:
        if self.kind == "each":
            for i, port in enumerate(self.ports):
                self.procs.append(self._sipp(["-s", number(i), "-m", "1", "-mp", str(port)],
                                             sip_port))  # fmt: skip
                time.sleep(1 / self.rate)
            return
        inf = self.tmp / "numbers.csv"
        inf.write_text("SEQUENTIAL\n" + "".join(f"{number(i)};\n" for i in range(self.calls)))
        self.procs.append(self._sipp(
            ["-inf", str(inf), "-m", str(self.calls), "-l", str(self.calls),
             "-r", f"{self.rate:g}", "-mp", str(self.base),
             "-trace_stat", "-stf", str(self.stats), "-fd", "1"],
            sip_port,
        ))  # fmt: skip
        time.sleep(self.calls / self.rate)

    def _sipp(self, extra: list[str], sip_port: int) -> subprocess.Popen[bytes]:
        cmd = [
            SIPP_BIN, "-sf", str(self.scenario), *extra, "-i", HOST, "-p", str(free_port()),
            "-mi", HOST, "-nostdin", "-timeout", f"{self.timeout:.0f}", "-timeout_error",
            f"{HOST}:{sip_port}",
        ]  # fmt: skip
        return subprocess.Popen(
            cmd, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def up(self) -> int:
        """Calls in progress now."""
        if self.kind == "each":
            return sum(p.poll() is None for p in self.procs)
        return int(self._counters().get("CurrentCall", 0))

    def failed(self) -> int:
        """Failed calls, once every call has ended."""
        codes = [p.wait(self.timeout) for p in self.procs]
        if self.kind == "each":
            return sum(c != 0 for c in codes)
        counters = self._counters()
        ended = counters.get("SuccessfulCall(C)", 0) + counters.get("FailedCall(C)", 0)
        return int(counters.get("FailedCall(C)", 0) + self.calls - ended)

    def _counters(self) -> dict[str, float]:
        """The last line of SIPp's statistics file (-trace_stat, one line a second)."""
        with contextlib.suppress(OSError):
            lines = [line for line in self.stats.read_text().splitlines() if line]
            if len(lines) >= 2:
                names, values = lines[0].split(";"), lines[-1].split(";")
                out: dict[str, float] = {}
                for name, value in zip(names, values, strict=False):
                    with contextlib.suppress(ValueError):
                        out[name] = float(value)
                return out
        return {}

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in self.sinks:
            s.close()


def free_media_port(taken: set[int]) -> int:
    """An even port P with P..P+3 free (SIPp binds RTP/RTCP and video next to it)."""
    for _ in range(500):
        base = free_port() & ~1
        if any(p in taken for p in range(base, base + 4)):
            continue
        with contextlib.ExitStack() as stack:
            try:
                for p in range(base, base + 4):
                    s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    s.bind(("0.0.0.0", p))
            except OSError:
                continue
        taken.update(range(base, base + 4))
        return base
    raise RuntimeError("no free media port")


def number(i: int) -> str:
    """The number call i dials (the config routes every one of them to the agent)."""
    return f"+1555{i:07d}"


def media_block(calls: int) -> tuple[int, list[socket.socket]]:
    """A base port B with B .. B + 4 calls free; sockets bound on B + 4 i and B + 4 i + 1 for
    every call but the first (SIPp binds B and B + 2 itself)."""
    for base in range(12000, 32000, 4 * calls + 64):
        sinks: list[socket.socket] = []
        try:
            for port in (b for i in range(calls) for b in (4 * i, 4 * i + 1)):
                if port in (0, 2):
                    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    probe.bind(("0.0.0.0", base + port))
                    probe.close()
                    continue
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sinks.append(s)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.bind((HOST, base + port))
            return base, sinks
        except OSError:
            for s in sinks:
                s.close()
    raise RuntimeError(f"no block of {4 * calls} free UDP ports between 12000 and 32000")


def run_step(calls: int, args: argparse.Namespace, capture: Capture) -> Step:
    workers = args.workers or math.ceil(calls / CALLS_PER_WORKER)
    tmp = Path(tempfile.mkdtemp(prefix=f"sipedge-capacity-{calls}-"))
    agent = AgentServer(args.agent, tmp) if args.agent != "echo" else None
    port = agent.port if agent else 9
    config = node_config(tmp, calls, workers, args.agent, port, args.planes)
    node = NodeProcess(tmp, config, log_level="INFO")
    ramp = calls / args.rate
    seconds = ramp + 2 + args.hold + 1
    callers = Callers(args.callers, calls, args.rate, seconds, tmp)
    try:
        node.start(timeout=120)
        assert node.proc is not None
        deadline = time.monotonic() + 60
        while len(READY.findall(node.log())) < workers and time.monotonic() < deadline:
            time.sleep(0.2)
        worker_pids = [int(p) for _, p in READY.findall(node.log())]
        time.sleep(2)  # settle after start
        idle = cpu_rates(worker_pids, args.idle)
        pss_idle = sum(pss_kb(p) for p in descendants(node.proc.pid))  # the node, no calls
        capture.clear()
        callers.start(node.sip_port)
        time.sleep(2)  # the last calls set up
        pids = descendants(node.proc.pid)
        roles = {p: role(p) for p in pids}
        sipp_pids = callers.pids
        t_start = time.monotonic()
        busy0 = machine_busy()
        watched = [*pids, *sipp_pids, os.getpid(), *([agent.proc.pid] if agent else [])]
        rates = cpu_rates(watched, args.hold)
        t_end = time.monotonic()
        busy1 = machine_busy()
        pss = sum(pss_kb(p) for p in pids)
        up = callers.up()
        failed = callers.failed()
        agent_onsets = agent.onsets() if agent else {}
        if agent:
            deadline = time.monotonic() + 10
            while len(agent_onsets) < calls and time.monotonic() < deadline:
                time.sleep(0.2)
                agent_onsets = agent.onsets()
    finally:
        callers.close()
        node.stop()
        if agent:
            agent.close()
    media = {number(i): port for i, port in enumerate(callers.ports)}
    if agent:
        agent_onsets = agent.onsets()
        agent_sent = agent.onsets("sent")
    in_ms: list[float] = []
    out_ms: list[float] = []
    lost_in = lost_out = bursts = 0
    per_call: dict[str, dict[str, list[float]]] = {}  # for a look at one call's latencies
    for dialled, port in media.items():

        def window(ts: list[float]) -> list[float]:
            return [t for t in ts if t_start <= t <= t_end]

        sent = window(next((v for (s, _), v in capture.onsets.items() if s == port), []))
        back = next((v for (_, d), v in capture.onsets.items() if d == port), [])
        bursts += len(sent)
        if agent is None:
            delays, lost = pair(sent, back)
            out_ms += delays
            lost_out += lost
            per_call[dialled] = {"out": delays}
            continue
        heard = agent_onsets.get(dialled, [])
        delays, lost = pair(sent, heard)
        in_ms += delays
        lost_in += lost
        per_call[dialled] = {"in": delays}
        delays, lost = pair(window(agent_sent.get(dialled, [])), back)
        out_ms += delays
        lost_out += lost
        per_call[dialled]["out"] = delays
    (tmp / "latency_per_call.json").write_text(json.dumps(per_call))
    node_cpu = sum(rates[p] for p in pids)
    split: dict[str, float] = {}
    for p in pids:
        split[roles[p]] = split.get(roles[p], 0.0) + rates[p]

    def q(values: list[float], p: float) -> float | None:
        return round(float(np.percentile(values, p)), 1) if values else None

    return Step(
        calls=calls,
        workers=workers,
        up=up,
        failed=failed,
        bursts_lost=lost_in + lost_out,
        bursts_lost_in=lost_in,
        bursts_lost_out=lost_out,
        in_p50_ms=q(in_ms, 50),
        in_p99_ms=q(in_ms, 99),
        out_p50_ms=q(out_ms, 50),
        out_p99_ms=q(out_ms, 99),
        cpu_total_pct=round(node_cpu, 1),
        cpu_roles_pct={k: round(v, 1) for k, v in sorted(split.items())},
        cpu_per_call_pct=round(node_cpu / calls, 2),
        idle_per_worker_pct=round(sum(idle.values()) / max(len(idle), 1), 2),
        pss_mb=round(pss / 1024, 1),
        pss_per_call_mb=round(pss / 1024 / calls, 2),
        pss_idle_mb=round(pss_idle / 1024, 1),
        pss_added_per_call_mb=round((pss - pss_idle) / 1024 / calls, 2),
        agent_cpu_pct=round(rates[agent.proc.pid], 1) if agent else None,
        sipp_cpu_pct=round(sum(rates[p] for p in sipp_pids), 1),
        bench_cpu_pct=round(rates[os.getpid()], 1),
        machine_cpu_pct=round(
            100 * (os.cpu_count() or 1) * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 1
        ),
        bursts=bursts,
    )


COLUMNS = (
    ("calls", "calls"), ("workers", "wkr"), ("up", "up"), ("failed", "fail"),
    ("bursts_lost_in", "lost_in"), ("bursts_lost_out", "lost_out"),
    ("in_p50_ms", "in_p50"), ("in_p99_ms", "in_p99"), ("out_p50_ms", "out_p50"),
    ("out_p99_ms", "out_p99"), ("cpu_total_pct", "cpu%"), ("cpu_per_call_pct", "cpu%/call"),
    ("idle_per_worker_pct", "idle%/wkr"), ("pss_mb", "pss_MB"), ("pss_per_call_mb", "MB/call"),
    ("pss_added_per_call_mb", "+MB/call"),
    ("agent_cpu_pct", "agent%"), ("sipp_cpu_pct", "sipp%"), ("bench_cpu_pct", "bench%"),
    ("machine_cpu_pct", "machine%"),
    ("bursts", "bursts"),
)  # fmt: skip


def row(values: dict[str, Any]) -> str:
    return " ".join(f"{'-' if values[k] is None else values[k]!s:>{len(h)}}" for k, h in COLUMNS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="25,50,100,150,200,250,300")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds measured per step")
    parser.add_argument("--agent", default="twilio-ws", choices=("twilio-ws", "pcm-ws", "echo"))
    parser.add_argument("--workers", type=int, help="fixed worker count (default ceil(calls/4))")
    parser.add_argument("--rate", type=float, default=10.0, help="calls started per second")
    parser.add_argument(
        "--planes", type=lambda v: v if v == "auto" else int(v),
        help="node.media_planes (default: the node's default, 1)",
    )  # fmt: skip
    parser.add_argument(
        "--callers", default="one", choices=("one", "each"),
        help="one SIPp process for all calls (default), or one per call",
    )  # fmt: skip
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--keep-going", action="store_true", help="run every step, even after one fails"
    )
    args = parser.parse_args()
    round_trip = args.agent == "echo"
    capture = Capture()
    steps: list[Step] = []
    held = 0  # the last step of the unbroken run of steps that held
    if not args.json:
        print(f"agent {args.agent}; hold {args.hold:g} s; latency ms, CPU % of one core")
        print(" ".join(h for _, h in COLUMNS))
    try:
        for calls in (int(s) for s in args.steps.split(",")):
            if (args.workers or math.ceil(calls / CALLS_PER_WORKER)) > MAX_WORKERS:
                print(f"step {calls}: a node runs at most {MAX_WORKERS} workers", file=sys.stderr)
                break
            step = run_step(calls, args, capture)
            steps.append(step)
            if not args.json:
                roles = " ".join(f"{k} {v}" for k, v in step.cpu_roles_pct.items())
                print(row(asdict(step)), f"  [{roles}]", flush=True)
            if not step.holds(round_trip) and not args.keep_going:
                break
            if step.holds(round_trip) and all(s.holds(round_trip) for s in steps):
                held = calls
    finally:
        capture.close()
    if args.json:
        keys = ("calls", "failed", "bursts_lost", "in_p50_ms", "in_p99_ms", "out_p50_ms",
                "out_p99_ms", "cpu_total_pct", "cpu_per_call_pct", "idle_per_worker_pct",
                "pss_mb", "pss_per_call_mb")  # fmt: skip
        extra = ("workers", "up", "bursts_lost_in", "bursts_lost_out", "pss_idle_mb",
                 "pss_added_per_call_mb", "agent_cpu_pct",
                 "sipp_cpu_pct", "bench_cpu_pct", "machine_cpu_pct", "bursts",
                 "cpu_roles_pct")  # fmt: skip
        out = [{k: asdict(s)[k] for k in keys + extra} for s in steps]
        print(json.dumps({"max_calls_held": held, "agent": args.agent, "steps": out}))
    else:
        note = " (out = round trip RTP in -> RTP out)" if round_trip else ""
        print(f"max calls held: {held}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
