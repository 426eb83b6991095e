#!/usr/bin/env python3
"""Speech-burst onsets for bench/capacity.py: on the wire (RTP on `lo`) and at the agent.

The agent server echoes every caller frame straight back (Twilio Media Streams or pcm-ws)
and, when a stream ends, appends the times its bursts began to a file; it runs in its own
process (`python bench/capacity_wire.py PROTOCOL PORT OUT`) so its CPU is measured apart.
Times are CLOCK_MONOTONIC, one clock for every process on the machine.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipp_scenarios.make_pcap import ulaw_to_linear  # noqa: E402
from tests.integration.peers import HOST, free_port  # noqa: E402

VOICED_RMS = 300.0
MATCH_S = 0.3  # an onset pairs with the first one this soon after it (bursts are 600 ms apart)
# mu-law byte -> linear sample squared: RMS of a frame without decoding it
ULAW_SQ = np.array([float(ulaw_to_linear(b)) ** 2 for b in range(256)])


def ulaw_voiced(payload: bytes) -> bool:
    x = np.frombuffer(payload, np.uint8)
    return bool(len(x)) and float(np.sqrt(ULAW_SQ[x].mean())) > VOICED_RMS


def pcm_voiced(pcm: bytes) -> bool:
    x = np.frombuffer(pcm, "<i2").astype(np.float64)
    return bool(len(x)) and float(np.sqrt(np.mean(x**2))) > VOICED_RMS


# --- the agent server (its own process) ---------------------------

SO_TIMESTAMPNS = 35  # linux asm-generic/socket.h
ANC_BYTES = socket.CMSG_SPACE(16)


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """A packet's kernel arrival time on CLOCK_MONOTONIC (now, if the kernel gave none)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec + nsec / 1e9 - (time.time() - time.monotonic())
    return time.monotonic()


def serve_agent(protocol: str, port: int, out: Path) -> None:
    """Echo every caller frame back; on each stream's end append its burst onsets to `out`.

    websockets' sans-I/O server protocol on plain sockets and one selector (no asyncio): the
    harness shares the machine's two cores with the node, so every per-message cost it saves
    is CPU the node under test can have. Each burst's onset is timed twice: `heard`, the
    kernel's arrival time of the bytes that carried its first voiced frame (SO_TIMESTAMPNS,
    so a wait of ours for a core is not counted as the node's), and `sent`, when the echo of
    that frame was handed to the kernel (where the way back to the caller starts)."""
    import selectors

    from websockets.frames import Frame, Opcode
    from websockets.http11 import Request
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    sink = out.open("a")

    class Echo:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock
            self.ws = ServerProtocol(max_size=4 * 1024 * 1024)
            self.heard: list[float] = []
            self.sent: list[float] = []
            self.to, self.sid, self.was = "", "", False
            self.onset = False  # this read carried a burst's first voiced frame

        def readable(self) -> bool:
            """False once the connection is over."""
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 16, ANC_BYTES)
            except OSError:
                data, ancillary = b"", []
            if not data:
                return False
            now = _arrival(ancillary)
            ws = self.ws
            ws.receive_data(data)
            for event in ws.events_received():
                if isinstance(event, Request):
                    ws.send_response(ws.accept(event))
                elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.BINARY):
                    self.message(event, now)
            if self.onset:
                self.sent.append(time.monotonic())
                self.onset = False
            try:
                for chunk in ws.data_to_send():
                    if not chunk:  # the close handshake is done: end of our side of TCP
                        return False
                    self.sock.sendall(chunk)
            except OSError:
                return False
            return ws.state is not State.CLOSED

        def message(self, frame: Frame, now: float) -> None:
            if frame.opcode is Opcode.BINARY:  # pcm-ws audio
                self.ws.send_binary(frame.data)
                voiced = pcm_voiced(bytes(frame.data))
            else:
                message = json.loads(bytes(frame.data))
                if message["event"] == "start":
                    start = message.get("start", message)
                    self.to = start.get("customParameters", start).get("to", "")
                    self.sid = message.get("streamSid", "")
                    return
                if message["event"] != "media":
                    return
                payload = message["media"]["payload"]
                reply = {"event": "media", "streamSid": self.sid, "media": {"payload": payload}}
                self.ws.send_text(json.dumps(reply).encode())
                voiced = ulaw_voiced(base64.b64decode(payload))
            if voiced and not self.was:
                self.heard.append(now)
                self.onset = True
            self.was = voiced

        def close(self) -> None:
            self.sock.close()
            record = {"to": self.to, "onsets": self.heard, "sent": self.sent}
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    listener = socket.create_server((HOST, port), backlog=1024)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            if key.fileobj is listener:
                with contextlib.suppress(BlockingIOError):
                    sock, _ = listener.accept()
                    sock.setblocking(True)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    selector.register(sock, selectors.EVENT_READ, Echo(sock))
                continue
            echo = key.data
            if not echo.readable():
                selector.unregister(echo.sock)
                echo.close()
    for key in list(selector.get_map().values()):
        if key.data is not None:
            key.data.close()
    listener.close()


class AgentServer:
    """`capacity.py agent` as a child process, stopped by its PID."""

    def __init__(self, protocol: str, tmp: Path) -> None:
        self.port = free_port("tcp")
        self.out = tmp / "agent_onsets.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, protocol, str(self.port), str(self.out)],
            stdout=subprocess.PIPE,
            stderr=(tmp / "agent.log").open("wb"),
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"agent server did not start; see {tmp / 'agent.log'}")

    def onsets(self, kind: str = "onsets") -> dict[str, list[float]]:
        """Per dialled number, its bursts' onsets as the agent heard them (`onsets`), or as it
        sent their echo (`sent`)."""
        if not self.out.exists():
            return {}
        rows = [json.loads(line) for line in self.out.read_text().splitlines() if line]
        return {r["to"]: r[kind] for r in rows}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- RTP on lo -----------------------------------------------------------------------------


def _udp_only_filter() -> bytes:
    """Classic BPF: IPv4 UDP packets not flagged outgoing (lo shows each packet twice), first
    214 bytes (Ethernet + IP + UDP + RTP + 160 payload bytes)."""
    ops = [
        (0x20, 0, 0, 0xFFFFF004),  # ld pkttype
        (0x15, 5, 0, 4),  # == PACKET_OUTGOING -> drop
        (0x28, 0, 0, 12),  # ldh ethertype
        (0x15, 0, 3, 0x0800),  # != IPv4 -> drop
        (0x30, 0, 0, 23),  # ldb ip proto
        (0x15, 0, 1, 17),  # != UDP -> drop
        (0x06, 0, 0, 214),  # keep
        (0x06, 0, 0, 0),  # drop
    ]
    return b"".join(struct.pack("HBBI", *op) for op in ops)


class Capture:
    """PCMU RTP on `lo`: voiced onsets per (source port, destination port)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        code = _udp_only_filter()
        self._prog = ctypes.create_string_buffer(code)
        fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(self._prog))
        self.sock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.onsets: dict[tuple[int, int], list[float]] = {}
        self._voiced: dict[tuple[int, int], bool] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # The kernel's arrival time of each packet (SO_TIMESTAMPNS, CLOCK_REALTIME), moved to
        # CLOCK_MONOTONIC: this thread shares the cores with the node, and its own clock read
        # after a wait for a core would count that wait as the node's latency.
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        while not self._stop.is_set():
            try:
                frame, ancillary, _flags, _addr = self.sock.recvmsg(65535, ANC_BYTES)
            except (TimeoutError, OSError):
                continue
            now = _arrival(ancillary)
            udp = frame[14 + (frame[14] & 0x0F) * 4 :]
            rtp = udp[8:]
            if len(rtp) <= 12 or rtp[0] >> 6 != 2 or rtp[1] & 0x7F != 0:
                continue
            key = struct.unpack("!HH", udp[:4])
            voiced = ulaw_voiced(rtp[12:])
            if voiced and not self._voiced.get(key, False):
                self.onsets.setdefault(key, []).append(now)
            self._voiced[key] = voiced

    def clear(self) -> None:
        self.onsets.clear()
        self._voiced.clear()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()


def pair(first: list[float], then: list[float]) -> tuple[list[float], int]:
    """Latencies (ms) from each onset in `first` to the next in `then` within MATCH_S, and
    how many found none (lost)."""
    later = np.array(sorted(then))
    delays, lost = [], 0
    for t in first:
        i = int(np.searchsorted(later, t))
        if i < len(later) and later[i] - t < MATCH_S:
            delays.append((later[i] - t) * 1000)
        else:
            lost += 1
    return delays, lost


if __name__ == "__main__":
    serve_agent(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))
