"""The supervisor's end of one SIP worker process: spawning it, the IPC link, its requests."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway.calls.events import WorkerEvent
from gateway.errors import detail, refusal_code
from gateway.events.schema import CommandError
from gateway.node.placement import WorkerPhase
from gateway.worker.ipc import IpcError, encode, event_from, read_message

log = logging.getLogger("sipedge.node")

WORKER_START_TIMEOUT = 30.0
REQUEST_TIMEOUT = 15.0


class WorkerRefused(CommandError):
    """The worker refused a request; `reason` is its own (capacity_exceeded, call_not_found,
    draining, ...), `code` the API's code for it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(refusal_code(reason), message,
                         [detail(message, type=reason or "internal_error")])  # fmt: skip
        self.reason = reason


class WorkerLink:
    """The supervisor's end of one SIP worker process (worker `index` of the node, 1-based).

    `on_event(link, event, ts)` gets every event the worker sends, in order; `registers`
    are the trunks it registers from its start."""

    def __init__(
        self,
        index: int,
        config_path: Path,
        on_event: Callable[[WorkerLink, WorkerEvent, float], None],
        registers: Sequence[str] = (),
        plane: str | None = None,
    ) -> None:
        self.index = index
        self.plane = plane
        self.config_path = config_path
        self.on_event = on_event
        self.registers = list(registers)
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status: dict[str, Any] = {}
        self.ready = asyncio.Event()
        self.exited = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def phase(self) -> WorkerPhase:
        if self.exited.is_set():
            return "stopped"
        return "running" if self.ready.is_set() else "starting"

    @property
    def running(self) -> bool:
        return self.phase == "running"

    @property
    def capacity(self) -> int:
        capacity = self.status.get("capacity")
        return capacity if isinstance(capacity, int) else 0

    async def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [
            sys.executable,
            "-m",
            "gateway.worker",
            "--config",
            str(self.config_path),
            "--fd",
            str(child.fileno()),
            "--slot",
            str(self.index),
            "--registers",
            ",".join(self.registers),
            "--log-level",
            logging.getLevelName(log.getEffectiveLevel()),
        ]
        if self.plane is not None:
            cmd += ["--plane", self.plane]
        self.proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=(child.fileno(),))
        child.close()
        reader, self.writer = await asyncio.open_unix_connection(sock=parent)
        self._reader_task = asyncio.create_task(self._read(reader))
        try:
            await asyncio.wait_for(self.ready.wait(), WORKER_START_TIMEOUT)
        except TimeoutError:
            raise RuntimeError("SIP worker did not become ready") from None
        if self.exited.is_set():
            raise RuntimeError("SIP worker exited during start (see its log above)")
        log.info(
            "event=worker_ready worker=%d pid=%d registers=%s status=%s",
            self.index,
            self.proc.pid,
            ",".join(self.registers) or "-",
            {k: v for k, v in self.status.items() if k != "trunks"},
        )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    message = await read_message(reader)
                except IpcError as exc:  # one bad frame is dropped; the link stays in step
                    log.error("event=worker_frame_dropped worker=%d error=%s", self.index, exc)
                    continue
                if message is None:
                    break
                kind = message.get("kind")
                if kind == "event":
                    try:
                        event, ts = event_from(message)
                    except IpcError as exc:
                        log.error("event=worker_event_dropped worker=%d error=%s", self.index, exc)
                        continue
                    self.on_event(self, event, ts)
                elif kind == "reply":
                    future = self._pending.pop(int(message["id"]), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif kind == "ready":
                    self.status = message["status"]
                    self.ready.set()
        except (ConnectionError, ValueError) as exc:
            log.error("event=worker_link_broken worker=%d error=%s", self.index, exc)
        finally:
            if self.proc is not None:
                code = await self.proc.wait()
                level = logging.INFO if code == 0 else logging.ERROR
                log.log(level, "event=worker_exited worker=%d code=%s", self.index, code)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CommandError("internal_error", "SIP worker exited"))
            self.exited.set()
            self.ready.set()

    async def request(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        if self.writer is None or self.exited.is_set():
            raise CommandError("internal_error", "SIP worker is not running")
        rid = next(self._ids)
        frame = encode({"kind": "request", "id": rid, "op": op, "args": args or {}})
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        self.writer.write(frame)
        try:
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(rid, None)
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        raise WorkerRefused(str(error.get("code") or ""), str(error.get("message") or "failed"))

    async def kill(self) -> None:
        """SIGKILL a worker that failed to start (it may hang), and wait for its end."""
        if self.proc is not None and not self.exited.is_set():
            self.proc.kill()
            await self.exited.wait()

    async def stop(self, timeout: float) -> None:
        if self.proc is None or self.exited.is_set():
            return
        try:
            await self.request("stop", timeout=5)
        except (CommandError, TimeoutError):
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            log.error("event=worker_kill worker=%d reason=stop_timeout", self.index)
            self.proc.kill()
            await self.exited.wait()
