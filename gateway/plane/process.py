"""The media plane: a process serving the RTP and the agent sessions of every call of its SIP
workers, started by the supervisor as `python -m gateway.plane --config F --fd N --index I`
(N: a listening SOCK_SEQPACKET socket the workers connect to; gateway/worker/planelink.py
has the protocol). A node runs node.media_planes of them, each serving whole workers (worker
i the plane (i - 1) mod planes), so each plane's clock carries its share on a core of its own.

Everything runs on one asyncio loop, paced by one 20 ms clock for all calls:
- each tick, one epoll_wait(0) says which calls' RTP sockets have packets; those are read
  until empty, parsed (media/rtp.py), DTMF events become digits, and every call's new audio
  is G.711-decoded in one table lookup over the whole batch before each session gets its
  frames (on_caller_frame);
- then every call's next frame (next_frame) is encoded in one lookup for the batch and sent
  as one RTP packet (or this tick's DTMF packet).
The agent sessions (gateway/session/agent.py, webrtc.py) are the same objects a worker ran
on pjmedia's clock before; here their "clock thread" is the loop itself, so a frame wakes
nothing: the session's work runs on the same loop right after the tick.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import gc
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.calls.events import CallEvent, DtmfReceived, QualityMeasured
from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.session.contract import AnswerAware, CallControls, MediaSession
from gateway.session.factory import make_session_factory
from gateway.worker.ipc import event_message
from gateway.worker.planelink import PlaneError, receive, record_from, send
from media.codecs import ALAW_DECODE, ALAW_ENCODE, ALAW_TO_ULAW, ULAW_DECODE, ULAW_ENCODE
from media.quality import RtpStats
from media.resample import Resampler
from media.rtp import DtmfReceiver, DtmfSender, RtpSender, parse, seq_newer
from media.srtp import SrtpError, SrtpStream

log = logging.getLogger("sipedge.plane")

TICK_S = 0.020
SAMPLES = 160  # 20 ms at 8 kHz: G.711's only rate
MAX_LATE_TICKS = 10  # after a stall, send up to 200 ms of frames at once; beyond, drop them
RX_REPORT_S = 1.0
QUALITY_REPORT_S = 10.0  # call.quality while a call lasts (and once more at its end)
SO_TIMESTAMPNS = 35  # linux asm-generic/socket.h: arrival times for jitter, from the kernel
ANC_BYTES = socket.CMSG_SPACE(16)
MAX_READ_ROUNDS = 64  # packets read per call per tick at most (the rest wait for the next)
RECV_BYTES = 2048
SEND_TIMEOUT_S = 1.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class G711:
    name: str
    decode: np.ndarray[Any, Any]
    encode: np.ndarray[Any, Any]
    to_ulaw: np.ndarray[Any, Any] | None  # code -> mu-law code; None: the codes are mu-law


CODECS = {"PCMU": G711("PCMU", ULAW_DECODE, ULAW_ENCODE, None),
          "PCMA": G711("PCMA", ALAW_DECODE, ALAW_ENCODE, ALAW_TO_ULAW)}  # fmt: skip


@dataclass
class ClockStats:
    """How the clock kept time since the last report (once a second, logged if it was late):
    ticks it missed, the worst lateness, the longest tick in wall and CPU time (more wall than
    CPU: the plane was waiting for a core) and the longest collector pause."""

    late_ticks: int = 0
    late_s: float = 0.0
    tick_s: float = 0.0
    tick_cpu_s: float = 0.0
    gc_s: float = 0.0
    _gc_started: float = 0.0

    def collector(self, phase: str, info: dict[str, int]) -> None:  # a gc.callbacks entry
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_s = max(self.gc_s, time.perf_counter() - self._gc_started)

    def report(self, calls: int) -> None:
        if self.late_ticks:
            log.warning("event=media_clock_late ticks=%d calls=%d max_late_ms=%.1f "
                        "max_tick_ms=%.1f max_tick_cpu_ms=%.1f max_gc_ms=%.1f",
                        self.late_ticks, calls, self.late_s * 1000, self.tick_s * 1000,
                        self.tick_cpu_s * 1000, self.gc_s * 1000)  # fmt: skip
            self.late_ticks = 0
        self.late_s = self.tick_s = self.tick_cpu_s = self.gc_s = 0.0


class WorkerConn:
    """One SIP worker's connection."""

    def __init__(self, plane: Plane, sock: socket.socket) -> None:
        self.plane = plane
        self.sock = sock
        sock.settimeout(SEND_TIMEOUT_S)
        self.calls: dict[str, PlaneCall] = {}
        self.open = True

    def send(self, message: dict[str, Any]) -> None:
        """From any thread (a recording's writer thread reports through a session)."""
        if not self.open:
            return
        try:
            send(self.sock, message)
        except (OSError, PlaneError) as exc:
            log.error("event=worker_send_failed op=%s error=%s", message.get("op"), exc)


class PlaneCall:
    """One call's media: its RTP sockets, stream state and agent session."""

    def __init__(
        self, conn: WorkerConn, call_id: str, session: MediaSession, controls: CallControls
    ) -> None:
        self.conn = conn
        self.call_id = call_id
        self.session = session
        self.controls = controls  # what the session reports goes to the worker through these
        self.rtp: socket.socket | None = None
        self.rtcp: socket.socket | None = None
        self.remote: tuple[str, int] | None = None
        self.latched = False
        self.codec: G711 | None = None
        self.pt = 0  # what we send with
        self.rx_pt = 0  # and what the far end sends with
        self.event_pt: int | None = None  # telephone-event: what we send with
        self.rx_event_pt: int | None = None  # and what the far end sends with
        self.sender: RtpSender | None = None
        self.dtmf_out: DtmfSender | None = None
        self.dtmf_in = DtmfReceiver()
        self.last_seq: int | None = None
        self.rx = 0
        self.quality = RtpStats()  # what the far end's RTP looks like (call.quality)
        self.next_quality_at = 0.0  # loop time of its next call.quality; 0: not started
        self.srtp: SrtpStream | None = None  # SRTP both ways, when SDP negotiated it
        self.srtp_keys: dict[str, str] | None = None
        self.up: Resampler | None = None  # 8 kHz -> the session's rate
        self.down: Resampler | None = None
        if session.rate != SAMPLES * 50:
            self.up = Resampler(8000, session.rate)
            self.down = Resampler(session.rate, 8000)
        self.closing = False


class Plane:
    def __init__(self, config: Config, listener: socket.socket, source: str | None = None) -> None:
        self.source = source  # the config file, read again on a reload
        self.loop = asyncio.get_running_loop()
        self.listener = listener
        listener.setblocking(False)
        self._use(config)
        self.media: dict[int, PlaneCall] = {}  # RTP fd -> call, for calls with media
        self.epoll = select.epoll()
        self.stopped = asyncio.Event()
        self._ticks = 0
        self._t0 = 0.0
        self._clock: asyncio.TimerHandle | None = None  # None: stopped, no call has media
        self._next_rx_report = 0.0
        self.clock = ClockStats()
        self._after: list[Callable[[], None]] = []  # the sessions' work of this tick

    # -- workers and their messages ---------------------------------------------------------

    def start(self) -> None:
        # What the plane imported and built to start is never garbage: out of the collector's
        # way, a full collection looks only at what calls made since (bench/README.md).
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self.clock.collector)
        self.loop.add_reader(self.listener.fileno(), self._accept)
        log.info("event=media_plane_ready modules=%d", len(sys.modules))

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn = WorkerConn(self, sock)
        self.loop.add_reader(sock.fileno(), self._readable, conn)

    def _readable(self, conn: WorkerConn) -> None:
        while True:
            conn.sock.setblocking(False)
            try:
                message, fds = receive(conn.sock)
            except (BlockingIOError, InterruptedError):
                break
            except PlaneError as exc:
                log.error("event=worker_message_dropped error=%s", exc)
                continue
            except OSError:
                message, fds = None, []
            finally:
                conn.sock.settimeout(SEND_TIMEOUT_S)
            if message is None:
                self._worker_gone(conn)
                return
            try:
                self._handle(conn, message, fds)
            except Exception:  # one call's bad message never takes the plane down
                log.exception("event=worker_message_failed op=%s", message.get("op"))
                for fd in fds:
                    _close_fd(fd)

    def _handle(self, conn: WorkerConn, message: dict[str, Any], fds: list[int]) -> None:
        op, call_id = message.get("op"), str(message.get("call"))
        if op == "open":
            self._open(conn, call_id, message)
            return
        if op == "reload":  # from the supervisor: calls from now on get the new agents
            send(conn.sock, self._reconfigure())
            return
        call = conn.calls.get(call_id)
        if call is None:
            for fd in fds:
                _close_fd(fd)
            log.warning("event=unknown_call op=%s call_id=%s", op, call_id)
            return
        if op == "media":
            self._media(call, message, fds)
        elif op == "dtmf":
            call.session.on_dtmf(str(message.get("digit")))
        elif op == "answered":
            if isinstance(call.session, AnswerAware):
                call.session.answered()
        elif op == "send_dtmf":
            if call.dtmf_out is None:
                log.warning("event=dtmf_not_sent call_id=%s reason=no_telephone_event", call_id)
            else:
                call.dtmf_out.queue(str(message.get("digits")))
        elif op == "close":
            self._close(call)
        else:
            log.error("event=worker_message_dropped op=%r", op)

    def _open(self, conn: WorkerConn, call_id: str, message: dict[str, Any]) -> None:
        record = record_from(message.get("record") or {})

        def emit(event: CallEvent) -> None:
            conn.send({"op": "event", "call": call_id, "event": event_message(event, time.time())})

        def hangup(by: str, reason: str | None = None) -> None:
            conn.send({"op": "hangup", "call": call_id, "by": by, "reason": reason})

        controls = CallControls(call_id, emit, hangup)
        conn.calls[call_id] = PlaneCall(
            conn, call_id, self.make_session(record, controls), controls
        )
        log.debug("event=call_opened call_id=%s calls=%d", call_id, len(conn.calls))

    def _media(self, call: PlaneCall, message: dict[str, Any], fds: list[int]) -> None:
        if fds:
            if call.rtp is not None or len(fds) != 2:
                for fd in fds:
                    _close_fd(fd)
                raise PlaneError(f"call {call.call_id}: media sockets sent twice or not as a pair")
            call.rtp = socket.socket(fileno=fds[0])
            call.rtcp = socket.socket(fileno=fds[1])
            call.rtp.setblocking(False)
            call.rtcp.setblocking(False)
            with contextlib.suppress(OSError):  # without it, jitter is timed on our clock
                call.rtp.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        codec = CODECS.get(str(message.get("codec")))
        if codec is None:
            raise PlaneError(f"call {call.call_id}: codec {message.get('codec')!r} is not G.711")
        host, port = message["remote"]
        if not call.latched:
            call.remote = (str(host), int(port))
        tx_pt, rx_pt = int(message["tx_pt"]), int(message["rx_pt"])
        if call.sender is None or call.codec is not codec or call.pt != tx_pt:
            call.sender = RtpSender(tx_pt, SAMPLES)
        call.codec, call.pt, call.rx_pt = codec, tx_pt, rx_pt
        call.event_pt = _payload_type(message.get("tx_event_pt"))
        call.rx_event_pt = _payload_type(message.get("rx_event_pt"))
        call.dtmf_out = DtmfSender(call.sender, call.event_pt) if call.event_pt else None
        keys = message.get("srtp")
        if keys != call.srtp_keys:  # new keys (a re-INVITE) start new SRTP contexts
            try:
                call.srtp = (
                    None
                    if not keys
                    else SrtpStream(str(keys["suite"]), str(keys["tx_key"]), str(keys["rx_key"]))
                )
            except (SrtpError, KeyError) as exc:
                raise PlaneError(f"call {call.call_id}: {exc}") from None
            call.srtp_keys = keys
        if call.rtp is not None and call.rtp.fileno() not in self.media:
            self.media[call.rtp.fileno()] = call
            self.epoll.register(call.rtp.fileno(), select.EPOLLIN)
            self._start_clock()
        if call.rtcp is not None:
            self.loop.add_reader(call.rtcp.fileno(), _drain, call.rtcp)

    def _close(self, call: PlaneCall) -> None:
        if call.closing:
            return
        call.closing = True
        self._stop_media(call)
        self._report_quality(call, final=True)  # before the session's last events
        conn = call.conn

        def closed() -> None:
            conn.calls.pop(call.call_id, None)
            conn.send({"op": "closed", "call": call.call_id})

        def when_closed() -> None:  # on whichever thread the session's last event left
            self.loop.call_soon_threadsafe(closed)

        call.session.close()
        call.session.when_closed(when_closed)

    def _stop_media(self, call: PlaneCall) -> None:
        if call.rtp is not None:
            fd = call.rtp.fileno()
            if self.media.pop(fd, None) is not None:
                self.epoll.unregister(fd)
            call.rtp.close()
            call.rtp = None
        if call.rtcp is not None:
            self.loop.remove_reader(call.rtcp.fileno())
            call.rtcp.close()
            call.rtcp = None

    def _reconfigure(self) -> dict[str, Any]:
        """The config file again, as the supervisor has just accepted it: sessions made from
        now on use its agents, VAD and recording settings; sessions up keep theirs."""
        if self.source is None:
            return {"op": "reloaded", "ok": False, "error": "started without a config file"}
        try:
            config = load_config(self.source)
        except ConfigError as exc:
            return {"op": "reloaded", "ok": False, "error": "; ".join(exc.problems)}
        self._use(config)
        log.info("event=media_plane_reconfigured agents=%d", len(config.agents))
        return {"op": "reloaded", "ok": True}

    def _worker_gone(self, conn: WorkerConn) -> None:
        conn.open = False
        self.loop.remove_reader(conn.sock.fileno())
        conn.sock.close()
        if conn.calls:
            log.error("event=worker_link_lost calls=%d", len(conn.calls))
        for call in list(conn.calls.values()):
            self._close(call)

    # -- the clock ------------------------------------------------------------------------------

    def _use(self, config: Config) -> None:
        """Sessions made from now on are made for `config`."""
        self.config = config
        self.make_session = make_session_factory(config, self.loop, after_tick=self.after_tick)

    def after_tick(self, work: Callable[[], None]) -> None:
        """Run `work` at the end of this tick (a session's frames to process). Only the tick
        hands frames to sessions, so only the tick calls this."""
        self._after.append(work)

    def _run_after_tick(self) -> None:
        work, self._after = self._after, []
        for fn in work:
            try:
                fn()
            except Exception:  # one session's bug must not cost the others their frames
                log.exception("event=session_work_failed")

    def _start_clock(self) -> None:
        if self._clock is not None:
            return
        self._t0 = self.loop.time()
        self._ticks = 0
        self._next_rx_report = self._t0 + RX_REPORT_S
        self._clock = self.loop.call_at(self._t0 + TICK_S, self._tick)

    def _tick(self) -> None:
        self._ticks += 1
        now = self.loop.time()
        clock = self.clock
        clock.late_s = max(clock.late_s, now - (self._t0 + self._ticks * TICK_S))
        cpu = time.thread_time()
        due = int((now - self._t0) / TICK_S)
        frames = 1
        if due > self._ticks:  # late (a stall): every missed frame goes now, up to a limit
            behind = due - self._ticks
            frames += min(behind, MAX_LATE_TICKS - 1)
            clock.late_ticks += behind
            self._ticks = due
        if not self.media:  # the last call's media ended: an idle plane sleeps
            self._clock = None
            return
        self._clock = self.loop.call_at(self._t0 + (self._ticks + 1) * TICK_S, self._tick)
        try:
            self._receive()
            for _ in range(frames):
                self._transmit()
            self._run_after_tick()
            clock.tick_s = max(clock.tick_s, self.loop.time() - now)
            clock.tick_cpu_s = max(clock.tick_cpu_s, time.thread_time() - cpu)
            if now >= self._next_rx_report:
                self._next_rx_report = now + RX_REPORT_S
                self._report_rx()
                clock.report(len(self.media))
        except Exception:  # a bug in one tick must not stop the clock for every call
            log.exception("event=media_tick_failed")

    def _receive(self) -> None:
        ready = self.epoll.poll(0)
        if not ready:
            return
        batches: dict[str, list[tuple[PlaneCall, bytes]]] = {}
        # One packet per ready socket per round, then epoll again for those with more: one
        # epoll_wait per round for every call instead of an EAGAIN recvfrom per call.
        for _round in range(MAX_READ_ROUNDS):
            if not ready:
                break
            for fd, _mask in ready:
                call = self.media.get(fd)
                if call is None or call.rtp is None:
                    continue
                try:
                    data, ancillary, _flags, source = call.rtp.recvmsg(RECV_BYTES, ANC_BYTES)
                except OSError:  # EAGAIN; ICMP port unreachable from the far end
                    continue
                if call.srtp is not None:
                    clear = call.srtp.unprotect(data)
                    if clear is None:
                        continue  # not authentic, a replay, or plain RTP on an SRTP call
                    data = clear
                packet = parse(data)
                if packet is None:
                    continue
                call.rx += 1
                call.quality.packet(packet.ssrc, packet.seq, packet.timestamp,
                                    _arrival(ancillary))  # fmt: skip
                if not call.latched or call.remote != source:
                    call.remote = source  # symmetric RTP: answer where the far end sends from
                    call.latched = True
                if packet.payload_type == call.rx_event_pt and call.rx_event_pt is not None:
                    digit = call.dtmf_in.push(packet)
                    if digit is not None:
                        self._digit(call, digit)
                    continue
                if packet.payload_type != call.rx_pt or call.codec is None:
                    continue  # comfort noise, an unnegotiated codec
                if call.last_seq is not None and not seq_newer(packet.seq, call.last_seq):
                    continue  # late or repeated
                call.last_seq = packet.seq
                batches.setdefault(call.codec.name, []).append((call, packet.payload))
            ready = self.epoll.poll(0)
        for name, batch in batches.items():
            codec = CODECS[name]
            codes = np.frombuffer(b"".join(payload for _, payload in batch), np.uint8)
            pcm = codec.decode[codes].tobytes()
            # The frame as mu-law too, for a twilio-ws agent: PCMU's payload as it came,
            # PCMA's through one 256-entry lookup for the batch (never decode + encode).
            ulaw = None if codec.to_ulaw is None else codec.to_ulaw[codes].tobytes()
            offset = 0
            for call, payload in batch:
                size = len(payload)
                frame = pcm[2 * offset : 2 * (offset + size)]
                if call.up is not None:
                    call.session.on_caller_frame(call.up.process(frame))
                elif ulaw is None:
                    call.session.on_caller_frame(frame, payload)
                else:
                    call.session.on_caller_frame(frame, ulaw[offset : offset + size])
                offset += size

    def _transmit(self) -> None:
        calls = [call for call in self.media.values() if call.remote is not None]
        if not calls:
            return
        by_codec: dict[str, list[tuple[PlaneCall, bytes]]] = {}
        for call in calls:
            frame = call.session.next_frame()
            if call.down is not None:
                frame = call.down.process(frame)
            if len(frame) != 2 * SAMPLES:
                frame = frame[: 2 * SAMPLES].ljust(2 * SAMPLES, b"\0")
            assert call.codec is not None
            by_codec.setdefault(call.codec.name, []).append((call, frame))
        for name, batch in by_codec.items():
            samples = np.frombuffer(b"".join(frame for _, frame in batch), "<u2")
            payloads = CODECS[name].encode[samples].tobytes()
            for i, (call, _) in enumerate(batch):
                sender, sock, remote = call.sender, call.rtp, call.remote
                if sender is None or sock is None or remote is None:
                    continue
                packet = call.dtmf_out.next_packet() if call.dtmf_out is not None else None
                if packet is None:
                    packet = sender.audio(payloads[i * SAMPLES : (i + 1) * SAMPLES])
                else:
                    sender.skip()
                if call.srtp is not None:
                    packet = call.srtp.protect(packet)
                try:  # noqa: SIM105 (per packet: a try costs nothing, suppress() a call)
                    sock.sendto(packet, remote)
                except OSError:  # the far end's port is closed (ICMP): RTP is best effort
                    pass

    def _digit(self, call: PlaneCall, digit: str) -> None:
        call.session.on_dtmf(digit)
        call.controls.emit(
            DtmfReceived(call_id=call.call_id, digit=digit, method="rfc4733", duration_ms=None)
        )

    def _report_quality(self, call: PlaneCall, final: bool = False) -> None:
        q = call.quality.snapshot()
        if not q.packets_received:
            return  # nothing heard: no figures to give
        call.controls.emit(QualityMeasured(
            call_id=call.call_id, packets_received=q.packets_received,
            packets_lost=q.packets_lost, packet_loss_pct=q.packet_loss_pct,
            jitter_ms=q.jitter_ms, mos=q.mos, final=final,
        ))  # fmt: skip

    def _report_rx(self) -> None:
        now = self.loop.time()
        for call in self.media.values():
            if now >= call.next_quality_at:
                if call.next_quality_at:
                    self._report_quality(call)
                call.next_quality_at = now + QUALITY_REPORT_S
        conns: dict[WorkerConn, dict[str, int]] = {}
        for call in self.media.values():
            conns.setdefault(call.conn, {})[call.call_id] = call.rx
        for conn, counts in conns.items():
            conn.send({"op": "rx", "counts": counts})

    async def run(self) -> None:
        self.start()
        await self.stopped.wait()


def _drain(sock: socket.socket) -> None:
    """RTCP from the far end: read and dropped (its reports are not used yet)."""
    while True:
        try:
            sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return


def _end_with_parent() -> None:
    """A supervisor that dies (kill -9) takes the plane with it: the workers see their
    supervisor link close, the plane has no such link, so the kernel sends it SIGTERM
    (PR_SET_PDEATHSIG). If the parent went before that was set, stop now."""
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def _payload_type(value: Any) -> int | None:
    return value if isinstance(value, int) and 0 < value < 128 else None


def _arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the kernel received the packet (SO_TIMESTAMPNS), or now if it did not say."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            return float(seconds + nanoseconds * 1e-9)
    return time.time()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        socket.close(fd)


async def _main(config: Config, fd: int, source: str) -> None:
    listener = socket.socket(fileno=fd)
    plane = Plane(config, listener, source)
    stop: Callable[[], None] = plane.stopped.set
    plane.loop.add_signal_handler(signal.SIGTERM, stop)
    profile = os.environ.get("SIPEDGE_PLANE_PROFILE")  # bench/: where to write a cProfile
    if not profile:
        await plane.run()
        return
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        await plane.run()
    finally:
        profiler.disable()
        profiler.dump_stats(profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipedge-plane")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--index", type=int, default=1, help="which of the node's planes")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s plane={args.index} %(message)s",
        stream=sys.stderr,
    )
    faulthandler.enable(file=sys.stderr, all_threads=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops us, after the workers
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # and tells us to reload
    _end_with_parent()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    _set_priority(config.node.media_nice)
    asyncio.run(_main(config, args.fd, args.config))
    return 0


def _set_priority(nice: int) -> None:
    """Every call's audio waits on this process's 20 ms clock: on a host whose cores are
    busy (agents, other services) a niceness below 0 lets it run first when it wakes."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except PermissionError:
        log.warning("event=media_priority_not_set nice=%d reason=not_permitted "
                    "hint=run as root or grant CAP_SYS_NICE", nice)  # fmt: skip
        return
    log.info("event=media_priority nice=%d", os.getpriority(os.PRIO_PROCESS, 0))
