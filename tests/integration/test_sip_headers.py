"""SIP headers and call variables, end to end: the headers a trunk (or a number) names become
the inbound call's variables, in call.incoming and in a real Twilio Media Streams agent's
start message (customParameters), the number's own variables winning; outbound, the X-
headers given, and the variables with variables_as_headers, are on the INVITE the carrier
receives."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST
from tests.integration.rawsip import RawUac, SipMessage, response_to
from tests.integration.test_media_agents import TwilioBot

pytestmark = pytest.mark.integration


def test_inbound_headers_become_variables_the_agent_gets(tmp_path: Path) -> None:
    bot = TwilioBot()
    try:
        trunk = {"id": "loopback", "allowed_ips": ["127.0.0.0/8"], "max_concurrent_calls": 10,
                 "headers_to_variables": ["X-*", "Diversion"]}  # fmt: skip
        number = {"number": "+15550100", "agent": "bot", "variables": {"X-Campaign": "config"}}
        agents = [{"id": "bot", "type": "twilio-ws", "url": f"ws://127.0.0.1:{bot.port}/bot"}]
        config = base_config(tmp_path, trunks=[trunk], numbers=[number], agents=agents)
        headers = ("X-Lead-Id: 42\r\nX-Campaign: from-the-invite\r\n"
                   "Diversion: <sip:+15550999@carrier.example>;reason=unconditional\r\n"
                   "Subject: not passed\r\n")  # fmt: skip
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq, \
                RawUac(node.sip_port) as uac:  # fmt: skip
            dialog = uac.invite(headers=headers)
            final = uac.wait_final(dialog)
            assert final.status == 200, final.first_line
            uac.ack(dialog, final)
            incoming = mq.wait_event("call.incoming")
            variables = incoming["data"]["variables"]
            assert variables["X-Lead-Id"] == "42"
            assert variables["X-Campaign"] == "config"  # the number's own wins
            assert variables["Diversion"].startswith("<sip:+15550999@")
            assert "Subject" not in variables and "X-Sipedge-Source" not in variables
            mq.wait(lambda: any("start" in c.events() for c in bot.connections),
                    what="the agent's start")  # fmt: skip
            start = next(m for _, m in bot.connections[0].messages if m["event"] == "start")
            assert start["start"]["customParameters"]["X-Lead-Id"] == "42"
            uac.bye(dialog, final)
            mq.wait_event("call.completed", incoming["call_id"])
            assert node.stop() == 0
    finally:
        bot.close()


def test_outbound_calls_carry_the_x_headers_given_and_the_variables(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
        carrier.bind((HOST, 0))
        carrier.settimeout(10)
        trunk = {"id": "loopback", "proxy": f"sip:{HOST}:{carrier.getsockname()[1]}",
                 "allowed_destinations": ["+1555"]}  # fmt: skip
        with NodeProcess(tmp_path, base_config(tmp_path, trunks=[trunk])) as node, \
                MqttWatch(node.mqtt_port) as mq:  # fmt: skip
            reply = mq.command("call.originate", {
                "to": "+15551230000", "agent": "echo", "variables": {"lead_id": "L7", "n": "1"},
                "variables_as_headers": True, "sip_headers": {"X-Crm-Ref": "abc", "X-N": "2"},
            })  # fmt: skip
            data, source = carrier.recvfrom(65535)
            invite = SipMessage(data.decode())
            assert invite.header("x-crm-ref") == "abc"
            assert invite.header("x-lead-id") == "L7"
            assert invite.header("x-n") == "2"  # the header given wins over the variable
            bad = mq.command("call.originate", {"to": "+15551230001", "agent": "echo",
                                                "sip_headers": {"Via": "x"}})  # fmt: skip
            assert bad["error"]["code"] == "invalid_parameter"
            carrier.sendto(response_to(invite), source)
            mq.wait_event("call.failed", reply["data"]["id"])
            assert node.stop() == 0
