"""The front's dispatching, against workers made of raw UDP sockets that answer as told:
least-loaded first, failover on 503, no answer, all full, a dead worker leaving rotation,
in-dialog requests reaching the worker that owns the dialog, drain. Real Kamailio, rendered
from a real config; only the workers are stand-ins (the node runs one real worker today)."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import Config, worker_slots
from gateway.front.process import find_kamailio
from gateway.front.render import FrontPaths, render
from gateway.front.rpc import FrontRpc
from tests.integration.peers import free_sip_port, free_udp_port_run, sip_options
from tests.integration.rawsip import RawUac, SipMessage

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@dataclass
class FakeWorker:
    """A SIP worker's stand-in on its slot's port: OPTIONS 200; INVITE as `mode` says
    (answer: 200 with its own Contact; busy: 503; silent: nothing, not even to OPTIONS)."""

    port: int
    mode: str = "answer"
    invites: list[str] = field(default_factory=list)  # Call-IDs, in arrival order
    byes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, self.port))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            message = SipMessage(data.decode(errors="replace"))
            if message.is_response or self.mode == "silent":
                continue
            if message.method == "INVITE":
                self.invites.append(message.header("call-id"))
                code = 200 if self.mode == "answer" else 503
                self._reply(message, source, code, with_dialog=code == 200)
            elif message.method == "BYE":
                self.byes.append(message.header("call-id"))
                self._reply(message, source, 200)
            elif message.method != "ACK":
                self._reply(message, source, 200)

    def _reply(self, request: SipMessage, to: tuple[str, int], code: int,
               with_dialog: bool = False) -> None:  # fmt: skip
        keep = ("via", "from", "call-id", "cseq") + (("record-route",) if with_dialog else ())
        lines = [f"SIP/2.0 {code} {'OK' if code == 200 else 'Service Unavailable'}"]
        for line in request.text.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if name in keep:
                lines.append(line)
            elif name == "to":
                lines.append(line if ";tag=" in line else f"{line};tag=w{self.port}")
        if with_dialog:
            lines.append(f"Contact: <sip:worker@{HOST}:{self.port}>")
        self.sock.sendto(("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode(), to)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


class Front:
    """kamailio with the rendered files, its log in a file, stopped by PID."""

    def __init__(self, tmp: Path, config: Config) -> None:
        self.config = config
        self.paths = FrontPaths(tmp)
        files = render(config, worker_slots(config), self.paths, "DEBUG")
        for name, text in files.by_name().items():
            (tmp / name).write_text(text)
        self.log_path = tmp / "kamailio.log"
        self.rpc = FrontRpc(self.paths.rpc_socket)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [find_kamailio(), "-DD", "-E", "-f", str(self.paths.config), "-w", str(tmp),
                 "-Y", str(tmp), "-m", "32", "-M", "8"],  # fmt: skip
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while sip_options(port=config.sip.port, timeout=0.2) is None:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()[-3000:]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> dict[str, tuple[bool, int]]:
        """uri -> (active, calls counted) as the dispatcher sees them."""
        result = self.rpc.call_now("dispatcher.list")
        return {
            t["DEST"]["URI"]: (t["DEST"]["FLAGS"][0] in "AT", t["DEST"]["RUNTIME"]["DLGLOAD"])
            for r in result["RECORDS"] for t in r["SET"]["TARGETS"]
        }  # fmt: skip

    def wait_workers(self, wanted: dict[str, bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while {uri: state[0] for uri, state in self.workers().items()} != wanted:
            assert time.monotonic() < deadline, (self.workers(), self.log()[-3000:])
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stand:
    front: Front
    workers: list[FakeWorker]
    port: int

    def uri(self, worker: FakeWorker) -> str:
        return f"sip:{HOST}:{worker.port}"

    def owner(self, call_id: str) -> FakeWorker:
        """The worker that took the call (on equal loads the dispatcher picks either)."""
        [worker] = [w for w in self.workers if call_id in w.invites]
        return worker

    def other(self, worker: FakeWorker) -> FakeWorker:
        return next(w for w in self.workers if w is not worker)


@pytest.fixture
def stand(tmp_path: Path) -> Iterator[Stand]:
    port = free_sip_port()
    first = free_udp_port_run(3)  # the front's worker side, then the two workers
    config = Config.model_validate(
        {
            "node": {"workers": 2},
            "sip": {
                "listen": HOST,
                "port": port,
                "transports": ["udp"],
                "front": {"mode": "embedded", "worker_ports_start": first + 1},
            },
            "trunks": [{"id": "loopback", "allowed_ips": ["127.0.0.0/8"]}],
            "numbers": [{"number": "+15550100", "agent": "echo"}],
            "agents": [{"id": "echo", "type": "echo"}],
            "limits": {"max_concurrent_calls": 4, "retry_after": 9},
        }  # fmt: skip
    )
    workers = [FakeWorker(first + 1), FakeWorker(first + 2)]
    front = Front(tmp_path, config)
    try:
        front.wait_workers({f"sip:{HOST}:{w.port}": True for w in workers})
        yield Stand(front, workers, port)
    finally:
        front.stop()
        for worker in workers:
            worker.close()


def test_calls_go_to_the_least_loaded_worker_and_byes_to_the_one_that_owns_them(
    stand: Stand,
) -> None:
    a, b = stand.workers
    with RawUac(stand.port) as uac:
        first, first_ok = uac.call()
        second, second_ok = uac.call()  # the other worker: it has no call yet
        assert stand.other(stand.owner(first.call_id)) is stand.owner(second.call_id)
        assert stand.front.workers() == {stand.uri(a): (True, 1), stand.uri(b): (True, 1)}
        for dialog, final in ((second, second_ok), (first, first_ok)):
            uac.bye(dialog, final)
            assert uac.wait_final(dialog).status == 200
            assert stand.owner(dialog.call_id).byes == [dialog.call_id]
        assert stand.front.workers() == {stand.uri(a): (True, 0), stand.uri(b): (True, 0)}


def test_a_full_worker_503_moves_the_call_to_the_next_and_all_full_is_503_retry_after(
    stand: Stand,
) -> None:
    with RawUac(stand.port) as uac:
        held, held_ok = uac.call()
        loaded = stand.owner(held.call_id)
        idle = stand.other(loaded)
        idle.mode = "busy"  # the least loaded one, so the next INVITE goes there first
        dialog, final = uac.call()  # 503 from it: the front tries the other
        assert idle.invites == [dialog.call_id] and loaded.invites[-1] == dialog.call_id
        loaded.mode = "busy"
        refused = uac.invite()
        answer = uac.wait_final(refused)
        uac.ack(refused, answer)
        assert (answer.status, answer.header("retry-after")) == (503, "9")
        # Tried where there was room: not on the loaded worker, at its cap of 2 calls.
        assert refused.call_id in idle.invites and refused.call_id not in loaded.invites
        for d, f in ((dialog, final), (held, held_ok)):
            uac.bye(d, f)
            assert uac.wait_final(d).status == 200


def test_workers_at_their_call_cap_get_no_invite_and_the_caller_503(stand: Stand) -> None:
    a, b = stand.workers  # limits.max_concurrent_calls 4: each worker holds its 2
    with RawUac(stand.port) as uac:
        held = [uac.call() for _ in range(4)]
        refused = uac.invite()
        answer = uac.wait_final(refused)
        uac.ack(refused, answer)
        assert (answer.status, answer.header("retry-after")) == (503, "9")
        assert refused.call_id not in a.invites + b.invites  # answered by the front itself
        for dialog, final in held:
            uac.bye(dialog, final)


def test_a_silent_worker_leaves_rotation_and_its_invite_goes_to_the_next(stand: Stand) -> None:
    a, b = stand.workers
    a.mode = "silent"  # a crashed worker answers nothing, OPTIONS probes included
    with RawUac(stand.port) as uac:
        dialog, final = uac.call()  # no answer from a (if it was tried first), then b
        assert stand.owner(dialog.call_id) is b
        stand.front.wait_workers({stand.uri(a): False, stand.uri(b): True})
        again, again_ok = uac.call()  # b has a call, a none: still b, a is out of rotation
        assert again.call_id not in a.invites and b.invites[-1] == again.call_id
        a.mode = "answer"
        stand.front.wait_workers({stand.uri(a): True, stand.uri(b): True})
        for d, f in ((dialog, final), (again, again_ok)):
            uac.bye(d, f)


def test_a_draining_front_refuses_new_invites_and_lets_dialogs_end(stand: Stand) -> None:
    with RawUac(stand.port) as uac:
        dialog, final = uac.call()
        stand.front.rpc.call_now("htable.seti", "front", "draining", 1)
        refused = uac.invite()
        answer = uac.wait_final(refused)
        uac.ack(refused, answer)
        assert (answer.status, answer.header("retry-after")) == (503, "9")
        uac.bye(dialog, final)
        assert uac.wait_final(dialog).status == 200
        assert stand.owner(dialog.call_id).byes == [dialog.call_id]


def test_a_call_every_worker_refused_leaves_no_load_counted(stand: Stand) -> None:
    a, b = stand.workers
    a.mode = b.mode = "busy"
    with RawUac(stand.port) as uac:
        refused = uac.invite()
        answer = uac.wait_final(refused)
        uac.ack(refused, answer)
        assert answer.status == 503
        assert refused.call_id in a.invites and refused.call_id in b.invites
        assert stand.front.workers() == {stand.uri(a): (True, 0), stand.uri(b): (True, 0)}
