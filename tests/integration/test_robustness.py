"""What a caller or an attacker sends cannot kill the SIP worker, hold its slots, or make a call
record lie: INVITE floods, never-ACKed calls, silent media, unreachable agents, dead workers."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.node.broker import EmbeddedBroker
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import free_port
from tests.integration.rawsip import RawUac

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def call_row(db: str, sip_call_id: str, ended: bool = True, timeout: float = 20.0) -> Any:
    """The call record with this SIP Call-ID, once it has ended (polls the node's store)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM calls WHERE sip_call_id=?", (sip_call_id,)).fetchone()
        if row is not None and (not ended or row["ended_at"] is not None):
            return row
        time.sleep(0.05)
    raise AssertionError(f"no {'ended ' if ended else ''}call with Call-ID {sip_call_id}")


def events_of(db: str, call_id: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT type FROM events WHERE call_id=? ORDER BY seq", (call_id,))
        return [r[0] for r in rows]


def worker_pids(node: NodeProcess) -> list[str]:
    return re.findall(r"event=worker_ready worker=\d+ pid=(\d+)", node.log())


def flood(uac: RawUac, count: int, to: str) -> Counter[int]:
    """Send `count` INVITEs at once, then collect one final answer per INVITE, retransmitting
    unanswered ones every 0.5 s as a UAC does over UDP (Timer A)."""
    sent = {d.call_id: d for d in (uac.invite(to=to) for _ in range(count))}
    finals: Counter[int] = Counter()
    answered: set[str] = set()
    deadline = time.monotonic() + 15
    resend_at = time.monotonic() + 0.5
    while len(answered) < len(sent) and time.monotonic() < deadline:
        if time.monotonic() >= resend_at:
            for call_id in sent.keys() - answered:
                uac.send(uac.invite_text(sent[call_id]))
            resend_at = time.monotonic() + 0.5
        message = uac.recv(0.1)
        if message is None:
            continue
        call_id = message.header("call-id")
        if message.is_response and message.status >= 200 and call_id not in answered:
            answered.add(call_id)
            finals[message.status] += 1
            dialog = sent[call_id]
            dialog.to_header = message.header("to")
            uac.ack(dialog, message)
    return finals


def test_invite_floods_are_answered_before_any_call_exists_and_the_worker_lives(
    tmp_path: Path,
) -> None:
    """~35 refused INVITEs used to abort the worker: pjsua made RTP sockets for each before
    routing refused it, and the wheel's 64-key ioqueue asserts when it runs out."""
    config = base_config(tmp_path)
    config["trunks"][0]["allowed_ips"] = ["127.0.0.1/32", "127.0.0.5/32"]
    api_port = free_port("tcp")
    config["api"] = {"enabled": True, "listen": HOST, "port": api_port, "api_keys": []}
    with NodeProcess(tmp_path, config, log_level="INFO") as node:
        before = worker_pids(node)
        with RawUac(node.sip_port) as local, RawUac(node.sip_port, host="127.0.0.2") as stranger:
            unrouted = flood(local, 100, to="+19990000000")
            foreign = flood(stranger, 100, to="+15550100")
        assert sum(unrouted.values()) == 100 and set(unrouted) <= {404, 503}, unrouted
        assert unrouted[404] >= 1
        assert sum(foreign.values()) == 100 and set(foreign) <= {403, 503}, foreign
        assert foreign[403] >= 1
        # A real call still goes through, on the same worker (from another source: 127.0.0.1
        # is over its INVITE rate now).
        with RawUac(node.sip_port, host="127.0.0.5") as caller:
            dialog, final = caller.call()
            caller.bye(dialog, final)
        assert worker_pids(node) == before
        assert "worker_exited" not in node.log()
        # Refusals reach the node's metrics batched once a second: wait for them.
        wanted = [
            rf'sipedge_invites_refused_total\{{reason="{reason}"\}} [1-9]'
            for reason in ("number_not_routed", "source_not_allowed")
        ]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = httpx.get(f"http://{HOST}:{api_port}/metrics", timeout=5).text
            if all(re.search(pattern, metrics) for pattern in wanted):
                break
            time.sleep(0.1)
        assert all(re.search(pattern, metrics) for pattern in wanted), metrics


def test_one_source_over_its_invite_rate_gets_503_and_one_log_line(tmp_path: Path) -> None:
    config = base_config(
        tmp_path, limits={"invites_per_second_per_source": 2, "invite_burst_per_source": 5}
    )
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        finals = flood(uac, 40, to="+19990000000")
        assert finals[404] >= 5 and finals[503] >= 30, finals
        log = node.log()
        limited = [line for line in log.splitlines() if "reason=rate_limited" in line]
        assert len(limited) == 1, limited  # one line per source per interval, not per INVITE
        assert "source=127.0.0.1" in limited[0]


def test_a_caller_that_never_acks_is_given_up_on_and_its_slot_freed(tmp_path: Path) -> None:
    config = base_config(tmp_path, limits={"ack_timeout": 1.0, "max_unconfirmed_per_source": 2})
    config["trunks"][0]["allowed_ips"] = ["127.0.0.1/32", "127.0.0.4/32"]
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        held = [uac.invite(), uac.invite()]
        for dialog in held:
            assert uac.wait_final(dialog).status == 200  # and we never ACK
        third = uac.invite()
        assert uac.wait_final(third).status == 503  # one source: bounded unconfirmed calls
        for dialog in held:
            row = call_row(db, dialog.call_id)
            assert row["end_reason"] == "ack_timeout"
            assert row["hangup_by"] == "gateway"
        # Both slots are free again: another caller gets through.
        with RawUac(node.sip_port, host="127.0.0.4") as other:
            dialog, final = other.call()
            other.bye(dialog, final)
            assert call_row(db, dialog.call_id)["end_reason"] == "normal"


def test_a_caller_gone_silent_is_hung_up_for_media_timeout_with_a_reason_header(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path, limits={"media_timeout": 1.5})
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        dialog, final = uac.call()  # SDP offers RTP, none is ever sent
        request = uac.wait_request("BYE", dialog, timeout=20)
        uac.answer(request)
        assert 'text="media_timeout"' in request.header("reason")
        row = call_row(db, dialog.call_id)
        assert row["end_reason"] == "media_timeout"
        assert row["hangup_by"] == "gateway"
        assert row["duration"] >= 1.5


def test_drain_hangs_up_with_reason_drain_and_says_so_in_the_bye(tmp_path: Path) -> None:
    config = base_config(tmp_path, node={"id": "test-node", "drain_timeout": 0})
    db = config["storage"]["path"]
    node = NodeProcess(tmp_path, config, log_level="INFO").start()
    try:
        with RawUac(node.sip_port) as uac:
            dialog, final = uac.call()
            call_row(db, dialog.call_id, ended=False)
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            request = uac.wait_request("BYE", dialog)
            uac.answer(request)
            assert 'text="drain"' in request.header("reason")
            assert request.header("reason").startswith("Q.850;cause=16")
            assert node.proc.wait(30) == 0
    finally:
        node.stop()
    row = call_row(db, dialog.call_id)
    assert row["end_reason"] == "drain"
    assert row["hangup_by"] == "gateway"


def test_the_routed_number_is_recorded_as_to_when_the_request_uri_is_the_trunk_user(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path)
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        dialog, final = uac.call(to="+15550100", ruri_user="trunkuser")
        uac.bye(dialog, final)
        assert call_row(db, dialog.call_id)["to_number"] == "+15550100"


def test_an_unreachable_agent_refuses_the_invite_instead_of_answering_then_hanging_up(
    tmp_path: Path,
) -> None:
    dead = free_port("tcp")
    config = base_config(
        tmp_path,
        agents=[
            {"id": "echo", "type": "echo"},
            {"id": "bot", "type": "twilio-ws", "url": f"ws://{HOST}:{dead}/", "connect_timeout": 2},
        ],
        numbers=[{"number": "+15550100", "agent": "bot"}],
    )
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        dialog = uac.invite()
        final = uac.wait_final(dialog)
        assert final.status == 480  # never a 200 followed by a BYE
        assert not any(m.is_response and m.status == 200 for m in dialog.received)
        uac.ack(dialog, final)
        row = call_row(db, dialog.call_id)
        assert row["end_reason"] == "agent_unavailable"
        assert row["status"] == "failed"
        assert events_of(db, row["id"])[-1] == "call.failed"


def test_calls_of_a_dead_worker_end_with_worker_lost_and_their_real_duration(
    tmp_path: Path,
) -> None:
    config = base_config(tmp_path)
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        dialog, final = uac.call()
        call_row(db, dialog.call_id, ended=False)
        answered = time.time()
        node.wait_log("event=call_answered")
        time.sleep(1.5)  # the call must have lasted: this is the span under test
        os.kill(int(worker_pids(node)[-1]), signal.SIGKILL)
        row = call_row(db, dialog.call_id)
        assert row["end_reason"] == "worker_lost"
        assert row["duration"] >= time.time() - answered - 1.0 - 0.5
        assert row["duration"] >= 1.0


def test_calls_open_at_a_node_kill_end_with_node_restart_at_the_last_heartbeat(
    tmp_path: Path,
) -> None:
    with EmbeddedBroker() as broker:  # outlives the kill, as an external broker would
        config = base_config(tmp_path, mqtt={"embedded": False, "port": broker.port, "host": HOST})
        killed_mid_call(tmp_path, config)


def killed_mid_call(tmp_path: Path, config: dict[str, Any]) -> None:
    db = config["storage"]["path"]
    node = NodeProcess(tmp_path, config, log_level="INFO").start()
    with RawUac(node.sip_port) as uac:
        dialog, final = uac.call()
        call_row(db, dialog.call_id, ended=False)
        time.sleep(4.5)  # two heartbeats (2 s) pass while the call is up
        node.kill()
    again = NodeProcess(tmp_path, config, log_level="INFO").start()
    try:
        row = call_row(db, dialog.call_id)
        assert row["end_reason"] == "node_restart"
        assert row["duration"] >= 2.0  # not 0.0 at answered_at, as it used to be
    finally:
        again.stop()


def test_fast_call_churn_is_refused_with_503_before_the_media_sockets_run_out(
    tmp_path: Path,
) -> None:
    """Closed RTP sockets rejoin pjlib's free list only some time later, so ~30 one-shot calls
    in a row used to abort the worker with one call up; now the excess is answered 503."""
    config = base_config(
        tmp_path, limits={"invites_per_second_per_source": 1000, "invite_burst_per_source": 1000}
    )
    with NodeProcess(tmp_path, config, log_level="INFO") as node, RawUac(node.sip_port) as uac:
        before = worker_pids(node)
        finals: Counter[int] = Counter()
        for _ in range(80):
            finals[uac.short_call()] += 1
        assert set(finals) <= {200, 503} and finals[200] >= 20, finals
        assert worker_pids(node) == before and "worker_exited" not in node.log()
        if finals[503]:
            assert "reason=sockets" in node.log()
