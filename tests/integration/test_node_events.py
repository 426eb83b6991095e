"""Events and commands of a real node over a real mosquitto: DTMF both ways, transfer,
idempotent originate, command errors, and nothing lost across broker outages and kill -9."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest

from gateway.node.broker import EmbeddedBroker
from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config, trunk_to
from tests.integration.peers import HOST, RtpSink, Sipp

pytestmark = pytest.mark.integration


def test_dtmf_received_as_rfc4733_and_sip_info_becomes_events(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        res = Sipp(
            "uac_dtmf.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "rfc4733",
        ).run(30)
        assert res.successful == 1, res.errors
        call_id = mq.wait_event("call.completed")["call_id"]
        digits = [e["data"] for e in mq.events(call_id) if e["type"] == "call.dtmf"]
        assert "".join(d["digit"] for d in digits) == "1234#"
        assert {d["method"] for d in digits} == {"rfc4733"}

        res = Sipp(
            "uac_dtmf_info.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "info",
        ).run(30)
        assert res.successful == 1, res.errors
        mq.wait(lambda: len([e for e in mq.events() if e["type"] == "call.completed"]) == 2)
        info = [
            e["data"] for e in mq.events() if e["type"] == "call.dtmf" and e["call_id"] != call_id
        ]
        assert info and {d["method"] for d in info} == {"sip_info"}


def test_send_dtmf_goes_out_as_rfc4733_and_commands_report_errors(tmp_path: Path) -> None:
    with RtpSink() as sink:
        uas = Sipp(
            "uas_sink_silent.xml", calls=1, keys={"rtp_port": sink.port}, workdir=tmp_path / "uas"
        ).start()
        try:
            config = base_config(tmp_path, trunks=trunk_to(uas.port))
            with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
                call_id = mq.command("call.originate", {"to": "+15551234567", "agent": "echo"})[
                    "data"
                ]["id"]
                mq.wait_event("call.answered", call_id)
                reply = mq.command("call.send_dtmf", {"call_id": call_id, "digits": "59"})
                assert reply == {"data": {"id": call_id, "digits": "59"}}

                def events_seen() -> set[int]:
                    return {
                        p.payload[0]
                        for p in sink.packets
                        if p.payload_type == 101 and len(p.payload) >= 4
                    }

                mq.wait(lambda: events_seen() >= {5, 9}, what="RFC 4733 events 5 and 9")
                end = [p for p in sink.packets if p.payload_type == 101 and p.payload[1] & 0x80]
                assert end, "no end-of-event packet"
                assert struct.unpack("!H", end[0].payload[2:4])[0] > 0  # a duration

                # Error paths: each a precise error, never silence.
                bad_json = mq.command("call.hangup", "{not json")
                assert bad_json["error"]["code"] == "invalid_json"
                missing = mq.command("call.send_dtmf", {"call_id": call_id})
                assert missing["error"]["code"] == "invalid_parameter"
                unknown = mq.command("call.hangup", {"call_id": "call_" + "0" * 24})
                assert unknown["error"]["code"] == "resource_not_found"
                nope = mq.command("call.explode", {})
                assert nope["error"]["code"] == "resource_not_found"
                bad_digits = mq.command("call.send_dtmf", {"call_id": call_id, "digits": "x"})
                assert bad_digits["error"]["code"] == "invalid_parameter"

                assert mq.command("call.hangup", {"call_id": call_id})["data"]["id"] == call_id
                mq.wait_event("call.completed", call_id)
        finally:
            uas.stop()


def test_originate_is_idempotent_and_conflicting_replay_is_refused(tmp_path: Path) -> None:
    uas = Sipp("uas.xml", calls=None, workdir=tmp_path / "uas").start()
    try:
        config = base_config(tmp_path, trunks=trunk_to(uas.port))
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
            body = {"to": "+15551230000", "agent": "echo", "idempotency_key": "order-77"}
            first = mq.command("call.originate", body)["data"]
            mq.wait_event("call.answered", first["id"])
            again = mq.command("call.originate", body)["data"]
            assert again["id"] == first["id"] and again["replayed"] is True
            other = mq.command("call.originate", {**body, "to": "+15551239999"})
            assert other["error"]["code"] == "conflict"
            mq.command("call.hangup", {"call_id": first["id"]})
            mq.wait_event("call.completed", first["id"])
            placed = [e for e in mq.events() if e["type"] == "call.placed"]
            assert len(placed) == 1  # dialled once
    finally:
        uas.stop()


def test_blind_transfer_sends_refer_and_reports_the_notify_outcome(tmp_path: Path) -> None:
    uas = Sipp("uas_refer.xml", calls=1, workdir=tmp_path / "uas").start()
    try:
        config = base_config(tmp_path, trunks=trunk_to(uas.port))
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
            call_id = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})["data"][
                "id"
            ]
            mq.wait_event("call.answered", call_id)
            reply = mq.command("call.transfer", {"call_id": call_id, "target": "+15557654321"})
            assert reply["data"]["status"] == "requested"
            assert reply["data"]["target"].startswith("sip:+15557654321@")
            mq.wait_event("call.transfer", call_id, status="completed", sip_code=200)
            done = mq.wait_event("call.completed", call_id)
            assert done["data"]["reason"] == "transferred"
        assert uas.wait(10).successful == 1
    finally:
        uas.stop()


def _store_event_ids(db: Path) -> dict[str, list[tuple[int, str]]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT call_id, seq, id FROM events WHERE call_id IS NOT NULL ORDER BY rowid"
        ).fetchall()
    out: dict[str, list[tuple[int, str]]] = {}
    for call_id, seq, event_id in rows:
        out.setdefault(call_id, []).append((seq, event_id))
    return out


def test_nothing_is_lost_across_a_broker_outage_and_a_kill_9(tmp_path: Path) -> None:
    with EmbeddedBroker(persistence=True) as broker:
        config = base_config(
            tmp_path,
            mqtt={"embedded": False, "port": broker.port, "host": HOST, "prefix": "sipedge"},
        )
        node = NodeProcess(tmp_path, config).start()
        with MqttWatch(broker.port, persistent=True) as mq:
            mq.wait(lambda: mq.retained("/test-node/status"), what="node status")
            broker.stop()
            # Calls start and end while the broker is down.
            for batch in ("a", "b"):
                res = Sipp(
                    "uac_pcap.xml",
                    remote=(HOST, node.sip_port),
                    service="+15550100",
                    calls=2,
                    rate=10,
                    limit=2,
                    workdir=tmp_path / batch,
                ).run(30)
                assert res.successful == 2, res.errors
            broker.start()
            stored = _store_event_ids(Path(config["storage"]["path"]))
            assert len(stored) == 4
            for events in stored.values():
                mq.wait(
                    lambda ev=events: {e["id"] for e in mq.events()} >= {i for _, i in ev},
                    timeout=30,
                    what="every stored event delivered",
                )

            # Broker down again, a call completes, then the node dies by SIGKILL before it
            # could publish. Restarted after the broker is back, it replays its outbox.
            broker.stop()
            res = Sipp(
                "uac_pcap.xml",
                remote=(HOST, node.sip_port),
                service="+15550100",
                workdir=tmp_path / "c",
            ).run(30)
            assert res.successful == 1
            db = Path(config["storage"]["path"])
            mq.wait(
                # 5 calls: incoming, answered, quality (at the end), completed
                lambda: sum(len(v) for v in _store_event_ids(db).values()) == 20,
                what="third call's events in the store",
            )
            node.kill()
            broker.start()
            restarted = NodeProcess(tmp_path, config).start()
            try:
                stored = _store_event_ids(Path(config["storage"]["path"]))
                assert len(stored) == 5
                every = {i for events in stored.values() for _, i in events}
                mq.wait(
                    lambda: {e["id"] for e in mq.events()} >= every,
                    timeout=30,
                    what="outbox replayed after kill -9",
                )
                for call_id, events in stored.items():
                    seen = mq.events(call_id)
                    by_id = {e["id"]: e for e in seen}
                    # In order per call (first sighting of each), duplicates share the same id.
                    first_seen: list[int] = []
                    for e in seen:
                        if e["seq"] not in first_seen:
                            first_seen.append(e["seq"])
                    assert first_seen == sorted(first_seen), (call_id, first_seen)
                    assert [by_id[i]["seq"] for _, i in events] == [s for s, _ in events]
                    assert [by_id[i]["type"] for _, i in events] == [
                        "call.incoming",
                        "call.answered",
                        "call.quality",
                        "call.completed",
                    ]
            finally:
                assert restarted.stop() == 0
