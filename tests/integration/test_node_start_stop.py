"""What an operator sees when a real node starts and stops: its log and its retained status."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config

pytestmark = pytest.mark.integration


def test_the_retained_status_has_the_capacity_right_after_start(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, base_config(tmp_path))
    with node, MqttWatch(node.mqtt_port) as mq:
        # Before any call: the retained status already knows what the worker holds.
        status = mq.wait(lambda: mq.retained("/test-node/status"), what="retained status")
        assert status["capacity"] == 4 and status["engine_call_limit"] == 4, status
        assert status["active_calls"] == 0 and status["draining"] is False
    assert node.stop() == 0


def test_draining_is_in_the_retained_status_while_calls_are_still_up(tmp_path: Path) -> None:
    config = base_config(tmp_path, node={"id": "test-node", "drain_timeout": 3})
    # The trunk dials the node itself: one originate makes an outbound and an inbound call.
    config["trunks"][0]["proxy"] = f"sip:127.0.0.1:{config['sip']['port']}"
    node = NodeProcess(tmp_path, config)
    with node, MqttWatch(node.mqtt_port) as mq:
        call_id = mq.command("call.originate", {"to": "+15550100", "agent": "echo"})["data"]["id"]
        mq.wait_event("call.answered", call_id)
        mq.wait(
            lambda: (mq.retained("/test-node/status") or {}).get("active_calls") == 2,
            what="two live calls in the status",
        )
        assert node.proc is not None
        node.proc.send_signal(signal.SIGTERM)
        draining = mq.wait(
            lambda: next(
                (
                    p
                    for t, p in mq.messages
                    if t.endswith("/test-node/status") and p.get("draining")
                ),
                None,
            ),
            what="draining in the retained status",
        )
        assert draining["active_calls"] == 2, draining  # published before the hang-ups
        done = mq.wait_event("call.completed", call_id)
        assert done["ts"] > draining["ts"]
    assert node.stop() == 0
    # base_config asks for 10 calls at once: the start says that one worker holds 4.
    warning = "WARNING sipedge.node event=capacity_capped max_concurrent_calls=10 capacity=4 "
    assert warning in node.log()
