#!/usr/bin/env python3
"""Added media latency and CPU per call with agent streaming on.

Starts a real sipedge node on loopback, a Twilio Media Streams agent that sends every caller
frame straight back (a real-time streaming agent), and N SIPp callers playing the 3 s speech
pcap (sipp_scenarios/uac_pcap.xml). It reports:

  * clock path: the cost on pjmedia's clock thread of handing a caller frame to asyncio
    (deque append + call_soon_threadsafe) against a bare append, and of next_frame();
  * gateway-internal latency per 20 ms frame, from each call's `event=media_latency` log line:
    RTP-in -> agent-send (frame handed to our port -> WebSocket write) and agent-recv -> RTP-out
    (WebSocket read -> frame handed back to pjmedia, beyond audio already queued ahead);
  * wire-to-wire latency, from packets captured on `lo` (AF_PACKET, needs root): the onset of
    each speech burst in the caller's RTP -> its onset in the agent's media messages, and the
    agent's echo of it -> its onset in the RTP sent back (20 ms resolution, includes pjmedia's
    jitter buffer and conference bridge);
  * CPU of the SIP worker process (all its threads) per call, idle baseline subtracted.

    sudo /tmp/venv/bin/python bench/media_latency.py --calls 3 --hold 7
    sudo /tmp/venv/bin/python bench/media_latency.py --calls 3 --hold 7 --transport webrtc
    sudo /tmp/venv/bin/python bench/media_latency.py --calls 3 --hold 7 --transport mixed

`--transport webrtc` uses a WHIP agent (a real aiortc peer) that sends the caller's decoded
frames straight back on its own track (Opus both ways); `mixed` runs call 1 over twilio-ws and
the others over webrtc in the same worker, to show whether aiortc's work delays a WebSocket
call's frames. Figures are reported per transport.
N is at most 3: the pjsua2 wheel is built with 4 call slots and the engine keeps one to answer
503. Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import contextlib

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from websockets.asyncio.server import ServerConnection, serve

from gateway.session.webrtc import frame_pcm, ice_addresses
from media.agents.webrtc import downmix
from media.codecs import ulaw_decode
from tests.integration.test_media_agents import (
    HOST,
    SCENARIOS,
    Node,
    free_port,
    free_rtp_port,
    media_config,
)

VOICED_RMS = 300.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- clock path micro-benchmark ------------------------------------------------------------


def clock_path(frames: int = 20000) -> dict[str, float]:
    """µs per call on a thread standing in for pjmedia's clock, with the loop in another."""
    from gateway.calls.model import CallRecord
    from gateway.config import Agent, VadSettings
    from gateway.session.agent import AgentSession
    from gateway.session.contract import CallControls

    logging.getLogger("sipedge").setLevel(logging.ERROR)  # the fake agent is unreachable
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    agent = Agent.model_validate(
        {
            "id": "b",
            "type": "twilio-ws",
            "url": "ws://127.0.0.1:9/x",
            "on_agent_failure": "keep",
            "connect_timeout": 0.1,
        }
    )
    record = CallRecord("call_" + "0" * 24, "inbound", "t", "a", "b", "b")
    session = AgentSession(
        agent,
        record,
        CallControls(record.id, lambda k, d: None, lambda b: None),
        loop,
        VadSettings(),
    )
    frame = bytes(320)
    sink: deque[tuple[bytes, int]] = deque()
    results = {}
    start = time.perf_counter()
    for _ in range(frames):
        sink.append((frame, time.perf_counter_ns()))
    results["append_only_us"] = (time.perf_counter() - start) / frames * 1e6
    start = time.perf_counter()
    for _ in range(frames):
        session._wake_pending = False  # force the wake on every frame: the worst case
        session.on_caller_frame(frame)
    results["on_caller_frame_us"] = (time.perf_counter() - start) / frames * 1e6
    start = time.perf_counter()
    for _ in range(frames):
        session.next_frame()
    results["next_frame_us"] = (time.perf_counter() - start) / frames * 1e6
    from media.vad import SpeechDetector

    vad = SpeechDetector(8000)
    voiced = (np.sin(np.arange(160) / 3) * 8000).astype("<i2").tobytes()
    start = time.perf_counter()
    for i in range(frames):
        vad.feed(voiced, i * 20)
    results["webrtcvad_frame_us"] = (time.perf_counter() - start) / frames * 1e6
    session.close()
    time.sleep(0.2)
    loop.call_soon_threadsafe(loop.stop)
    runner.join(2)
    return results


# --- the echo agent ------------------------------------------------------------------------


class EchoBot:
    """Twilio-style agent that sends each caller frame straight back; logs voiced onsets."""

    def __init__(self) -> None:
        self.port = free_port(socket.SOCK_STREAM, both=False)
        self.onsets: dict[str, list[float]] = {}  # dialled number -> agent-side burst onsets
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.server = await serve(self._handle, HOST, self.port, compression=None)
            ready.set()
            await self.server.serve_forever()

        def run() -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self.loop.run_until_complete(main())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    async def _handle(self, ws: ServerConnection) -> None:
        onsets: list[float] = []
        was_voiced = False
        async for raw in ws:
            now = time.monotonic()
            message = json.loads(raw)
            if message["event"] == "start":
                self.onsets[message["start"]["customParameters"]["to"]] = onsets
                sid = message["streamSid"]
            elif message["event"] == "media":
                payload = message["media"]["payload"]
                await ws.send(
                    json.dumps({"event": "media", "streamSid": sid, "media": {"payload": payload}})
                )
                voiced = _rms(base64.b64decode(payload)) > VOICED_RMS
                if voiced and not was_voiced:
                    onsets.append(now)
                was_voiced = voiced

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(5)


class WhipEchoBot:
    """WHIP agent (aiortc) that plays the caller's decoded frames straight back; logs onsets."""

    def __init__(self) -> None:
        self.onsets: dict[str, list[float]] = {}
        self.pcs: list[RTCPeerConnection] = []
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            self.server = await asyncio.start_server(self._serve, HOST, 0)
            self.url = f"http://{HOST}:{self.server.sockets[0].getsockname()[1]}/whip"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(main())
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        method = lines[0].split(" ")[0]
        headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        status, extra, out = 200, "", b""
        if method == "POST":
            answer = await self._answer(body.decode())
            status, extra, out = 201, "Location: /whip/1\r\n", answer.encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
            + out
        )
        await writer.drain()
        writer.close()

    async def _answer(self, offer: str) -> str:
        pc = RTCPeerConnection()
        self.pcs.append(pc)
        onsets: list[float] = []
        echo = _EchoTrack(onsets)

        @pc.on("datachannel")
        def on_channel(channel: object) -> None:
            @channel.on("message")  # type: ignore[attr-defined]
            def on_message(raw: str) -> None:
                message = json.loads(raw)
                if message["event"] == "start":
                    self.onsets[message["to"]] = onsets

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            echo.source = track

        with ice_addresses([HOST]):
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            pc.addTrack(echo)
            await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    def close(self) -> None:
        async def stop() -> None:
            for pc in self.pcs:
                await pc.close()
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _EchoTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, onsets: list[float]) -> None:
        super().__init__()
        self.source: MediaStreamTrack | None = None
        self.onsets = onsets
        self._voiced = False

    async def recv(self) -> AudioFrame:
        while self.source is None:
            await asyncio.sleep(0.01)
        frame = await self.source.recv()
        if not isinstance(frame, AudioFrame):
            raise MediaStreamError
        pcm, channels = frame_pcm(frame)
        x = np.frombuffer(downmix(pcm, channels), "<i2").astype(np.float64)
        voiced = bool(len(x)) and float(np.sqrt(np.mean(x**2))) > VOICED_RMS
        if voiced and not self._voiced:
            self.onsets.append(time.monotonic())
        self._voiced = voiced
        return frame


def _rms(mulaw: bytes) -> float:
    x = np.frombuffer(ulaw_decode(mulaw), "<i2").astype(np.float64)
    return float(np.sqrt(np.mean(x**2))) if len(x) else 0.0


# --- packets on lo -------------------------------------------------------------------------


class Capture:
    """RTP (PCMU) on `lo`: per (src port, dst port) the times of voiced onsets."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.onsets: dict[tuple[int, int], list[float]] = {}
        self._voiced: dict[tuple[int, int], bool] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            now = time.monotonic()
            if addr[2] == socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            if ip[9] != 17:
                continue
            udp = ip[(ip[0] & 0x0F) * 4 :]
            sport, dport = struct.unpack("!HH", udp[:4])
            rtp = udp[8:]
            if len(rtp) <= 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != 0:
                continue
            key = (sport, dport)
            voiced = _rms(rtp[12:]) > VOICED_RMS
            if voiced and not self._voiced.get(key, False):
                self.onsets.setdefault(key, []).append(now)
            self._voiced[key] = voiced

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def worker_pid(node_pid: int, timeout: float = 10) -> int:
    """The process that carries the calls' media: the media plane (node.media plane, the
    default), else the SIP worker."""
    deadline = time.monotonic() + timeout
    worker = 0
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            if ppid == node_pid and b"gateway.plane" in cmd:
                return int(proc.name)
            if ppid == node_pid and b"gateway.worker" in cmd:
                worker = int(proc.name)
        if worker:
            return worker
        time.sleep(0.1)
    raise RuntimeError("neither a media plane nor a SIP worker process found")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# --- the run -------------------------------------------------------------------------------


def call_transports(transport: str, calls: int) -> list[str]:
    if transport == "mixed":
        return ["twilio-ws"] + ["webrtc"] * (calls - 1)
    return [transport] * calls


def run(calls: int, hold_s: float, transport: str = "twilio-ws") -> dict[str, object]:
    print("clock thread path (µs per frame; the same for every transport):")
    for name, value in clock_path().items():
        print(f"  {name:22s} {value:6.2f}")

    tmp = Path(tempfile.mkdtemp(prefix="sipedge-bench-"))
    transports = call_transports(transport, calls)
    bot = EchoBot()
    rtc_bot = WhipEchoBot() if "webrtc" in transports else None
    numbers = [f"+1555010{i}" for i in range(calls)]
    agent_of = {"twilio-ws": "echo-bot", "webrtc": "rtc-echo"}
    rtp_base = 32000 + (os.getpid() % 50) * 40
    config = media_config(
        tmp,
        "bench",
        rtp_base,
        numbers=[
            {"number": n, "agent": agent_of[t]} for n, t in zip(numbers, transports, strict=True)
        ],
        agents=[{"id": "echo-bot", "type": "twilio-ws", "url": f"ws://{HOST}:{bot.port}/"}]
        + (
            [{"id": "rtc-echo", "type": "webrtc", "url": rtc_bot.url, "ice_addresses": [HOST]}]
            if rtc_bot is not None
            else []
        ),
        vad={"barge_in": False},
    )
    node = Node(tmp, config)
    capture = Capture()
    try:
        node.wait_ready()
        worker = worker_pid(node.proc.pid)
        idle_start = cpu_seconds(worker)
        time.sleep(3)
        idle_rate = (cpu_seconds(worker) - idle_start) / 3
        media = {n: free_rtp_port() for n in numbers}
        procs = []
        for n in numbers:
            cmd = [
                "sipp",
                "-sf",
                str(SCENARIOS / "uac_pcap.xml"),
                "-s",
                n,
                "-m",
                "1",
                "-i",
                HOST,
                "-p",
                str(free_port(both=False)),
                "-mi",
                HOST,
                "-mp",
                str(media[n]),
                "-cp",
                str(free_port(both=False)),
                "-d",
                str(int(hold_s * 1000)),
                "-nostdin",
                "-timeout",
                "60",
                f"{HOST}:{node.sip_port}",
            ]
            procs.append(
                subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            )
        time.sleep(1.0)  # calls set up
        busy_start, t0 = cpu_seconds(worker), time.monotonic()
        time.sleep(2.0 + hold_s - 0.5)
        busy_rate = (cpu_seconds(worker) - busy_start) / (time.monotonic() - t0)
        codes = [p.wait(90) for p in procs]
    finally:
        capture.close()
        exit_code = node.stop()
        bot.close()
        if rtc_bot is not None:
            rtc_bot.close()
    log = node.log()
    print(
        f"\n{calls} concurrent calls ({', '.join(transports)}), {3 + hold_s:.0f} s each; "
        f"sipp exit codes {codes}; node exit {exit_code}"
    )

    transport_of = dict(
        re.findall(r"event=agent_connected call_id=(\S+) agent=\S+ transport=(\S+)", log)
    )
    names = ("caller_to_agent", "agent_to_caller")
    internal: dict[tuple[str, str], list[float]] = {}
    p99s: dict[tuple[str, str], list[float]] = {}
    for call_id, line in re.findall(r"event=media_latency call_id=(\S+)(.*)", log):
        for name in names:
            m = re.search(rf"{name}_n=(\d+) {name}_p50_ms=([\d.]+) {name}_p99_ms=([\d.]+)", line)
            if m:
                key = (transport_of.get(call_id, "?"), name)
                internal.setdefault(key, []).append(float(m.group(2)))
                p99s.setdefault(key, []).append(float(m.group(3)))
    print("gateway-internal per frame (ms; median of per-call p50, worst per-call p99):")
    for (kind, name), p50s in sorted(internal.items()):
        print(
            f"  {kind:9s} {name:16s} p50 {pct(p50s, 50):6.2f}   p99 "
            f"{max(p99s[(kind, name)]):6.2f}   calls {len(p50s)}"
        )

    c2a: dict[str, list[float]] = {}
    a2c: dict[str, list[float]] = {}
    for n, kind in zip(numbers, transports, strict=True):
        port = media[n]
        rtp_in = next((v for (s, d), v in capture.onsets.items() if s == port), [])
        rtp_out = next((v for (s, d), v in capture.onsets.items() if d == port), [])
        onsets = bot.onsets if kind == "twilio-ws" or rtc_bot is None else rtc_bot.onsets
        agent = onsets.get(n, [])
        k = min(len(rtp_in), len(agent), len(rtp_out))
        c2a.setdefault(kind, []).extend((agent[i] - rtp_in[i]) * 1000 for i in range(k))
        a2c.setdefault(kind, []).extend((rtp_out[i] - agent[i]) * 1000 for i in range(k))
    print("wire to wire, speech-burst onsets (ms; includes jitter buffer and bridge):")
    for kind in c2a:
        for label, values in (("rtp_in_to_agent", c2a[kind]), ("agent_to_rtp_out", a2c[kind])):
            print(
                f"  {kind:9s} {label:16s} p50 {pct(values, 50):6.1f}   "
                f"p99 {pct(values, 99):6.1f}   samples {len(values)}"
            )
    per_call = (busy_rate - idle_rate) / calls * 100
    clock = re.search(r"event=media_clock_started clock_rate=(\d+)", log)
    print(f"conference bridge clock: {clock.group(1) + ' Hz' if clock else 'not logged'}")
    print(
        f"SIP worker CPU: idle {idle_rate * 100:.1f}% of a core, {calls} calls "
        f"{busy_rate * 100:.1f}% -> {per_call:.1f}% of a core per call"
    )
    return {
        "calls": calls,
        "transports": transports,
        "bridge_clock_rate": int(clock.group(1)) if clock else None,
        "cpu_idle_pct": round(idle_rate * 100, 2),
        "cpu_busy_pct": round(busy_rate * 100, 2),
        "cpu_per_call_pct": round(per_call, 2),
        "sipp_exit_codes": codes,
        "node_exit": exit_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--hold", type=float, default=7.0, help="seconds held after the pcap")
    parser.add_argument(
        "--transport",
        default="twilio-ws",
        choices=("twilio-ws", "webrtc", "mixed"),
        help="agent transport; mixed: call 1 over twilio-ws, the others over webrtc",
    )
    parser.add_argument("--json", action="store_true", help="also print the CPU figures as JSON")
    args = parser.parse_args()
    figures = run(args.calls, args.hold, args.transport)
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
