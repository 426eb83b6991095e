"""Answering-machine detection end to end: the node dials SIPp callees that answer as a person
(a short "hello?" then silence) and as an answering machine (a long greeting, a beep), both
espeak-ng recordings (sipp_scenarios/uas_amd_*.xml). Checked: call.amd says human / machine;
a person is connected to a real Twilio Media Streams agent whose start message carries the
verdict and which hears the caller; a machine is hung up (reason machine_detected, by the
gateway) when the call asks for that, before any agent is connected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import Sipp
from tests.integration.test_media_agents import TwilioBot

pytestmark = pytest.mark.integration


@pytest.fixture
def bot() -> TwilioBot:
    agent = TwilioBot()
    yield agent  # type: ignore[misc]
    agent.close()


def amd_node(tmp_path: Path, uas: Sipp, bot: TwilioBot) -> NodeProcess:
    trunk = {"id": "loopback", "proxy": f"sip:{uas.uri_host}", "allowed_destinations": ["+1555"]}
    agents = [{"id": "bot", "type": "twilio-ws", "url": f"ws://127.0.0.1:{bot.port}/bot"}]
    return NodeProcess(tmp_path, base_config(tmp_path, trunks=[trunk], agents=agents,
                                             numbers=[]))  # fmt: skip


def test_a_person_is_connected_to_the_agent_with_the_verdict(
    tmp_path: Path, bot: TwilioBot
) -> None:
    uas = Sipp("uas_amd_human.xml", calls=1, workdir=tmp_path / "uas")
    with uas.start(), amd_node(tmp_path, uas, bot) as node, MqttWatch(node.mqtt_port) as mq:
        reply = mq.command("call.originate", {"to": "+15551230000", "agent": "bot",
                                              "amd": {"action": "hangup"}})  # fmt: skip
        call_id = reply["data"]["id"]
        verdict = mq.wait_event("call.amd", call_id)
        assert (verdict["data"]["result"], verdict["data"]["reason"]) == ("human", "human")
        assert 500 < verdict["data"]["analysis_ms"] < 5000
        mq.wait_event("call.agent.connected", call_id)
        mq.wait(lambda: any(c.events().count("media") > 20 for c in bot.connections),
                what="the agent hears the caller")  # fmt: skip
        (conn,) = bot.connections
        start = next(m for _, m in conn.messages if m["event"] == "start")
        parameters = start["start"]["customParameters"]
        assert parameters["amd_result"] == "human" and parameters["amd_reason"] == "human"
        mq.command("call.hangup", {"call_id": call_id})
        done = mq.wait_event("call.completed", call_id)
        assert done["data"]["reason"] == "normal"
        assert node.stop() == 0


def test_a_machine_is_hung_up_before_any_agent(tmp_path: Path, bot: TwilioBot) -> None:
    uas = Sipp("uas_amd_machine.xml", calls=1, workdir=tmp_path / "uas")
    with uas.start(), amd_node(tmp_path, uas, bot) as node, MqttWatch(node.mqtt_port) as mq:
        reply = mq.command("call.originate", {"to": "+15551230000", "agent": "bot",
                                              "amd": {"action": "hangup"}})  # fmt: skip
        call_id = reply["data"]["id"]
        verdict = mq.wait_event("call.amd", call_id)
        assert verdict["data"]["result"] == "machine"
        done = mq.wait_event("call.completed", call_id)
        assert (done["data"]["reason"], done["data"]["hangup_by"]) == ("machine_detected",
                                                                       "gateway")  # fmt: skip
        assert done["data"]["duration"] < 5
        assert bot.connections == []  # no agent was connected for a machine
        assert uas.wait(20).ok  # the callee got our BYE
        assert node.stop() == 0
