"""A node with three SIP workers behind its front (sip.front.mode embedded; each test also
reaches each worker on its own port): every worker answers and
records calls, commands reach the worker that owns the call, dial-out spreads over the
workers and skips a full one, a worker killed with -9 ends only its own calls and comes back,
and each trunk is registered by exactly one worker, taken over when that worker dies."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, trunk_to, workers_config
from tests.integration.peers import HOST, Kamailio, Sipp, free_port

pytestmark = pytest.mark.integration

KEY = "sk-pool-7c1e"
NUMBER = "+15550100"
_ON_WORKER = re.compile(r"worker=(\d+) event=call_(?:incoming|placed) call_id=(\S+)")
_READY = re.compile(r"event=worker_ready worker=(\d+) pid=(\d+)")
# The registering worker's own port: its Via, beneath the front's (the REGISTER's source).
_REGISTER = re.compile(
    r"sipedge-test REGISTER user=(\S+) source=\S+ expires=(\S*) via=SIP/2\.0/\w+ [\d.]+:(\d+)"
)


def call_workers(node: NodeProcess) -> dict[str, int]:
    """call_id -> the worker that logged it (each worker's log lines carry worker=N)."""
    return {call_id: int(worker) for worker, call_id in _ON_WORKER.findall(node.log())}


def worker_pids(node: NodeProcess) -> dict[int, int]:
    """The latest pid of each worker, from its worker_ready lines."""
    return {int(worker): int(pid) for worker, pid in _READY.findall(node.log())}


def answered(mq: MqttWatch, count: int) -> list[str]:
    def find() -> list[str] | None:
        ids = [e["call_id"] for e in mq.events() if e["type"] == "call.answered"]
        return ids if len(ids) >= count else None

    found: list[str] = mq.wait(find, timeout=30, what=f"{count} calls answered")
    return found


def ended(mq: MqttWatch, call_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        done = [e for e in mq.events(call_id) if e["type"] in ("call.completed", "call.failed")]
        return done[0] if done else None

    event: dict[str, Any] = mq.wait(find, timeout=40, what=f"end of {call_id}")
    return event


def api_config(tmp_path: Path, **overrides: Any) -> tuple[dict[str, Any], str]:
    port = free_port("tcp")
    config = workers_config(
        tmp_path, 3,
        api={"enabled": True, "listen": HOST, "port": port, "api_keys": ["${POOL_KEY}"]},
        limits={"max_concurrent_calls": 12, "ring_timeout": 30}, **overrides,
    )  # fmt: skip
    return config, f"http://{HOST}:{port}"


def test_each_worker_answers_on_its_port_and_a_hangup_reaches_the_calls_worker(
    tmp_path: Path,
) -> None:
    config, base = api_config(tmp_path)
    node = NodeProcess(tmp_path, config, env={"POOL_KEY": KEY})
    auth = {"Authorization": f"Bearer {KEY}"}
    with node, MqttWatch(node.mqtt_port) as mq, httpx.Client(base_url=base, headers=auth) as api:
        health = api.get("/health").json()
        assert [w["state"] for w in health["workers"]] == ["running"] * 3
        assert len({w["pid"] for w in health["workers"]}) == 3
        assert health["capacity"] == 12 and health["checks"]["sip_worker"] == "ok"

        # Worker 2's caller waits for our BYE; the callers on workers 1 and 3 hang up.
        waits = Sipp("uac_wait_bye.xml", remote=(HOST, node.worker_port(2)), service=NUMBER,
                     workdir=tmp_path / "w2").start()  # fmt: skip
        callers = [
            Sipp("uac_pcap.xml", remote=(HOST, node.worker_port(i)), service=NUMBER,
                 workdir=tmp_path / f"w{i}").start()
            for i in (1, 3)
        ]  # fmt: skip
        calls = answered(mq, 3)
        owners = call_workers(node)
        assert sorted(owners[c] for c in calls) == [1, 2, 3]
        on_two = next(c for c in calls if owners[c] == 2)
        assert [w["active_calls"] for w in api.get("/health").json()["workers"]] == [1, 1, 1]

        hung = api.post(f"/v1/calls/{on_two}/hangup")
        assert hung.status_code == 202, hung.text
        assert waits.wait(30).successful == 1
        for caller in callers:
            result = caller.wait(30)
            assert result.successful == 1, result.errors
        ends = {c: ended(mq, c) for c in calls}
        assert ends[on_two]["data"]["hangup_by"] == "control_plane"
        assert all(ends[c]["data"]["hangup_by"] == "caller" for c in calls if c != on_two)
        logged = api.get("/v1/calls").json()["data"]
        assert sorted(c["id"] for c in logged) == sorted(calls)
        assert all(c["status"] == "completed" for c in logged)

        metrics = api.get("/metrics").text
        for i in (1, 2, 3):
            assert f'sipedge_worker_up{{worker="{i}"}} 1' in metrics
            assert f'sipedge_worker_call_capacity{{worker="{i}"}} 4' in metrics
        assert "sipedge_call_capacity 12" in metrics
        status = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "status", "--url", base],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "3 of 3 SIP workers running" in status.stdout
        assert [line.split()[1] for line in status.stdout.splitlines()[3:6]] == ["running"] * 3
    assert node.stop() == 0


def test_dial_out_spreads_over_the_workers_and_skips_a_full_one(tmp_path: Path) -> None:
    uas = Sipp("uas.xml", calls=None, workdir=tmp_path / "uas").start()
    try:
        config, _ = api_config(tmp_path, trunks=trunk_to(uas.port, max_concurrent_calls=12))
        node = NodeProcess(tmp_path, config, env={"POOL_KEY": KEY})
        with node, MqttWatch(node.mqtt_port) as mq:
            # Worker 1 holds four inbound calls (all its slots) that wait for our BYE.
            inbound = Sipp("uac_wait_bye.xml", remote=(HOST, node.worker_port(1)),
                           service=NUMBER, calls=4, rate=20, limit=4,
                           workdir=tmp_path / "full").start()  # fmt: skip
            held = answered(mq, 4)
            assert {call_workers(node)[c] for c in held} == {1}

            placed = [
                mq.command("call.originate", {"to": f"+1555123000{n}", "agent": "echo"})
                for n in range(4)
            ]
            outbound = [reply["data"]["id"] for reply in placed]
            for call_id in outbound:
                mq.wait_event("call.answered", call_id)
            owners = call_workers(node)
            assert Counter(owners[c] for c in outbound) == {2: 2, 3: 2}

            for call_id in held + outbound:
                assert mq.command("call.hangup", {"call_id": call_id})["data"]["id"] == call_id
            for call_id in held + outbound:
                assert ended(mq, call_id)["data"]["hangup_by"] == "control_plane"
            result = inbound.wait(30)
            assert result.successful == 4, result.errors
        assert node.stop() == 0
    finally:
        uas.stop()


def test_a_killed_worker_ends_only_its_own_calls_and_comes_back(tmp_path: Path) -> None:
    config = workers_config(tmp_path, 3, limits={"max_concurrent_calls": 12})
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        # One call on each worker: 3 s of speech, 6 s more, then the caller's BYE.
        callers = {
            i: Sipp("uac_pcap.xml", remote=(HOST, node.worker_port(i)), service=NUMBER,
                    duration_ms=6000, workdir=tmp_path / f"call{i}").start()
            for i in (1, 2, 3)
        }  # fmt: skip
        calls = answered(mq, 3)
        on_worker = {call_workers(node)[c]: c for c in calls}
        pids = worker_pids(node)
        os.kill(pids[2], signal.SIGKILL)

        lost = ended(mq, on_worker[2])
        assert lost["type"] == "call.completed"
        assert lost["data"]["reason"] == "worker_lost" and lost["data"]["hangup_by"] == "gateway"
        for i in (1, 3):
            result = callers[i].wait(40)
            assert result.successful == 1, result.errors
            done = ended(mq, on_worker[i])
            assert done["data"]["reason"] == "normal" and done["data"]["hangup_by"] == "caller"
        callers[2].stop()

        log = node.wait_log("event=worker_ready worker=2", count=2)
        assert log.count("event=worker_died") == 1
        assert "event=worker_died worker=2 calls_closed=1" in log
        again = worker_pids(node)
        assert again[1] == pids[1] and again[3] == pids[3] and again[2] != pids[2]
        result = Sipp("uac_pcap.xml", remote=(HOST, node.worker_port(2)), service=NUMBER,
                      workdir=tmp_path / "again").run(30)  # fmt: skip
        assert result.successful == 1, result.errors
        assert node.stop() == 0


def registers(kam: Kamailio) -> list[tuple[str, int, str]]:
    """(user, worker port, Expires) of every REGISTER the registrar accepted, in order."""
    return [(user, int(port), expires) for user, expires, port in _REGISTER.findall(kam.log())]


def wait_register(kam: Kamailio, user: str, port: int, after: int = 0) -> None:
    """Wait until the registrar accepts a REGISTER of `user` from `port` (a worker's SIP port),
    among those after the first `after`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any((u, p) == (user, port) and e != "0" for u, p, e in registers(kam)[after:]):
            return
        time.sleep(0.1)
    raise AssertionError(f"no REGISTER of {user} from port {port}: {registers(kam)}")


def trunk_events(db: Path) -> Counter[tuple[str, str]]:
    """(trunk, event type) of every trunk event the node stored."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT type, topic FROM events WHERE call_id IS NULL").fetchall()
    return Counter((topic.split("/trunks/")[1].split("/")[0], kind) for kind, topic in rows)


def test_each_trunk_is_registered_by_one_worker_and_taken_over_when_it_dies(
    tmp_path: Path,
) -> None:
    kam = Kamailio(users={"alice": "secret", "bob": "pw-bob"}, workdir=tmp_path / "kam").start()
    try:
        trunks = [
            {"id": trunk, "register": True, "registrar": f"sip:{HOST}:{kam.port}",
             "username": user, "password": f"${{{env}}}", "expires": 10, "retry_min": 0.5,
             "retry_max": 2}
            for trunk, user, env in (("first", "alice", "PW_A"), ("second", "bob", "PW_B"))
        ]  # fmt: skip
        config = workers_config(tmp_path, 3, trunks=trunks, numbers=[])
        node = NodeProcess(tmp_path, config, env={"PW_A": "secret", "PW_B": "pw-bob"})
        with node:
            # Spread over the workers: first on worker 1, second on worker 2.
            wait_register(kam, "alice", node.worker_port(1))
            wait_register(kam, "bob", node.worker_port(2))
            assert {(u, p) for u, p, _ in registers(kam)} == {
                ("alice", node.worker_port(1)), ("bob", node.worker_port(2)),
            }  # fmt: skip

            os.kill(worker_pids(node)[1], signal.SIGKILL)
            # Worker 3 registers no trunk yet: it takes "first" over at once.
            wait_register(kam, "alice", node.worker_port(3))
            assert "event=trunk_handed_over trunk=first from_worker=1 to_worker=3" in node.log()

            # Worker 1 comes back; the registration stays with worker 3 (placement.claim says
            # why): the next refresh comes from worker 3 again, none from worker 1.
            node.wait_log("event=worker_ready worker=1", count=2)
            back = len(registers(kam))
            wait_register(kam, "alice", node.worker_port(3), after=back)
            assert all(p != node.worker_port(1) for _, p, _ in registers(kam)[back:])
            assert node.stop() == 0
        # Each trunk is unregistered once, by the worker that registers it.
        unregistered = [(u, p) for u, p, expires in registers(kam) if expires == "0"]
        assert sorted(unregistered) == [("alice", node.worker_port(3)),
                                        ("bob", node.worker_port(2))]  # fmt: skip
        # One trunk event per REGISTER, whatever the number of workers that load the trunk.
        accepted = Counter(u for u, _, expires in registers(kam) if expires != "0")
        events = trunk_events(tmp_path / "sipedge.db")
        assert events[("first", "trunk.registered")] == accepted["alice"]
        assert events[("second", "trunk.registered")] == accepted["bob"]
        assert events[("first", "trunk.unregistered")] == 1
        assert events[("second", "trunk.unregistered")] == 1
    finally:
        kam.stop()


def test_sigterm_drains_every_worker_and_their_calls_finish(tmp_path: Path) -> None:
    config = workers_config(tmp_path, 3, node={"id": "test-node", "drain_timeout": 20},
                            limits={"max_concurrent_calls": 12})  # fmt: skip
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        callers = {
            i: Sipp("uac_pcap.xml", remote=(HOST, node.worker_port(i)), service=NUMBER,
                    duration_ms=4000, workdir=tmp_path / f"call{i}").start()
            for i in (1, 3)
        }  # fmt: skip
        calls = answered(mq, 2)
        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        node.wait_log("event=draining")
        # Every worker refuses new calls, the one without a call too.
        for i in (1, 2, 3):
            late = Sipp("uac_pcap.xml", remote=(HOST, node.worker_port(i)), service=NUMBER,
                        workdir=tmp_path / f"late{i}").run(20)  # fmt: skip
            assert late.failed == 1 and "503" in late.errors, late.errors
        for caller in callers.values():
            result = caller.wait(30)
            assert result.successful == 1, result.errors
        for call_id in calls:
            done = ended(mq, call_id)
            assert done["data"]["reason"] == "normal" and done["data"]["hangup_by"] == "caller"
        assert node.stop() == 0
    assert "event=drain_timeout" not in node.log()
