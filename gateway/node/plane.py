"""The supervisor's end of the media plane processes (node.media: plane, node.media_planes).

The supervisor owns the plane's listening socket (an abstract Unix SOCK_SEQPACKET name): it is
bound and listening before any process starts, so a worker can connect at once, and it
outlives a plane that dies, so the plane started again takes the workers' new connections
on the same name. A plane that dies takes its calls' media with it: each worker sees its link
close and ends those calls (reason media_failed is theirs to give); that is a bug to find, so
it is logged as an error with the exit status.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from pathlib import Path

from gateway.backoff import Backoff
from gateway.worker.planelink import PlaneError, receive, send

log = logging.getLogger("sipedge.node")


class PlaneReloadError(Exception):
    pass


STOP_TIMEOUT = 10.0
RELOAD_TIMEOUT = 5.0
STABLE_S = 60.0


class PlaneProcess:
    """Media plane `index` (1-based) of the node."""

    def __init__(self, node_id: str, config_path: Path, index: int = 1) -> None:
        self.config_path = config_path
        self.index = index
        # "@name" on command lines (argv cannot hold the NUL of an abstract socket's name)
        self.address = f"@sipedge-plane-{node_id}-{os.getpid()}-{index}"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind("\0" + self.address[1:])
        self.listener.listen(128)
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        fd = self.listener.fileno()
        cmd = [sys.executable, "-m", "gateway.plane", "--config", str(self.config_path),
               "--fd", str(fd), "--index", str(self.index), "--log-level",
               logging.getLevelName(log.getEffectiveLevel())]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(*cmd, pass_fds=(fd,))
        log.info("event=media_plane_started pid=%d plane=%d", self.proc.pid, self.index)

    async def reload(self, timeout: float = RELOAD_TIMEOUT) -> None:
        """The plane reads its config file again (a reload the supervisor accepted), and
        answers once calls from then on get the new agents; raises PlaneReloadError if not."""
        if self.proc is None or self.proc.returncode is not None:
            return  # a plane that starts again reads the file anyway
        await asyncio.to_thread(self._reload, timeout)

    def _reload(self, timeout: float) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect("\0" + self.address[1:])
                send(sock, {"op": "reload"})
                answer, _ = receive(sock)
            except (OSError, PlaneError) as exc:
                message = f"the media plane did not answer the reload: {exc}"
                raise PlaneReloadError(message) from None
        if not answer or not answer.get("ok"):
            error = (answer or {}).get("error", "no answer")
            raise PlaneReloadError(f"the media plane refused the reload: {error}")

    async def supervise(self, stop: asyncio.Event) -> None:
        """Start the plane again whenever it dies, until `stop` is set."""
        backoff = Backoff(0.5, 30.0)
        while not stop.is_set():
            proc = self.proc
            if proc is None:
                return
            started = time.monotonic()
            waiter = asyncio.ensure_future(proc.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not waiter.done() or self._stopping:
                waiter.cancel()
                return
            if time.monotonic() - started > STABLE_S:
                backoff.reset()
            delay = backoff.next_delay()
            self.restarts += 1
            log.error("event=media_plane_died plane=%d returncode=%s restart_in=%.1f "
                      "restarts=%d", self.index, proc.returncode, delay, self.restarts)  # fmt: skip
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return
            except TimeoutError:
                pass
            await self.start()

    async def stop(self) -> None:
        """After the workers: their sessions have closed, so the plane has nothing left."""
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.error("event=media_plane_kill plane=%d reason=stop_timeout", self.index)
                proc.kill()
                await proc.wait()
        self.listener.close()
