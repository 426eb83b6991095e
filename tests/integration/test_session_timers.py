"""RFC 4028 session timers, end to end: a SIPp caller asks for a 90 s session timer with
itself as the refresher, and then never refreshes (a far end that vanished without a BYE,
its RTP gone too). The node must end the call itself before the session expires, and say so
in the record: reason session_expired, hung up by the gateway, the duration it really had.

The media timeout is off here, so only the session timer can end the call. The test waits
about a minute: 90 s is the smallest interval RFC 4028 allows (and pjsip asserts it).

Outbound, a trunk's own session_timers reach the INVITE the carrier sees.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST, Sipp
from tests.integration.rawsip import SipMessage, response_to

pytestmark = pytest.mark.integration


def test_a_caller_that_stops_refreshing_its_session_timer_is_hung_up(tmp_path: Path) -> None:
    limits = {"max_concurrent_calls": 10, "ring_timeout": 30, "media_timeout": 0}
    config = base_config(tmp_path, limits=limits)
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        caller = Sipp(
            "uac_session_timer.xml",
            remote=(HOST, node.sip_port),
            service="+15550100",
            workdir=tmp_path / "caller",
        ).start()
        answered = mq.wait_event("call.answered")
        done = mq.wait_event("call.completed", answered["call_id"], timeout=90)
        result = caller.wait(20)
        assert result.ok, result.errors  # the 200 carried the timer, the BYE came
        data = done["data"]
        assert (data["reason"], data["hangup_by"]) == ("session_expired", "gateway"), data
        # RFC 4028 10: the BYE goes at 90 - min(32, 90 / 3) = 60 s of a session not refreshed
        assert 55 <= data["duration"] < 90, data
        assert node.stop() == 0


def test_a_trunks_session_timers_are_asked_for_in_its_outbound_invites(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as carrier:
        carrier.bind((HOST, 0))
        carrier.settimeout(10)
        trunk = {
            "id": "loopback",
            "proxy": f"sip:{HOST}:{carrier.getsockname()[1]}",
            "allowed_destinations": ["+1555"],
            "session_timers": {"mode": "always", "expires": 600, "min_se": 120},
        }
        config = base_config(tmp_path, trunks=[trunk])
        with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
            reply = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})
            data, source = carrier.recvfrom(65535)
            invite = SipMessage(data.decode())
            assert invite.method == "INVITE"
            assert invite.header("session-expires").replace(" ", "").startswith("600")
            assert invite.header("min-se").strip() == "120"
            assert "timer" in invite.header("supported")
            carrier.sendto(response_to(invite), source)
            failed = mq.wait_event("call.failed", reply["data"]["id"])
            assert failed["data"]["reason"] == "busy"
            assert node.stop() == 0
