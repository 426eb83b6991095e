"""What an operator sees when a real node starts and stops: its log and its retained status."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import free_port

pytestmark = pytest.mark.integration

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) \S+ ")
SECRETS = {"TRUNK_PW": "trunk-pa55word", "AGENT_TOKEN": "agent-t0ken-value"}


def routing_config(tmp: Path) -> dict[str, Any]:
    return base_config(
        tmp,
        sip={"log_level": 3},  # pjsip's own lines reach the log too (at DEBUG)
        limits={"max_concurrent_calls": 4},  # what one worker holds: no capacity warning
        trunks=[
            {
                "id": "loopback",
                "allowed_ips": ["127.0.0.0/8"],
                "proxy": f"sip:127.0.0.1:{free_port()}",
                "username": "edge",
                "password": "${TRUNK_PW}",
                "allowed_destinations": ["+1555"],
            }
        ],
        numbers=[
            {"number": "+15550100", "agent": "echo", "variables": {"campaign": "spring"}},
            {"number": "+15550111", "agent": "bot", "trunk": "loopback"},
        ],
        agents=[
            {"id": "echo", "type": "echo"},
            {
                "id": "bot",
                "type": "pcm-ws",
                "url": "ws://bob:url-pa55@127.0.0.1:9/pcm?key=query-s3cret",
                "headers": {"Authorization": "Bearer ${AGENT_TOKEN}"},
            },
        ],
    )


def test_the_retained_status_has_the_capacity_right_after_start(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, base_config(tmp_path))
    with node, MqttWatch(node.mqtt_port) as mq:
        # Before any call: the retained status already knows what the worker holds.
        status = mq.wait(lambda: mq.retained("/test-node/status"), what="retained status")
        assert status["capacity"] == 4 and status["engine_call_limit"] == 4, status
        assert status["active_calls"] == 0 and status["draining"] is False
    assert node.stop() == 0


def test_start_logs_each_trunk_number_and_agent_without_secrets(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path, routing_config(tmp_path), env=SECRETS)
    with node:
        pass
    assert node.stop() == 0
    log = node.log()
    assert log.count("event=trunk_configured ") == 1
    assert "event=trunk_configured trunk=loopback register=false registrar=- username=edge" in log
    assert "event=number_configured number=+15550100 agent=echo trunk=any" in log
    assert "variables=campaign" in log and "spring" not in log
    assert "event=number_configured number=+15550111 agent=bot trunk=loopback" in log
    assert "event=agent_configured agent=echo type=echo url=-" in log
    assert "event=agent_configured agent=bot type=pcm-ws url=ws://127.0.0.1:9/pcm" in log
    assert "headers=Authorization" in log
    for secret in [*SECRETS.values(), "url-pa55", "query-s3cret", "bob"]:
        assert secret not in log, secret


def test_the_log_has_no_raw_pjlib_lines_and_a_clean_stop_warns_of_nothing(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path, routing_config(tmp_path), env=SECRETS)
    with node:
        pass
    assert node.stop() == 0
    lines = node.log().splitlines()
    assert lines
    # Every line is one of ours, key=value after the logger name; pjlib prints nothing raw.
    for line in lines:
        assert LOG_LINE.match(line), f"not a log line: {line!r}"
    pjsip = [line for line in lines if " pjsip " in line]
    assert pjsip, "sip.log_level 3 at DEBUG logs pjsip lines"
    assert all(" event=pjsip level=" in line for line in pjsip), pjsip[:3]
    assert [line for line in lines if "supervisor_gone" in line or " WARNING " in line] == []


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


def test_a_second_node_on_the_same_ports_names_each_port_in_use(tmp_path: Path) -> None:
    config = base_config(tmp_path, api={"enabled": True, "port": free_port("tcp")})
    first = NodeProcess(tmp_path, config)
    with first:
        second_config = {**config, "storage": {"path": str(tmp_path / "second.db")}}
        second = NodeProcess(tmp_path, second_config)
        with pytest.raises(RuntimeError, match="node exited with 1"):
            second.start()
        second.stop()
        log = second.log()
        mqtt, sip, api = config["mqtt"]["port"], config["sip"]["port"], config["api"]["port"]
        assert f"mqtt.port {mqtt} is already in use (TCP 127.0.0.1:{mqtt}, by pid " in log
        assert "mosquitto" in log  # the holder, by its command line
        assert f"sip.port {sip} is already in use (UDP 127.0.0.1:{sip}" in log
        assert f"sip.port {sip} is already in use (TCP 127.0.0.1:{sip}" in log
        assert f"api.port {api} is already in use (TCP 127.0.0.1:{api}" in log
        assert "did not start" not in log and "Traceback" not in log
        # The first node was not disturbed.
        assert "event=node_running" in first.log()
    assert first.stop() == 0
