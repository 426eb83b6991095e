"""The SIP front (Kamailio, sip.front.mode embedded) in front of the node's worker: calls
through it, in-dialog requests both ways, and what it answers itself (unrouted numbers,
strangers, floods) so the worker never sees it."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import parse_config, worker_slots
from gateway.front.process import find_kamailio
from gateway.front.render import FrontPaths, render
from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, trunk_to, workers_config
from tests.integration.peers import Kamailio, free_port
from tests.integration.rawsip import RawUac, SipMessage, response_to
from tests.integration.test_robustness import call_row

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def front_config(tmp: Path, **overrides: Any) -> dict[str, Any]:
    """One worker behind the node's front, on ports checked free."""
    return workers_config(tmp, 1, **overrides)


def wait_answered(db: str, sip_call_id: str, timeout: float = 10.0) -> None:
    """Until the worker has the call answered: the front relays the ACK and a BYE right
    behind it in parallel processes, so a BYE sent at once may overtake the ACK."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT answered_at FROM calls WHERE sip_call_id=?", (sip_call_id,)
            ).fetchone()
        if row is not None and row[0] is not None:
            return
        time.sleep(0.02)
    raise AssertionError(f"call {sip_call_id} not answered")


def worker_saw(node: NodeProcess, sip_call_id: str) -> bool:
    """Whether the worker's request gate or routing logged this Call-ID (at DEBUG)."""
    return any(
        f"sip_call_id={sip_call_id}" in line and "sipedge.front" not in line
        for line in node.log().splitlines()
    )


def test_the_rendered_config_is_one_kamailio_accepts(tmp_path: Path) -> None:
    config = parse_config(
        "sip: {listen: 127.0.0.1, port: 5990, front: {mode: external}}\n"
        "node: {workers: 3}\n"
        "trunks: [{id: carrier, allowed_ips: [198.51.100.0/24, '2001:db8::/32']}]\n"
        "numbers: [{number: '+15550100', agent: echo, trunk: carrier}]\n"
        "agents: [{id: echo, type: echo}]\n",
        "front.yaml",
    )
    paths = FrontPaths(tmp_path)
    for name, text in render(config, worker_slots(config), paths).by_name().items():
        (tmp_path / name).write_text(text)
    checked = subprocess.run(
        [find_kamailio(), "-c", "-f", str(paths.config)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr[-3000:]


def test_a_call_through_the_front_reaches_the_worker_and_bye_passes_both_ways(
    tmp_path: Path,
) -> None:
    config = front_config(tmp_path, limits={"max_concurrent_calls": 4, "media_timeout": 2.0})
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config) as node, RawUac(node.sip_port) as uac:
        front = f"{HOST}:{node.sip_port}"
        worker = f"{HOST}:{node.worker_port(1)}"
        # The caller hangs up: its BYE follows the Record-Route set through the front.
        dialog, final = uac.call()
        assert worker in final.header("contact")  # the dialog belongs to the worker...
        assert any(front in entry for entry in dialog.route_set)  # ...by way of the front
        wait_answered(db, dialog.call_id)
        uac.bye(dialog, final)
        row = call_row(db, dialog.call_id)
        assert (row["end_reason"], row["hangup_by"]) == ("normal", "caller")

        # The worker hangs up (no RTP for 2 s): its BYE comes to the caller from the front.
        dialog, final = uac.call()
        bye = uac.wait_request("BYE", dialog, timeout=20)
        uac.answer(bye)
        assert bye.header("via").startswith(f"SIP/2.0/UDP {front};")
        assert 'text="media_timeout"' in bye.header("reason")
        row = call_row(db, dialog.call_id)
        assert (row["end_reason"], row["hangup_by"]) == ("media_timeout", "gateway")

        # A number nobody answers: 404 from the front, which the worker never sees.
        unrouted = uac.invite(to="+19990000000")
        answer = uac.wait_final(unrouted)
        assert answer.status == 404 and answer.header("server") == "sipedge"
        uac.ack(unrouted, answer)
        node.wait_log(f"event=front_refused sip_call_id={unrouted.call_id} ")
        assert not worker_saw(node, unrouted.call_id)


def test_sources_no_trunk_allows_get_403_from_the_front(tmp_path: Path) -> None:
    config = front_config(tmp_path)
    config["trunks"][0]["allowed_ips"] = ["127.0.0.5/32"]
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config) as node:
        with RawUac(node.sip_port, host="127.0.0.5") as carrier:
            dialog, final = carrier.call()  # the worker takes it, from the front's address
            wait_answered(db, dialog.call_id)
            carrier.bye(dialog, final)
            assert call_row(db, dialog.call_id)["trunk"] == "loopback"
        with RawUac(node.sip_port, host="127.0.0.6") as stranger:
            refused = stranger.invite()
            answer = stranger.wait_final(refused)
            stranger.ack(refused, answer)
        assert answer.status == 403
        node.wait_log(f"event=front_refused sip_call_id={refused.call_id} source=127.0.0.6 "
                      "code=403 reason=source_not_allowed")  # fmt: skip
        assert not worker_saw(node, refused.call_id)


def blast(host: str, port: int, rate: float, seconds: float) -> tuple[int, Counter[int]]:
    """INVITEs to the routed number at `rate` per second from `host`, never ACKed or
    retransmitted (a flood, not a caller); returns how many were sent and their final
    answers (one per INVITE: a 200 is retransmitted while it waits for the ACK)."""
    finals: dict[str, int] = {}
    sent = 0
    with RawUac(port, host=host) as flooder:

        def collect(timeout: float) -> bool:
            message = flooder.recv(timeout)
            if message is not None and message.is_response and message.status >= 200:
                finals.setdefault(message.header("call-id"), message.status)
            return message is not None

        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            while sent < elapsed * rate:
                flooder.invite()
                sent += 1
            while collect(0.001):
                pass
        while collect(0.5):
            pass
    return sent, Counter(finals.values())


def test_a_flooding_source_is_dropped_at_the_front_while_another_is_answered(
    tmp_path: Path,
) -> None:
    api_port = free_port("tcp")
    config = front_config(
        tmp_path,
        limits={"max_concurrent_calls": 4, "max_unconfirmed_per_source": 2, "ack_timeout": 2.0},
    )
    config["api"] = {"enabled": True, "listen": HOST, "port": api_port, "api_keys": []}
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config) as node:
        worker = re.findall(r"event=worker_ready worker=1 pid=(\d+)", node.log())
        result: dict[str, Any] = {}
        flood = threading.Thread(
            target=lambda: result.update(flood=blast("127.0.0.7", node.sip_port, 300, 6.0))
        )
        flood.start()
        answered = []
        with RawUac(node.sip_port, host="127.0.0.8") as caller:
            # A caller's pace, not a load test: back-to-back calls drain a worker's media
            # sockets by themselves (closed ones return to pjlib's free list only later).
            while flood.is_alive():
                began = time.monotonic()
                dialog, final = caller.call()
                wait_answered(db, dialog.call_id)
                caller.bye(dialog, final)
                answered.append(dialog.call_id)
                time.sleep(max(0.0, began + 0.25 - time.monotonic()))
        flood.join()
        sent, finals = result["flood"]
        assert sent >= 1500
        # Most of the flood got no answer at all: pike dropped it once the source was hot.
        # What got through was rate-limited (503) or held at most 2 calls awaiting ACK.
        assert sum(finals.values()) < sent / 2, finals
        assert finals[200] <= 4, finals
        assert len(answered) >= 3  # every call of the other source went through (call asserts)
        for call_id in answered:
            assert call_row(db, call_id)["end_reason"] == "normal"
        dropping = [line for line in node.log().splitlines() if "front_flood_dropping" in line]
        assert len(dropping) == 1 and "source=127.0.0.7" in dropping[0], dropping
        assert re.findall(r"event=worker_ready worker=1 pid=(\d+)", node.log()) == worker
        metrics = httpx.get(f"http://{HOST}:{api_port}/metrics", timeout=5).text
        dropped = re.search(r"^sipedge_front_flood_dropped_total (\d+)$", metrics, re.M)
        assert dropped is not None and int(dropped.group(1)) > sent / 2, metrics
        assert 'sipedge_front_worker_active{worker="1"} 1' in metrics
        health = httpx.get(f"http://{HOST}:{api_port}/health", timeout=5).json()
        assert health["checks"]["sip_front"] == "ok"
        assert health["checks"]["sip_front_workers"] == "1/1 active"


def test_registration_and_calls_for_the_aor_go_through_the_front(tmp_path: Path) -> None:
    """REGISTER leaves through the front with the front's address in Contact, so the
    registrar's INVITEs for the AOR come to the front, which dispatches them."""
    kam = Kamailio(users={"alice": "secret"}, workdir=tmp_path / "kam").start()
    try:
        trunks = [{"id": "carrier", "register": True, "registrar": f"sip:{HOST}:{kam.port}",
                   "username": "alice", "password": "${ALICE_PW}", "expires": 60,
                   "allowed_ips": ["127.0.0.0/8"]}]  # fmt: skip
        config = front_config(tmp_path, trunks=trunks)
        db = config["storage"]["path"]
        node = NodeProcess(tmp_path, config, env={"ALICE_PW": "secret"})
        with node, MqttWatch(node.mqtt_port) as mq:
            mq.wait(
                lambda: (mq.retained("/trunks/carrier/state") or {}).get("state") == "registered",
                what="trunk registered through the front",
            )
            with RawUac(kam.port) as caller:  # to the registrar, for alice's AOR
                dialog = caller.invite(to="+15550100", ruri_user="alice")
                final = caller.wait_final(dialog)
                assert final.status == 200, final.first_line
                caller.ack(dialog, final)
                assert any(f"{HOST}:{node.sip_port}" in rr for rr in dialog.route_set)
                wait_answered(db, dialog.call_id)
                caller.bye(dialog, final)
            assert call_row(db, dialog.call_id)["trunk"] == "carrier"
    finally:
        kam.stop()


def test_outbound_calls_leave_from_the_fronts_address(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
        carrier.bind((HOST, 0))
        carrier.settimeout(10)
        port = carrier.getsockname()[1]
        config = front_config(tmp_path, trunks=trunk_to(port))
        db = config["storage"]["path"]
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
            reply = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})
            data, source = carrier.recvfrom(65535)
            invite = SipMessage(data.decode())
            assert invite.method == "INVITE"
            assert source == (HOST, node.sip_port)  # the carrier sees the front, not a worker
            assert invite.header("via").startswith(f"SIP/2.0/UDP {HOST}:{node.sip_port};")
            assert invite.header("record-route")  # in-dialog requests come back the same way
            carrier.sendto(response_to(invite), source)
            call_id = reply["data"]["id"]
            failed = mq.wait_event("call.failed", call_id)
            assert failed["data"]["sip_code"] == 486
            assert call_row(db, invite.header("call-id"))["end_reason"] == "busy"


def kamailio_pids(node: NodeProcess) -> list[int]:
    """The front's main process: the node's child running kamailio."""
    assert node.proc is not None
    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
    main = [int(c) for c in children if b"kamailio" in Path(f"/proc/{c}/cmdline").read_bytes()]
    return main


def test_a_killed_front_is_restarted_and_a_call_in_progress_still_ends(tmp_path: Path) -> None:
    config = front_config(tmp_path)
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        dialog, final = uac.call()
        wait_answered(db, dialog.call_id)
        [front] = kamailio_pids(node)
        os.kill(front, signal.SIGKILL)
        node.wait_log("event=front_restarted", timeout=20)
        [again] = kamailio_pids(node)
        assert again != front
        # The BYE finds its way by the Record-Route set it carries, not by the front's state.
        uac.bye(dialog, final)
        row = call_row(db, dialog.call_id)
        assert (row["end_reason"], row["hangup_by"]) == ("normal", "caller")
        next_call, next_ok = uac.call()
        wait_answered(db, next_call.call_id)
        uac.bye(next_call, next_ok)
        assert "event=front_died" in node.log() and "worker_died" not in node.log()


def test_sigterm_makes_the_front_refuse_new_calls_while_the_worker_drains(tmp_path: Path) -> None:
    config = front_config(tmp_path, node={"id": "test-node", "drain_timeout": 3})
    db = config["storage"]["path"]
    node = NodeProcess(tmp_path, config, log_level="INFO").start()
    try:
        with RawUac(node.sip_port) as uac:
            dialog, final = uac.call()
            wait_answered(db, dialog.call_id)
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            node.wait_log("event=draining")
            refused = uac.invite()
            answer = uac.wait_final(refused)
            uac.ack(refused, answer)
            assert answer.status == 503 and answer.header("retry-after") == "5"
            node.wait_log("reason=draining")
            uac.bye(dialog, final)  # in-dialog requests still reach the worker
            assert call_row(db, dialog.call_id)["end_reason"] == "normal"
            assert node.proc.wait(30) == 0
    finally:
        node.stop()
    assert "event=front_stopped" in node.log()
