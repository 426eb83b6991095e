"""Helpers that run real SIP peers on 127.0.0.1 for integration tests.

* `free_port()` / `free_udp_port()` / `free_tcp_port()` - a currently free port on 127.0.0.1.
* `sip_options()` / `wait_for_sip()` - send a raw SIP OPTIONS over UDP, parse the reply.
* `Sipp` - run a SIPp scenario (foreground with `run()`, or background with `start()`/`stop()`).
* `RtpSink` - a UDP socket that collects RTP packets (point a `uas_rtp_sink.xml` SDP at it).
* `Kamailio` - a digest-auth registrar/proxy rendered from kamailio/registrar.cfg.tmpl.
* `Baresip` - a headless baresip phone with a generated config dir, driven over stdin.

Everything binds 127.0.0.1 (SIPp's UDP control socket is the one exception SIPp gives no
choice about: it binds 0.0.0.0, the first free port from 8888 up, SIPp's own search, so two
SIPps never race for one port we picked). Every process is started by us and
stopped by its PID. Fixtures at the bottom: `sipp_uas`, `kamailio`, `baresip_factory`.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
import wave
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "sipp_scenarios"
KAMAILIO_TMPL = Path(__file__).resolve().parent / "kamailio" / "registrar.cfg.tmpl"
HOST = "127.0.0.1"

SIPP_BIN = shutil.which("sipp") or "/usr/bin/sipp"
KAMAILIO_BIN = shutil.which("kamailio") or "/usr/sbin/kamailio"
BARESIP_BIN = shutil.which("baresip") or "/usr/bin/baresip"


# --------------------------------------------------------------------------------- ports


class _PortPool:
    """Ports for tests, handed out in order from a range below Linux's ephemeral ports.

    A port the OS picked as free (bind to 0) lies in the ephemeral range, where any process's
    next connect() or unbound send may take it before the test's node binds it: CI lost a
    front's TCP port that way. Below the range only our own picks land, and each pytest-xdist
    process has its own slice of it; within a process, ports go out in order (4 at a time: a
    SIPp media port's neighbours, SIP's TCP beside UDP), so two picks of one test never meet.
    """

    LOW, HIGH, STEP = 2100, 5000, 4

    def __init__(self) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
        index = int(worker) if worker.isdigit() else 0
        size = (self.HIGH - self.LOW) // max(count, 1)
        self.low = self.LOW + index % max(count, 1) * size
        self.high = self.low + size - size % self.STEP
        # a child process (a test's helper) starts elsewhere in the slice than its parent
        self.next = self.low + (os.getpid() * 7 % (size // self.STEP)) * self.STEP
        self.lock = threading.Lock()

    def take(self, span: int) -> int | None:
        """The first port of `span` in a row not handed out lately (None: none fit)."""
        span += -span % self.STEP
        if span > self.high - self.low:
            return None
        with self.lock:
            if self.next + span > self.high:
                self.next = self.low
            base, self.next = self.next, self.next + span
        return base


_POOL = _PortPool()


def free_port(kind: Literal["udp", "tcp"] = "udp", host: str = HOST) -> int:
    """A port free right now on `host`, from the tests' own range (see _PortPool); the OS's
    pick if none there is."""
    stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    for _ in range(64):
        port = _POOL.take(1)
        if port is None:
            break
        with socket.socket(socket.AF_INET, stype) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, stype) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_udp_port() -> int:
    return free_port("udp")


def free_tcp_port() -> int:
    return free_port("tcp")


def free_sip_port(tcp_span: int = 1, host: str = HOST) -> int:
    """A port P free for UDP, and P..P+tcp_span-1 free for TCP: SIP listens on UDP and TCP
    on the same port (baresip also opens TLS on P+1: use tcp_span=2)."""
    for _ in range(200):
        port = free_port("udp", host)
        if port + tcp_span > 65535:
            continue
        try:
            for p in range(port, port + tcp_span):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free SIP port found")


def free_udp_port_run(count: int, step: int = 1, host: str = HOST, tcp: bool = False) -> int:
    """First port P such that P, P+step, ... P+(count-1)*step are all free UDP ports on `host`
    (and on 0.0.0.0, so SIPp's media/control sockets can bind them); with `tcp`, free for
    TCP on `host` too (SIP workers listen on both)."""
    for _ in range(200):
        taken = _POOL.take((count - 1) * step + 1)
        base = taken if taken is not None else free_port("udp", host)
        if base % 2:
            base -= 1
        ports = [base + i * step for i in range(count)]
        if ports[-1] > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for p in ports:
                for h in (host, "0.0.0.0"):
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    socks.append(s)
                    s.bind((h, p))
                    if h == host:  # release before binding the wildcard on the same port
                        s.close()
                if tcp:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    socks.append(s)
                    s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port run found")


# ----------------------------------------------------------------------------- SIP ping


@dataclass(frozen=True)
class SipReply:
    status: int
    reason: str
    raw: str

    def header(self, name: str) -> str | None:
        for line in self.raw.split("\r\n")[1:]:
            if not line:
                break
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def sip_options(
    host: str = HOST, port: int = 5060, timeout: float = 1.0, uri: str | None = None
) -> SipReply | None:
    """Send one SIP OPTIONS over UDP from an ephemeral 127.0.0.1 port.

    Returns the first final reply (provisional ones are skipped) or None on timeout.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        lport = s.getsockname()[1]
        branch = "z9hG4bK" + uuid.uuid4().hex[:16]
        target = uri or f"sip:{host}:{port}"
        msg = (
            f"OPTIONS {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{lport};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:ping@{HOST}:{lport}>;tag={uuid.uuid4().hex[:8]}\r\n"
            f"To: <{target}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@{HOST}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            f"Contact: <sip:ping@{HOST}:{lport}>\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        s.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(65535)
            except (TimeoutError, ConnectionRefusedError):
                return None
            reply = parse_status_line(data.decode("utf-8", "replace"))
            if reply is not None and reply.status >= 200:
                return reply
        return None


def parse_status_line(raw: str) -> SipReply | None:
    m = re.match(r"SIP/2\.0 (\d{3}) ?([^\r\n]*)", raw)
    return SipReply(int(m.group(1)), m.group(2), raw) if m else None


def wait_for_sip(host: str = HOST, port: int = 5060, timeout: float = 10.0) -> SipReply:
    """Poll with OPTIONS until something answers; raise TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = sip_options(host, port, timeout=0.3)
        if reply is not None:
            return reply
        time.sleep(0.1)
    raise TimeoutError(f"no SIP answer from {host}:{port} within {timeout}s")


# --------------------------------------------------------------------------- processes


def _stop_pid(proc: subprocess.Popen[bytes], timeout: float, first: int = signal.SIGTERM) -> int:
    """Signal our child by PID, escalate to SIGKILL; returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, first)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return int(proc.returncode)


# -------------------------------------------------------------------------------- SIPp


@dataclass
class SippResult:
    returncode: int
    successful: int
    failed: int
    workdir: Path
    screen: str = ""
    errors: str = ""
    stats: dict[str, str] = field(default_factory=dict)  # last -trace_stat row

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.failed == 0 and self.successful > 0


class Sipp:
    """One SIPp process running one scenario.

    Client (remote given) places calls to host:port; server (remote=None) answers them.
    Traces (-trace_err, -trace_screen, -trace_stat) go into `workdir`.

        res = Sipp("uac_pcap.xml", remote=("127.0.0.1", 5060), service="+15550100").run(30)
        assert res.ok, res.errors

        with Sipp("uas.xml", calls=1).start() as uas:     # background UAS
            ... dial f"sip:x@127.0.0.1:{uas.port}" ...
            res = uas.wait(10)                             # or uas.stop()
    """

    def __init__(
        self,
        scenario: str | Path,
        *,
        remote: tuple[str, int] | None = None,
        workdir: Path | None = None,
        port: int | None = None,
        media_port: int | None = None,
        service: str | None = None,
        calls: int | None = 1,
        rate: float | None = None,
        limit: int | None = None,
        duration_ms: int | None = None,
        keys: Mapping[str, str | int] | None = None,
        auth: tuple[str, str] | None = None,
        rtp_echo: bool = False,
        auto_answer: bool = True,
        extra: Sequence[str] = (),
    ) -> None:
        path = Path(scenario)
        self.scenario = path if path.is_absolute() or path.exists() else SCENARIOS / path
        if not self.scenario.exists():
            raise FileNotFoundError(self.scenario)
        self.remote = remote
        self.workdir = workdir or _tempdir("sipp-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_port_run(1)
        self.media_port = media_port or free_udp_port_run(2, step=2)
        self.args: list[str] = [
            "-i",
            HOST,
            "-p",
            str(self.port),
            "-mi",
            HOST,
            "-mp",
            str(self.media_port),
            "-nostdin",
            "-trace_err",
            "-trace_screen",
            "-trace_stat",
            "-stf",
            str(self.workdir / "stats.csv"),
            "-fd",
            "1",
            "-max_recv_loops",
            "1000",
        ]
        if service is not None:
            self.args += ["-s", service]
        if calls is not None:
            self.args += ["-m", str(calls)]
        if rate is not None:
            self.args += ["-r", str(rate)]
        if limit is not None:
            self.args += ["-l", str(limit)]
        if duration_ms is not None:
            self.args += ["-d", str(duration_ms)]
        for k, v in (keys or {}).items():
            self.args += ["-key", k, str(v)]
        if auth is not None:
            self.args += ["-au", auth[0], "-ap", auth[1]]
        if rtp_echo:
            self.args.append("-rtp_echo")
        if auto_answer:
            self.args.append("-aa")  # 200 to stray INFO/NOTIFY/OPTIONS/UPDATE
        self.args += list(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [SIPP_BIN, "-sf", str(self.scenario), *self.args]
        if self.remote is not None:
            cmd.append(f"{self.remote[0]}:{self.remote[1]}")
        return cmd

    @property
    def uri_host(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> Sipp:
        assert self.proc is None, "already started"
        self._stdout = open(self.workdir / "stdout.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
        )
        if self.remote is None:  # server: wait until the SIP socket is bound
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not _udp_bound(self.port):
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        return self

    def wait(self, timeout: float = 60.0) -> SippResult:
        assert self.proc is not None, "not started"
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(
                f"sipp {self.scenario.name} still running after {timeout}s; see {self.workdir}"
            ) from None
        return self._result()

    def run(self, timeout: float = 60.0) -> SippResult:
        """Foreground: start, wait until SIPp exits (all calls done), return the result."""
        return self.start().wait(timeout)

    def stop(self, timeout: float = 5.0) -> SippResult:
        """SIGUSR1 asks SIPp for a soft exit (it writes its screen/stat files); then TERM/KILL."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGUSR1)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop_pid(self.proc, 3)
        return self._result()

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _result(self) -> SippResult:
        assert self.proc is not None
        with contextlib.suppress(Exception):
            self._stdout.close()
        screen = _read_first(self.workdir, "*_screen.log")
        errors = _read_first(self.workdir, "*_errors.log")
        stats = _last_stat_row(self.workdir / "stats.csv")
        ok = _int(stats.get("SuccessfulCall(C)"))
        bad = _int(stats.get("FailedCall(C)"))
        if not stats and screen:  # fall back to the final screen
            ok = _screen_counter(screen, "Successful call")
            bad = _screen_counter(screen, "Failed call")
        rc = self.proc.returncode if self.proc.returncode is not None else -1
        return SippResult(rc, ok, bad, self.workdir, screen, errors, stats)


def _tempdir(prefix: str) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def _udp_bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return True
        return False


def _read_first(d: Path, pattern: str) -> str:
    files = sorted(d.glob(pattern))
    return files[0].read_text(errors="replace") if files else ""


def _last_stat_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    rows = list(csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _int(v: str | None) -> int:
    try:
        return int(v) if v is not None else 0
    except ValueError:
        return 0


def _screen_counter(screen: str, name: str) -> int:
    hits = re.findall(rf"{name}\s*\|\s*\d+\s*\|\s*(\d+)", screen)
    return int(hits[-1]) if hits else 0


# ---------------------------------------------------------------------------- RTP sink


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes
    source: tuple[str, int]


class RtpSink:
    """Collect RTP/UDP packets on 127.0.0.1:<port> in a background thread.

    with RtpSink() as sink:
        Sipp("uas_rtp_sink.xml", keys={"rtp_port": sink.port}).start()
        ...
        assert sink.wait_for(150, timeout=5)
        audio = sink.payload(pt=0)          # concatenated PCMU bytes
    """

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, port))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.packets: list[RtpPacket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, src = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            if len(data) < 12 or data[0] >> 6 != 2:
                continue
            cc = data[0] & 0x0F
            b1, seq, ts, ssrc = struct.unpack("!xBHII", data[:12])
            self.packets.append(
                RtpPacket(b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, data[12 + 4 * cc :], src)
            )

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.packets) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.packets) >= count

    def payload(self, pt: int | None = None) -> bytes:
        return b"".join(p.payload for p in self.packets if pt is None or p.payload_type == pt)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- Kamailio


class Kamailio:
    """A registrar with digest auth (fixed users, no database) on 127.0.0.1:<port>.

    REGISTER: 401 challenge, 200 with the right password, 403 with a wrong one.
    INVITE: optional 407 challenge (auth_invite), then to a registered contact of the R-URI
    user, else to the contacts of `trunk_user` (keeping the dialled R-URI user), else to
    `forward_to` ("host:port"), else 404.

        with Kamailio(users={"alice": "secret"}, forward_to=f"127.0.0.1:{uas.port}") as k:
            Sipp("register_then_call.xml", remote=k.addr, keys={"user": "alice"},
                 auth=("alice", "secret"), service="1000").run()
            k.restart()           # same port, answers OPTIONS again
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        realm: str = HOST,
        auth_invite: bool = False,
        forward_to: str | None = None,
        trunk_user: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.port = port or free_udp_port_run(1)
        self.users = dict(users if users is not None else {"alice": "secret"})
        self.realm = realm
        self.auth_invite = auth_invite
        self.forward_to = forward_to or ""
        self.trunk_user = trunk_user or ""
        self.workdir = workdir or _tempdir("kamailio-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cfg = self.workdir / "kamailio.cfg"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    @property
    def addr(self) -> tuple[str, int]:
        return (HOST, self.port)

    def render(self) -> Path:
        for name in (*self.users, self.trunk_user):
            if not re.fullmatch(r"[A-Za-z0-9_.+\-]*", name):
                raise ValueError(f"unsupported user name {name!r}")
        users = "\n".join(
            f'\tif ($au == "{u}") {{ $var(pw) = "{_kam_str(p)}"; }}' for u, p in self.users.items()
        )
        values = {
            "PORT": str(self.port),
            "REALM": self.realm,
            "USERS": users,
            "AUTH_INVITE": "1" if self.auth_invite else "0",
            "FORWARD_TO": self.forward_to,
            "TRUNK_USER": self.trunk_user,
        }
        text = KAMAILIO_TMPL.read_text()
        for k, v in values.items():
            text = text.replace("{{" + k + "}}", v)
        self.cfg.write_text(text)
        return self.cfg

    def command(self) -> list[str]:
        run = self.workdir / "run"
        run.mkdir(exist_ok=True)
        return [
            KAMAILIO_BIN,
            "-DD",
            "-E",
            "-f",
            str(self.cfg),
            "-w",
            str(self.workdir),
            "-Y",
            str(run),
            "-m",
            "64",
            "-M",
            "8",
        ]

    def check(self) -> None:
        """`kamailio -c`: raise with kamailio's own message if the config is invalid."""
        self.render()
        res = subprocess.run(
            [KAMAILIO_BIN, "-c", "-f", str(self.cfg)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"kamailio config invalid:\n{res.stderr[-3000:]}")

    def start(self, timeout: float = 10.0) -> Kamailio:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.render()
        log = open(self.workdir / "kamailio.log", "ab")  # noqa: SIM115
        self._log = log
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            if sip_options(HOST, self.port, timeout=0.2) is not None:
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"kamailio not answering on {self.port}:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is not None:
            _stop_pid(self.proc, timeout)
            # the children are in its session; make sure none keeps the port
            deadline = time.monotonic() + timeout
            while _udp_bound(self.port) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._log is not None:
            with contextlib.suppress(Exception):
                self._log.close()  # type: ignore[attr-defined]

    def restart(self, timeout: float = 10.0) -> Kamailio:
        self.stop()
        self.proc = None
        return self.start(timeout)

    def log(self) -> str:
        p = self.workdir / "kamailio.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> Self:
        return self if self.proc is not None and self.proc.poll() is None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kam_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


# ----------------------------------------------------------------------------- baresip


def write_wav(path: Path, samples: Sequence[int], rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    return path


def speech_samples(seconds: float = 3.0) -> list[int]:
    """The known signal of sipp_scenarios/pcap/speech_pcmu.pcap (make_pcap.pcm_samples)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sipedge_make_pcap", SCENARIOS / "make_pcap.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return list(mod.pcm_samples(seconds))


class Baresip:
    """baresip v1 headless: SIP on 127.0.0.1:<port>, audio in from a WAV file (aufile; the call
    is hung up by baresip when the file ends, so give it one longer than the call),
    audio out to a dummy aubridge device, commands over stdin (stdio module), events read
    from stdout.

        with Baresip(user="bob", registrar=k.addr, password="pw", answer="auto") as b:
            b.wait_registered()
            b.dial(f"sip:1000@127.0.0.1:{uas.port}")
            b.wait_established()
            b.hangup(); b.wait_closed()
    """

    ESTABLISHED = re.compile(r"Call established")
    CLOSED = re.compile(r"session closed|terminated \(duration|terminate call|Call failed")
    REGISTERED = re.compile(r"\} 200 OK .*binding|registered successfully")
    REG_FAILED = re.compile(r"\} [45]\d\d |reg: .*: [45]\d\d |reg: .*failed|register failed")

    def __init__(
        self,
        *,
        user: str = "bob",
        port: int | None = None,
        registrar: tuple[str, int] | None = None,
        password: str | None = None,
        answer: Literal["manual", "auto"] = "auto",
        wav: Path | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.user = user
        self.port = port or free_sip_port(tcp_span=2)  # SIP on UDP+TCP P, TLS on TCP P+1
        self.registrar = registrar
        self.password = password
        self.answer = answer
        self.workdir = workdir or _tempdir("baresip-")
        self.workdir.mkdir(parents=True, exist_ok=True)
        # baresip v1 hangs up the call when its aufile source ends ("audio error (0,end of
        # file)"), so the default file is long: the 3 s speech signal repeated for 120 s.
        self.wav = wav or write_wav(self.workdir / "in.wav", speech_samples(3.0) * 40)
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self.mark = 0  # index into lines where the current call's output starts
        self._cond = threading.Condition()

    def write_config(self) -> Path:
        cfg = self.workdir / "cfg"
        cfg.mkdir(exist_ok=True)
        rtp = free_udp_port_run(1)
        (cfg / "config").write_text(
            "poll_method\t\tpoll\n"
            f"sip_listen\t\t{HOST}:{self.port}\n"
            f"net_interface\t\t{HOST}\n"
            f"audio_player\t\taubridge,nil-{self.port}\n"
            f"audio_alert\t\taubridge,nil-{self.port}\n"
            f"audio_source\t\taufile,{self.wav}\n"
            "ausrc_srate\t\t8000\nausrc_channels\t\t1\n"
            f"rtp_ports\t\t{rtp}-{rtp + 40}\n"
            "module_path\t\t/usr/lib/baresip/modules\n"
            "module\t\t\tstdio.so\nmodule\t\t\tg711.so\n"
            "module\t\t\taufile.so\nmodule\t\t\taubridge.so\n"
            "module_app\t\taccount.so\nmodule_app\t\tmenu.so\n"
        )
        if self.registrar is not None:
            host, port = self.registrar
            params = f";auth_pass={self.password}" if self.password else ""
            params += f';outbound="sip:{host}:{port}";regint=60'
            aor = f"<sip:{self.user}@{host}:{port};transport=udp>"
        else:
            params, aor = ";regint=0", f"<sip:{self.user}@{HOST}:{self.port}>"
        (cfg / "accounts").write_text(f"{aor}{params};answermode={self.answer}\n")
        (cfg / "contacts").write_text("")
        return cfg

    def start(self, timeout: float = 5.0) -> Baresip:
        cfg = self.write_config()
        self.proc = subprocess.Popen(
            [BARESIP_BIN, "-f", str(cfg)],
            cwd=self.workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._reader, daemon=True).start()
        self.wait_for(re.compile(r"baresip is ready"), timeout)
        return self

    def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        log = open(self.workdir / "baresip.log", "w")  # noqa: SIM115
        with log:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                line = re.sub(r"\x1b\[[0-9;]*m", "", line)
                log.write(line + "\n")
                log.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()

    def command(self, cmd: str) -> None:
        """Send a baresip command line, e.g. "/dial sip:..." or "/hangup"."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()

    def dial(self, uri: str) -> None:
        """Place a call; wait_established()/wait_closed() then look only at later output."""
        self.mark = len(self.lines)
        self.command(f"/dial {uri}")

    def hangup(self) -> None:
        self.command("/hangup")

    def wait_for(
        self,
        pattern: re.Pattern[str],
        timeout: float = 10.0,
        start: int = 0,
        fail: re.Pattern[str] | None = None,
    ) -> str:
        """First output line (from line index `start`) matching `pattern`; raises
        TimeoutError on timeout and RuntimeError if a line matching `fail` comes first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if pattern.search(line):
                        return line
                    if fail is not None and fail.search(line):
                        raise RuntimeError(f"baresip: {line}")
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    tail = "\n".join(self.lines[-30:])
                    raise TimeoutError(f"baresip: no /{pattern.pattern}/ in {timeout}s:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def wait_registered(self, timeout: float = 5.0) -> str:
        return self.wait_for(self.REGISTERED, timeout, fail=self.REG_FAILED)

    def wait_established(self, timeout: float = 10.0) -> str:
        """Raises RuntimeError at once if the call closes first (e.g. "session closed: 404")."""
        return self.wait_for(self.ESTABLISHED, timeout, start=self.mark, fail=self.CLOSED)

    def wait_closed(self, timeout: float = 10.0) -> str:
        return self.wait_for(self.CLOSED, timeout, start=self.mark)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self.command("/quit")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop_pid(self.proc, 3)

    def __enter__(self) -> Self:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- fixtures


def _require(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(f"{binary} not installed")


@pytest.fixture
def peer_stack() -> Iterator[contextlib.ExitStack]:
    """ExitStack closed at teardown: `peer_stack.enter_context(Sipp(...))` starts a peer and
    guarantees it is stopped even when the test fails."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture
def sipp_uas(tmp_path: Path) -> Iterator[Sipp]:
    """A background SIPp running sipp_scenarios/uas.xml (unlimited calls) on a free port."""
    _require(SIPP_BIN)
    uas = Sipp("uas.xml", calls=None, workdir=tmp_path / "sipp-uas").start()
    try:
        yield uas
    finally:
        uas.stop()


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[Kamailio]:
    """A running Kamailio registrar with user alice/secret."""
    _require(KAMAILIO_BIN)
    k = Kamailio(users={"alice": "secret"}, workdir=tmp_path / "kamailio").start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def baresip_factory(tmp_path: Path) -> Iterator[type[Baresip] | object]:
    """Call it like Baresip(...); every phone made is started and stopped for you."""
    _require(BARESIP_BIN)
    made: list[Baresip] = []

    def make(**kw: object) -> Baresip:
        kw.setdefault("workdir", tmp_path / f"baresip-{len(made)}")
        Path(str(kw["workdir"])).mkdir(parents=True, exist_ok=True)
        b = Baresip(**kw).start()  # type: ignore[arg-type]
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop()
