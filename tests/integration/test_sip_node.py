"""A real node (`sipedge run`) against real SIP peers: SIPp, Kamailio, baresip; events over MQTT."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config, trunk_to
from tests.integration.peers import HOST, Kamailio, Sipp

pytestmark = pytest.mark.integration


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_inbound_calls_complete_and_calls_over_capacity_get_503(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        # Five calls at once, each holding ~3.2 s of RTP: the pjsua2 build holds 4 calls, so 4
        # complete and the 5th gets 503 + Retry-After (not pjsua's own 486 Busy Here).
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            calls=5,
            rate=50,
            limit=5,
            workdir=tmp_path / "uac",
        ).run(60)
        assert res.successful == 4, res.errors
        assert res.failed == 1
        assert res.errors.count("SIP/2.0 503 Service Unavailable") == 1
        assert "Retry-After: 5" in res.errors
        assert "SIP/2.0 486" not in res.errors  # (a bare "486" matches SIPp's timestamps)
        completed = mq.wait(
            lambda: (
                [e for e in mq.events() if e["type"] == "call.completed"]
                if len([e for e in mq.events() if e["type"] == "call.completed"]) == 4
                else None
            ),
            what="4 call.completed",
        )
        for done in completed:
            seq = mq.events(done["call_id"])
            assert types(seq) == [
                "call.incoming", "call.answered", "call.quality", "call.completed"
            ]  # fmt: skip
            assert [e["seq"] for e in seq] == [1, 2, 3, 4]
            incoming = seq[0]["data"]
            assert incoming["to"] == "+15550100" and incoming["trunk"] == "loopback"
            assert incoming["agent"] == "echo" and incoming["variables"] == {"campaign": "test"}
            assert seq[1]["data"]["codec"].startswith("PCMU")
            assert done["data"]["hangup_by"] == "caller" and done["data"]["reason"] == "normal"
            assert 2.5 < done["data"]["duration"] < 10
        status = mq.retained("/test-node/status")
        assert status is not None and status["capacity"] == 4
        assert node.stop() == 0


def test_unknown_number_gets_404_and_unknown_source_403(tmp_path: Path) -> None:
    config = base_config(tmp_path)
    with NodeProcess(tmp_path, config) as node:
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15559999",
            workdir=tmp_path / "404",
        ).run(20)
        assert res.failed == 1 and "SIP/2.0 404" in res.errors
    config = base_config(
        tmp_path,
        trunks=[{"id": "elsewhere", "allowed_ips": ["10.9.9.9/32"]}],
        numbers=[{"number": "+15550100", "agent": "echo"}],
    )
    with NodeProcess(tmp_path, config) as node:
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "403",
        ).run(20)
        assert res.failed == 1 and "SIP/2.0 403" in res.errors


def test_outbound_call_is_answered_and_hung_up_by_the_control_plane(tmp_path: Path) -> None:
    uas = Sipp("uas.xml", calls=1, workdir=tmp_path / "uas").start()
    try:
        config = base_config(tmp_path, trunks=trunk_to(uas.port, caller_id="+15550001"))
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
            reply = mq.command(
                "call.originate",
                {"to": "+15551230000", "agent": "echo", "variables": {"lead": "42"}},
            )
            call_id = reply["data"]["id"]
            assert reply["data"]["status"] == "dialing"
            mq.wait_event("call.answered", call_id)
            hung = mq.command("call.hangup", {"call_id": call_id})
            assert hung == {"data": {"id": call_id, "status": "hanging_up"}}
            done = mq.wait_event("call.completed", call_id)
            assert done["data"]["hangup_by"] == "control_plane"
            assert types(mq.events(call_id)) == [
                "call.placed",
                "call.ringing",
                "call.answered",
                "call.completed",
            ]
            placed = mq.events(call_id)[0]["data"]
            assert placed["to"] == "+15551230000" and placed["variables"] == {"lead": "42"}
        result = uas.wait(10)
        assert result.successful == 1, result.errors
    finally:
        uas.stop()


def test_outbound_busy_ring_timeout_and_refused_destination(tmp_path: Path) -> None:
    busy = Sipp("uas_busy.xml", calls=1, workdir=tmp_path / "busy").start()
    ring = Sipp("uas_ring_forever.xml", calls=1, workdir=tmp_path / "ring").start()
    try:
        trunks = trunk_to(busy.port) + [
            {"id": "ringer", "proxy": f"sip:{HOST}:{ring.port}", "allowed_destinations": ["+1555"]}
        ]
        with (
            NodeProcess(tmp_path, base_config(tmp_path, trunks=trunks)) as node,
            MqttWatch(node.mqtt_port) as mq,
        ):
            call = mq.command("call.originate", {"to": "+15551230001", "agent": "echo"})["data"]
            failed = mq.wait_event("call.failed", call["id"])
            assert failed["data"]["reason"] == "busy" and failed["data"]["sip_code"] == 486
            assert types(mq.events(call["id"])) == ["call.placed", "call.failed"]

            call = mq.command(
                "call.originate",
                {"to": "+15551230002", "agent": "echo", "trunk": "ringer", "ring_timeout": 2},
            )["data"]
            failed = mq.wait_event("call.failed", call["id"])
            assert failed["data"]["reason"] == "no_answer"

            refused = mq.command(
                "call.originate", {"to": "+4420700000", "agent": "echo", "trunk": "ringer"}
            )
            assert refused["error"]["code"] == "invalid_parameter"
            assert "allowed_destinations" in refused["error"]["message"]
        assert busy.wait(10).successful == 1
        ring_result = ring.wait(10)
        assert ring_result.successful == 1, ring_result.errors  # it saw our CANCEL
    finally:
        busy.stop()
        ring.stop()


def test_trunk_registers_with_digest_and_backs_off_on_wrong_password(tmp_path: Path) -> None:
    kam = Kamailio(users={"alice": "secret"}, workdir=tmp_path / "kam").start()
    try:
        trunks = [
            {
                "id": "good",
                "register": True,
                "registrar": f"sip:{HOST}:{kam.port}",
                "username": "alice",
                "password": "${GOOD_PW}",
                "expires": 10,
                "retry_min": 0.5,
                "retry_max": 2,
            },
            {
                "id": "bad",
                "register": True,
                "registrar": f"sip:{HOST}:{kam.port}",
                "username": "alice",
                "password": "${BAD_PW}",
                "expires": 10,
                "retry_min": 0.5,
                "retry_max": 2,
            },
        ]
        env = {"GOOD_PW": "secret", "BAD_PW": "not-the-password"}
        node = NodeProcess(tmp_path, base_config(tmp_path, trunks=trunks, numbers=[]), env=env)
        with node, MqttWatch(node.mqtt_port) as mq:

            def trunk_events(trunk: str) -> list[dict[str, Any]]:
                return [p for t, p in mq.messages if t.endswith(f"/trunks/{trunk}/events")]

            mq.wait(
                lambda: any(e["type"] == "trunk.registered" for e in trunk_events("good")),
                what="good trunk registered",
            )
            # The wrong password is refused, and retried with backoff (several attempts).
            mq.wait(
                lambda: (
                    len(
                        [e for e in trunk_events("bad") if e["type"] == "trunk.registration_failed"]
                    )
                    >= 2
                ),
                what="bad trunk retried",
            )
            failure = [e for e in trunk_events("bad") if e["type"] == "trunk.registration_failed"][
                0
            ]
            assert failure["data"]["sip_code"] in (401, 403)
            assert failure["data"]["next_retry_at"] is not None
            state = mq.retained("/trunks/good/state")
            assert state is not None and state["state"] == "registered"

            # Registrar restart: the next refresh fails or re-registers; either way we end up
            # registered again with the new registrar process.
            registered_before = len(
                [e for e in trunk_events("good") if e["type"] == "trunk.registered"]
            )
            kam.restart()
            mq.wait(
                lambda: (
                    len([e for e in trunk_events("good") if e["type"] == "trunk.registered"])
                    > registered_before
                ),
                timeout=30,
                what="re-registered after registrar restart",
            )
            log = node.log()
            assert "secret" not in log and "not-the-password" not in log
            assert node.stop() == 0
        assert "unregister" in node.log()
    finally:
        kam.stop()


def test_baresip_calls_in_and_hangs_up(tmp_path: Path, baresip_factory: Any) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        phone = baresip_factory(user="bob")
        phone.dial(f"sip:+15550100@{HOST}:{node.sip_port}")
        phone.wait_established()
        answered = mq.wait_event("call.answered")
        phone.hangup()
        done = mq.wait_event("call.completed", answered["call_id"])
        assert done["data"]["hangup_by"] == "caller"


def test_sigterm_drains_active_calls_then_exits_zero(tmp_path: Path) -> None:
    config = base_config(tmp_path, node={"id": "test-node", "drain_timeout": 3})
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        caller = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            duration_ms=20000,
            workdir=tmp_path / "long",
        ).start()
        answered = mq.wait_event("call.answered")
        node.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        # While draining, a new call is refused with 503.
        late = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "late",
        ).run(20)
        assert late.failed == 1 and "503" in late.errors
        done = mq.wait_event("call.completed", answered["call_id"], timeout=20)
        assert done["data"]["hangup_by"] == "gateway"
        assert node.stop() == 0
        caller.stop()


def test_hold_codec_change_cancel_max_duration_and_tcp(tmp_path: Path) -> None:
    config = base_config(
        tmp_path,
        numbers=[
            {"number": "+15550100", "agent": "echo"},
            {"number": "+15550101", "agent": "echo", "answer_delay_ms": 5000},
        ],
        limits={"max_concurrent_calls": 10, "max_call_duration": 4},
    )
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        # re-INVITEs: hold (sendonly), then resume with a codec change to PCMA.
        res = Sipp(
            "uac_reinvite.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "reinvite",
        ).run(30)
        assert res.successful == 1, res.errors
        first = mq.wait_event("call.completed")
        assert first["data"]["hangup_by"] == "caller"

        # CANCEL while the number is still ringing (it answers only after 5 s).
        res = Sipp(
            "uac_cancel.xml",
            remote=(HOST, node.sip_port),
            service="+15550101",
            workdir=tmp_path / "cancel",
        ).run(30)
        assert res.successful == 1, res.errors
        cancelled = mq.wait_event("call.failed", reason="cancelled")
        assert [e["type"] for e in mq.events(cancelled["call_id"])] == [
            "call.incoming",
            "call.failed",
        ]
        assert cancelled["data"]["sip_code"] == 487

        # A call longer than max_call_duration is ended by the gateway.
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            duration_ms=8000,
            workdir=tmp_path / "long",
        ).run(30)
        assert res.failed == 1  # SIPp did not expect our BYE
        ended = mq.wait_event("call.completed", reason="timeout")
        assert ended["data"]["hangup_by"] == "gateway"
        assert 3.5 < ended["data"]["duration"] < 6

        # SIP over TCP.
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            extra=["-t", "t1"],
            workdir=tmp_path / "tcp",
        ).run(30)
        assert res.successful == 1, res.errors


def test_a_killed_sip_worker_ends_its_calls_and_is_replaced(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        caller = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            duration_ms=20000,
            workdir=tmp_path / "long",
        ).start()
        answered = mq.wait_event("call.answered")
        worker_pid = int(
            node.wait_log("event=worker_ready")
            .split("event=worker_ready worker=1 pid=")[1]
            .split()[0]
        )
        os.kill(worker_pid, signal.SIGKILL)
        ended = mq.wait_event("call.completed", answered["call_id"])
        assert ended["data"]["reason"] == "worker_lost" and ended["data"]["hangup_by"] == "gateway"
        caller.stop()
        node.wait_log("event=worker_died")
        node.wait_log("event=worker_ready", count=2)
        res = Sipp(
            "uac_pcap.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "after",
        ).run(30)
        assert res.successful == 1, res.errors
        assert node.stop() == 0


def test_outbound_early_media_and_digest_auth_through_a_proxy(tmp_path: Path) -> None:
    early = Sipp("uas_early_media.xml", calls=1, workdir=tmp_path / "early").start()
    callee = Sipp("uas.xml", calls=1, workdir=tmp_path / "callee").start()
    kam = Kamailio(
        users={"alice": "secret"},
        auth_invite=True,
        forward_to=f"{HOST}:{callee.port}",
        workdir=tmp_path / "kam",
    ).start()
    try:
        trunks = trunk_to(early.port) + [
            {
                "id": "auth",
                "proxy": f"sip:{HOST}:{kam.port}",
                "username": "alice",
                "password": "${PW}",
                "allowed_destinations": ["+1555"],
            },
            {
                "id": "badauth",
                "proxy": f"sip:{HOST}:{kam.port}",
                "username": "alice",
                "password": "${BAD_PW}",
                "allowed_destinations": ["+1555"],
            },
        ]
        env = {"PW": "secret", "BAD_PW": "wrong"}
        node = NodeProcess(tmp_path, base_config(tmp_path, trunks=trunks), env=env)
        with node, MqttWatch(node.mqtt_port) as mq:
            call_id = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})["data"][
                "id"
            ]
            mq.wait_event("call.ringing", call_id, early_media=True)
            mq.wait_event("call.answered", call_id)
            mq.command("call.hangup", {"call_id": call_id})
            mq.wait_event("call.completed", call_id)

            # 407 from the proxy is answered with digest credentials.
            call_id = mq.command(
                "call.originate", {"to": "+15551230001", "agent": "echo", "trunk": "auth"}
            )["data"]["id"]
            mq.wait_event("call.answered", call_id)
            mq.command("call.hangup", {"call_id": call_id})
            mq.wait_event("call.completed", call_id)

            call_id = mq.command(
                "call.originate", {"to": "+15551230002", "agent": "echo", "trunk": "badauth"}
            )["data"]["id"]
            failed = mq.wait_event("call.failed", call_id)
            # Kamailio answers a wrong digest with 403 Forbidden (not another 407), which is
            # indistinguishable from any other refusal: reported as rejected with its code.
            assert failed["data"]["reason"] == "rejected"
            assert failed["data"]["sip_code"] == 403
        assert early.wait(10).successful == 1
        assert callee.wait(10).successful == 1
    finally:
        kam.stop()
        early.stop()
        callee.stop()
