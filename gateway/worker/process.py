"""A SIP worker process: one pjsua2 endpoint, the media of its calls, and the IPC link to
the supervisor. Started by the supervisor as
`python -m gateway.worker --config F --fd N --slot I --registers TRUNK,...`."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import socket
import sys
import time
import weakref
from typing import TYPE_CHECKING, Any

from gateway.calls.events import WorkerEvent
from gateway.calls.model import CallRecord
from gateway.config import Config, load_config, slot_config, worker_slots
from gateway.errors import CallRefused, ConfigError
from gateway.session.contract import CallControls
from gateway.session.factory import make_session_factory
from gateway.sip.engine import OriginateRequest, SipEngine
from gateway.worker.ipc import IpcError, encode, event_message, read_message
from gateway.worker.planelink import PlaneLink, PlaneSession

if TYPE_CHECKING:
    from gateway.session.agent import AgentSession

log = logging.getLogger("sipedge.worker")

SESSION_CLOSE_TIMEOUT = 8.0


class Worker:
    def __init__(
        self,
        config: Config,
        sock: socket.socket,
        registers: list[str] | None = None,
        plane: str | None = None,
        source: tuple[str, int] | None = None,
    ) -> None:
        self.config = config
        self.source = source  # the config file and this worker's slot in it (a reload)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.writer: asyncio.StreamWriter | None = None
        self.streaming: weakref.WeakSet[AgentSession | PlaneSession] = weakref.WeakSet()
        self.plane: PlaneLink | None = None
        if config.node.media == "plane":
            if plane is None:
                raise ConfigError(["node.media is plane but the worker was given no --plane"])
            self.plane = PlaneLink(plane)
            self.loop.add_reader(self.plane.sock.fileno(), self._plane_readable)
            sessions = self._plane_sessions(self.plane)
        else:
            sessions = make_session_factory(config, self.loop, self.streaming)  # type: ignore[arg-type]
        self.engine = SipEngine(config, self._emit_threadsafe, sessions, registers)
        self.stopped = asyncio.Event()

    def _plane_sessions(self, link: PlaneLink) -> Any:
        def make(record: CallRecord, controls: CallControls) -> PlaneSession:
            session = PlaneSession(link, record, controls)
            self.streaming.add(session)
            return session

        return make

    def _plane_readable(self) -> None:
        assert self.plane is not None
        if not self.plane.on_readable():
            self.loop.remove_reader(self.plane.sock.fileno())

    def _emit_threadsafe(self, event: WorkerEvent) -> None:
        self.loop.call_soon_threadsafe(self._send, event_message(event, time.time()))

    def _send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            try:
                frame = encode(message)
            except IpcError as exc:
                log.error("event=frame_not_sent kind=%s error=%s", message.get("kind"), exc)
                if message.get("kind") != "reply":
                    return
                error = {"code": "internal_error", "message": str(exc)}
                frame = encode({"kind": "reply", "id": message.get("id"), "ok": False,
                                "error": error})  # fmt: skip
            self.writer.write(frame)

    async def run(self) -> None:
        reader, self.writer = await asyncio.open_unix_connection(sock=self.sock)
        await asyncio.to_thread(self.engine.start)
        status = await self._on_sip(self.engine.status)
        # What an idle worker costs grows with what it imported (bench/worker_idle.py).
        log.info("event=sip_worker_ready modules=%d", len(sys.modules))
        self._send({"kind": "ready", "status": status})
        try:
            while not self.stopped.is_set():
                try:
                    message = await read_message(reader)
                except IpcError as exc:  # one bad frame is dropped; the link stays in step
                    log.error("event=supervisor_frame_dropped error=%s", exc)
                    continue
                if message is None:
                    if not self.stopped.is_set():  # not the end of a stop the node asked for
                        log.warning("event=supervisor_gone action=stop")
                    await self._stop()
                    break
                if message.get("kind") == "request":
                    asyncio.ensure_future(self._handle(message))
        finally:
            await self._stop()

    async def _on_sip(self, fn: Any) -> Any:
        return await asyncio.wrap_future(self.engine.submit(fn))

    async def _handle(self, message: dict[str, Any]) -> None:
        op, args, rid = message.get("op"), message.get("args") or {}, message.get("id")
        try:
            result = await self._dispatch(str(op), args)
            self._send({"kind": "reply", "id": rid, "ok": True, "result": result})
        except CallRefused as exc:
            self._send(
                {
                    "kind": "reply",
                    "id": rid,
                    "ok": False,
                    "error": {"code": exc.reason, "message": str(exc)},
                }
            )
        except Exception as exc:  # reported to the supervisor, never fatal to the worker
            log.exception("event=request_failed op=%s", op)
            self._send(
                {
                    "kind": "reply",
                    "id": rid,
                    "ok": False,
                    "error": {"code": "internal_error", "message": str(exc)},
                }
            )

    async def _dispatch(self, op: str, args: dict[str, Any]) -> Any:
        engine = self.engine
        if op == "status":
            return await self._on_sip(engine.status)
        if op == "originate":
            request = OriginateRequest(**args)
            return {"call_id": await self._on_sip(lambda: engine.originate(request))}
        if op == "hangup":
            await self._on_sip(
                lambda: engine.hangup(args["call_id"], args.get("by", "control_plane"))
            )
            return {"call_id": args["call_id"]}
        if op == "send_dtmf":
            await self._on_sip(lambda: engine.send_dtmf(args["call_id"], args["digits"]))
            return {"call_id": args["call_id"], "digits": args["digits"]}
        if op == "transfer":
            await self._on_sip(lambda: engine.transfer(args["call_id"], args["target"]))
            return {"call_id": args["call_id"], "target": args["target"]}
        if op == "register":
            trunks = [str(t) for t in args["trunks"]]
            return await self._on_sip(lambda: engine.register(trunks))
        if op == "reload":
            config = self._reread_config()
            registers = [str(t) for t in args.get("registers", [])]
            return await self._on_sip(lambda: self._reconfigure(config, registers))
        if op == "drain":
            await self._on_sip(engine.drain)
            return await self._on_sip(engine.status)
        if op == "stop":
            asyncio.ensure_future(self._stop())
            return {"stopping": True}
        raise CallRefused("unknown_operation", f"unknown operation {op!r}")

    def _reread_config(self) -> Config:
        """The config file again, as the supervisor has just accepted it (a reload)."""
        if self.source is None:
            raise CallRefused("unknown_operation", "this worker was not started from a file")
        path, slot = self.source
        try:
            return slot_config(config := load_config(path), worker_slots(config)[slot - 1])
        except ConfigError as exc:
            raise CallRefused("config_invalid", "; ".join(exc.problems)) from None

    def _reconfigure(self, config: Config, registers: list[str]) -> dict[str, Any]:
        """SIP thread: new calls are made with the new config from now on."""
        self.config = config
        if self.plane is None:  # the plane makes its own sessions (and reloads on its own)
            self.engine.make_session = make_session_factory(
                config,
                self.loop,
                self.streaming,  # type: ignore[arg-type]
            )
        return self.engine.reconfigure(config, registers)

    async def _stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        await asyncio.to_thread(self.engine.stop)
        # Every call has ended; let agent sessions send their stop, finish recordings and emit
        # their last events (call.recording.ready) before the link to the supervisor closes.
        closing = [session.wait_closed() for session in list(self.streaming)]
        if closing:
            try:
                await asyncio.wait_for(asyncio.gather(*closing), SESSION_CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("event=sessions_not_closed count=%d", len(closing))
        if self.plane is not None:
            self.plane.close()
        if self.writer is not None:
            await asyncio.sleep(0)  # let queued events (call_soon_threadsafe) reach the link
            self.writer.close()


async def _main(
    config: Config,
    fd: int,
    registers: list[str] | None,
    plane: str | None,
    source: tuple[str, int],
) -> None:
    sock = socket.socket(fileno=fd)
    worker = Worker(config, sock, registers, plane, source)
    await worker.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sipedge-worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--slot", type=int, default=1, help="which worker of the node (1-based)")
    parser.add_argument(
        "--registers",
        default=None,
        help="comma-separated trunks this worker registers (default: every registering trunk)",
    )
    parser.add_argument("--plane", default=None, help="the media plane's socket (node.media plane)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s worker={args.slot} %(message)s",
        stream=sys.stderr,
    )
    # A crash in pjsua2's threads (SIGSEGV, SIGABRT from an assertion) leaves every thread's
    # Python stack in the log instead of a silent restart by the supervisor.
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # The supervisor decides when we stop (it drains first); a signal sent to the whole process
    # group must not hang up calls behind its back. If the supervisor dies, our IPC link closes
    # and we stop on our own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload comes from the supervisor
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    slots = worker_slots(config)
    if not 1 <= args.slot <= len(slots):
        print(f"--slot {args.slot}: the config has {len(slots)} worker slot(s)", file=sys.stderr)
        return 2
    config = slot_config(config, slots[args.slot - 1])
    registers = None if args.registers is None else [t for t in args.registers.split(",") if t]
    asyncio.run(_main(config, args.fd, registers, args.plane, (args.config, args.slot)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
