"""A real node dialling where nothing answers at all: the call fails `unreachable`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST, free_port

pytestmark = pytest.mark.integration


def test_a_destination_where_nothing_listens_is_unreachable_not_no_answer(tmp_path: Path) -> None:
    # Nothing listens on either port: over UDP nothing ever comes back (Linux reports no ICMP
    # to an unconnected socket), so the ring timeout ends it; over TCP the connect is refused.
    trunks = [
        {"id": "udp-nowhere", "proxy": f"sip:{HOST}:{free_port('udp')}", "transport": "udp"},
        {"id": "tcp-nowhere", "proxy": f"sip:{HOST}:{free_port('tcp')}", "transport": "tcp"},
    ]
    node = NodeProcess(tmp_path, base_config(tmp_path, trunks=trunks, numbers=[]))
    with node, MqttWatch(node.mqtt_port) as mq:
        for trunk in ("udp-nowhere", "tcp-nowhere"):
            reply = mq.command(
                "call.originate",
                {"to": "+15551230000", "agent": "echo", "trunk": trunk, "ring_timeout": 2},
            )
            call_id = reply["data"]["id"]
            failed = mq.wait_event("call.failed", call_id)
            assert failed["data"]["reason"] == "unreachable", (trunk, failed["data"])
            assert [e["type"] for e in mq.events(call_id)] == ["call.placed", "call.failed"]
    log = node.log()
    assert log.count("event=call_failed") == 2
    assert "reason=no_answer" not in log
