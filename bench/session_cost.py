#!/usr/bin/env python3
"""CPU of the media plane's per-call Python, without SIP, RTP or SIPp: N agent sessions driven
by a 20 ms clock in this process, exactly as the plane drives them (a caller frame in and the
next frame out per tick, the sessions' work after the tick), against capacity.py's echo agent
in its own process over real WebSockets.

What it leaves out is what the plane adds per call around the sessions (RTP recvfrom/sendto,
parse, the batched G.711), and it needs no SIPp, so it loads the machine far less than
capacity.py. It is as noisy per run on a shared machine (about +-15%): compare two trees by
running each tree's own copy of this file (it imports the tree it sits in, whatever
PYTHONPATH says), interleaved, several times.

    python bench/session_cost.py --calls 25 --seconds 10 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.capacity_wire import AgentServer
from gateway.calls.model import CallRecord
from gateway.config import Agent, VadSettings
from gateway.session.agent import AgentSession
from gateway.session.contract import CallControls
from media.codecs import ULAW_DECODE, ulaw_encode

TICK_S = 0.020


def speech_frames(seconds: float = 6.0) -> list[tuple[bytes, bytes]]:
    """(PCM, mu-law) 20 ms frames: 400 ms of a voiced tone, 200 ms of quiet, repeated."""
    t = np.arange(int(8000 * seconds)) / 8000
    tone = 6000 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    loud = (t % 0.6) < 0.4
    pcm = np.where(loud, tone, 40 * np.sin(2 * np.pi * 50 * t)).astype("<i2").tobytes()
    out = []
    for i in range(0, len(pcm), 320):
        mulaw = ulaw_encode(pcm[i : i + 320])
        out.append((ULAW_DECODE[np.frombuffer(mulaw, np.uint8)].tobytes(), mulaw))
    return out


async def measure(calls: int, seconds: float, protocol: str, port: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    agent = Agent.model_validate(
        {"id": "bot", "type": protocol, "url": f"ws://127.0.0.1:{port}/", "sample_rate": 8000}
    )
    due: list[Any] = []
    params = inspect.signature(AgentSession).parameters
    mode: dict[str, Any] = (
        {"after_tick": due.append} if "after_tick" in params else {"on_loop_thread": True}
    )
    mulaw_too = "mulaw" in inspect.signature(AgentSession.on_caller_frame).parameters
    sessions = []
    for i in range(calls):
        record = CallRecord(id=f"call_{i:024d}", direction="inbound", trunk="t",
                            from_number="+15550111", to_number=f"+1555{i:07d}",
                            agent="bot")  # fmt: skip
        controls = CallControls(record.id, lambda event: None, lambda by: None)
        sessions.append(AgentSession(agent, record, controls, loop, VadSettings(), **mode))
    while not all(s._streaming for s in sessions):  # a bench: polling the connect is fine
        await asyncio.sleep(0.05)
    frames = speech_frames()
    ticks = int(seconds / TICK_S)
    done = loop.create_future()
    start = loop.time()
    cpu0 = os.times()

    def tick(n: int) -> None:
        pcm, mulaw = frames[n % len(frames)]
        for s in sessions:
            if mulaw_too:
                s.on_caller_frame(pcm, mulaw)
            else:
                s.on_caller_frame(pcm)
            s.next_frame()
        work, due[:] = list(due), []
        for fn in work:
            fn()
        if n + 1 >= ticks:
            done.set_result(None)
        else:
            loop.call_at(start + (n + 1) * TICK_S, tick, n + 1)

    loop.call_at(start, tick, 0)
    await done
    cpu1 = os.times()
    for s in sessions:
        s.close()
    await asyncio.gather(*(s.wait_closed() for s in sessions))
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    scale = 100 / (ticks * TICK_S) / calls  # -> % of one core per call
    return user * scale, system * scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--agent", choices=("twilio-ws", "pcm-ws"), default="twilio-ws")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sipedge-session-cost-") as tmp:
        server = AgentServer(args.agent, Path(tmp))
        try:
            split = [asyncio.run(measure(args.calls, args.seconds, args.agent, server.port))
                     for _ in range(args.repeats)]  # fmt: skip
        finally:
            server.close()
    runs = [user + system for user, system in split]
    result = {"agent": args.agent, "calls": args.calls, "seconds": args.seconds,
              "cpu_per_call_pct": [round(r, 3) for r in runs],
              "user_pct": [round(u, 3) for u, _ in split],
              "system_pct": [round(s, 3) for _, s in split],
              "median": round(statistics.median(runs), 3)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.agent}, {args.calls} sessions, {args.seconds:g} s x {args.repeats}: "
              f"{result['median']:.3f}% of a core per call (median; runs "
              f"{', '.join(f'{r:.3f}' for r in runs)}; user "
              f"{', '.join(f'{u:.3f}' for u, _ in split)}, system "
              f"{', '.join(f'{s:.3f}' for _, s in split)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
