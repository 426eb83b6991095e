"""The embedded front: Debian's `kamailio` as a child of the node, in the foreground.

start() renders the config into a run directory of its own, starts Kamailio and returns once
it answers an OPTIONS on the public SIP port; its log lines become the node's (logger
`sipedge.front`); stop() terminates it by PID; `exited` is set when it ends, expected or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from gateway.config import Config, WorkerSlot, hostport
from gateway.errors import SipedgeError
from gateway.front.render import FrontFiles, FrontPaths, render
from gateway.front.rpc import FrontRpc
from gateway.front.security import front_environment
from gateway.front.tlslog import TlsRefusals

log = logging.getLogger("sipedge.front")

KAMAILIO_PATHS = ("/usr/sbin/kamailio", "/usr/local/sbin/kamailio")
SHM_MB = 64  # shared memory (transactions, dialog loads, htables); mapped lazily
PKG_MB = 8  # private memory per Kamailio process
# " 9(23761) ERROR: <core> [core/receive.c:376]: receive_msg(): ..." -> level, message
_LINE = re.compile(r"^\s*\d+\(\d+\)\s+([A-Z]+):\s*(?:<script>:\s*)?(.*)$")
_LEVELS = {"ALERT": logging.CRITICAL, "BUG": logging.CRITICAL, "CRITICAL": logging.CRITICAL,
           "ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": logging.INFO,
           "INFO": logging.DEBUG, "DEBUG": logging.DEBUG}  # fmt: skip


class FrontError(SipedgeError):
    """The front could not be started."""


def find_kamailio() -> str:
    found = shutil.which("kamailio")
    if found:
        return found
    for path in KAMAILIO_PATHS:
        if Path(path).exists():
            return path
    raise FrontError("kamailio not found; install the Debian package `kamailio`")


def log_line(text: str) -> tuple[int, str]:
    """A Kamailio log line as (logging level, message): Kamailio's NOTICE is our INFO and its
    INFO our DEBUG (the script logs one line per refused INVITE at INFO, as the workers do at
    DEBUG, and one per source and interval at NOTICE)."""
    match = _LINE.match(text)
    if match is None:
        return logging.INFO, text
    level, message = match.groups()
    return _LEVELS.get(level, logging.INFO), message


class FrontProcess:
    """Kamailio dispatching over `slots`, on the config's public SIP address."""

    def __init__(
        self,
        config: Config,
        slots: list[WorkerSlot],
        *,
        log_level: str = "INFO",
        binary: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.slots = slots
        self.log_level = log_level
        self.binary = binary or find_kamailio()
        self.start_timeout = start_timeout
        self._dir = tempfile.TemporaryDirectory(prefix="sipedge-front-")
        self.paths = FrontPaths(Path(self._dir.name))
        self.rpc = FrontRpc(self.paths.rpc_socket)
        self.proc: asyncio.subprocess.Process | None = None
        self.exited = asyncio.Event()
        self.stopping = False
        self.started_in: float | None = None  # seconds from spawn to the first answer
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tail: list[str] = []
        self._tls = TlsRefusals(config)
        # Handshakes refused, by direction (in, out): Kamailio counts none of them itself.
        self.tls_refused: Counter[str] = Counter()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and not self.exited.is_set()

    def files(self) -> FrontFiles:
        return render(self.config, self.slots, self.paths, self.log_level)

    def command(self) -> list[str]:
        directory = str(self.paths.directory)
        return [self.binary, "-DD", "-E", "-f", str(self.paths.config), "-w", directory,
                "-Y", directory, "-m", str(SHM_MB), "-M", str(PKG_MB)]  # fmt: skip

    async def start(self) -> None:
        self.files().write(self.paths)
        self.exited.clear()
        self.stopping = False
        self._tail = []
        began = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(),
            cwd=self.paths.directory,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # The inbound digest passwords, which the script reads as $env(...).
            env={**os.environ, **front_environment(self.config)},
            # Its own process group: Ctrl-C must not take the front down before the workers
            # have drained (their in-dialog requests still pass through it).
            process_group=0,
        )
        self._reader = asyncio.create_task(self._read_log(self.proc))
        self._watcher = asyncio.create_task(self._watch(self.proc))
        deadline = began + self.start_timeout
        while time.monotonic() < deadline and not self.exited.is_set():
            if await asyncio.to_thread(self._answers_options):
                self.started_in = time.monotonic() - began
                log.info("event=front_started pid=%d listen=%s transports=%s workers=%d "
                         "started_in_ms=%d", self.proc.pid, hostport(self.config.sip.listen,
                         self.config.sip.port), ",".join(self.config.sip.transports),
                         len(self.slots), round(self.started_in * 1000))  # fmt: skip
                return
        await self.stop()
        tail = "\n".join(self._tail[-15:])
        raise FrontError(f"the SIP front (kamailio) did not start; its last lines:\n{tail}")

    def _answers_options(self) -> bool:
        """One OPTIONS to the front's public SIP port; True on any answer."""
        sip = self.config.sip
        host = "127.0.0.1" if sip.listen in ("0.0.0.0", "") else sip.listen
        host = "::1" if host == "::" else host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = "udp" in sip.transports
        try:
            with socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                if udp:
                    s.bind((host, 0))
                else:
                    s.connect((host, sip.port))
                local = s.getsockname()[1]
                request = options_request(host, sip.port, local, "udp" if udp else "tcp")
                if udp:
                    s.sendto(request, (host, sip.port))
                else:
                    s.sendall(request)
                return s.recv(4096).startswith(b"SIP/2.0 ")
        except OSError:
            time.sleep(0.05)  # not listening yet (TCP refused, or ICMP unreachable)
            return False

    async def _read_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            if not text:
                continue
            self._tail = [*self._tail[-40:], text]
            level, message = log_line(text)
            log.log(level, "%s", message)
            refusal = self._tls.feed(message)
            if refusal is not None:
                self.tls_refused[refusal.direction] += 1
                log.warning("%s", refusal.log_line())

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        # Not proc.wait(): before Python 3.12 it also waits for the log pipe to close, which
        # Kamailio's children keep open when the main process was killed.
        await process_exit(proc.pid)
        # Those children outlive it, holding the SIP ports: end the rest of its process
        # group, ours (started with process_group=0).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)  # its last lines
        if not self.stopping:
            log.error("event=front_exited pid=%d code=%s", proc.pid, code)
        self.exited.set()

    async def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (Kamailio's main process ends its children), SIGKILL after `timeout`."""
        proc = self.proc
        if proc is None or self.exited.is_set():
            return
        self.stopping = True
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(self.exited.wait(), timeout)
        except TimeoutError:
            log.error("event=front_kill pid=%d reason=stop_timeout", proc.pid)
            proc.kill()
            await self.exited.wait()
        log.info("event=front_stopped pid=%d", proc.pid)

    def close(self) -> None:
        self._dir.cleanup()


async def process_exit(pid: int) -> None:
    """Until process `pid` has ended (a pidfd becomes readable then; Linux 5.3+)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ended.done():
            ended.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def options_request(host: str, port: int, local_port: int, transport: str) -> bytes:
    """An out-of-dialog OPTIONS to the front, answered by the front itself."""
    where = hostport(host, port)
    branch = "z9hG4bK" + uuid.uuid4().hex[:16]
    return (
        f"OPTIONS sip:{where} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {hostport(host, local_port)};branch={branch};rport\r\n"
        f"From: <sip:sipedge@{where}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{where}>\r\n"
        f"Call-ID: {uuid.uuid4().hex}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
