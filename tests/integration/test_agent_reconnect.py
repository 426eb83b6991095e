"""A streaming agent's link that drops mid-call, end to end: the node connects again (here to
the agent's backup_url, the first agent having gone away), the new Twilio Media Streams start
says it is a reconnect of the same call, the caller hears comfort noise rather than dead air
meanwhile, and the events say what happened. When no agent comes back within
reconnect_timeout, on_agent_failure applies (the call is hung up by the gateway).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from media.codecs import ulaw_decode
from media.rtp import parse
from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import HOST
from tests.integration.rawsip import RawUac
from tests.integration.wsserver import ThreadedWsServer

pytestmark = pytest.mark.integration


class Agent(ThreadedWsServer):
    """A Twilio-format agent: `drop_after` media messages in, it closes the connection."""

    def __init__(self, drop_after: int | None = None) -> None:
        self.drop_after = drop_after
        self.starts: list[dict[str, Any]] = []
        super().__init__()

    async def _handle(self, ws: ServerConnection) -> None:
        media = 0
        async for raw in ws:
            message = json.loads(raw)
            if message["event"] == "start":
                self.starts.append(message)
            elif message["event"] == "media":
                media += 1
                if self.drop_after is not None and media >= self.drop_after:
                    await ws.close()
                    return


def node_config(tmp_path: Path, url: str, **agent: Any) -> dict[str, Any]:
    bot = {"id": "bot", "type": "twilio-ws", "url": url, "reconnect_timeout": 3,
           "filler": "comfort_noise", **agent}  # fmt: skip
    numbers = [{"number": "+15550100", "agent": "bot"}]
    return base_config(tmp_path, agents=[bot], numbers=numbers)


def rtp_levels(rtp: socket.socket, seconds: float) -> list[float]:
    """RMS of each PCMU packet the node sends us for `seconds` (our RTP goes back too)."""
    levels: list[float] = []
    rtp.settimeout(0.1)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            data, source = rtp.recvfrom(2048)
            packet = parse(data)
            if packet is not None:
                pcm = np.frombuffer(ulaw_decode(packet.payload), "<i2").astype(np.float64)
                levels.append(float(np.sqrt(np.mean(pcm**2))))
                rtp.sendto(data, source)  # keep our media flowing (no media timeout)
    return levels


def test_a_dropped_agent_is_reconnected_to_its_backup_with_comfort_noise_between(
    tmp_path: Path,
) -> None:
    primary, backup = Agent(drop_after=10), Agent()
    try:
        config = node_config(tmp_path, f"ws://{HOST}:{primary.port}/a",
                             backup_url=f"ws://{HOST}:{backup.port}/b")  # fmt: skip
        with (
            NodeProcess(tmp_path, config) as node,
            MqttWatch(node.mqtt_port) as mq,
            RawUac(node.sip_port) as uac,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
        ):
            rtp.bind((HOST, 40000 + (uac.port % 2000) * 2))
            dialog = uac.invite()
            final = uac.wait_final(dialog)
            assert final.status == 200, final.first_line
            uac.ack(dialog, final)
            port = int(final.text.split("m=audio ", 1)[1].split(" ", 1)[0])
            primary.close()  # the first agent goes away for good once it drops the call
            rtp.sendto(b"\x80\x00\x00\x01" + bytes(8) + b"\xff" * 160, (HOST, port))
            levels = rtp_levels(rtp, 1.5)
            call_id = mq.wait_event("call.incoming")["call_id"]
            down = mq.wait_event("call.agent.disconnected", call_id)
            up = mq.wait_event("call.agent.connected", call_id, reconnect=True)
            assert down["seq"] < up["seq"]
            (start,) = backup.starts
            parameters = start["start"]["customParameters"]
            assert (parameters["reconnect"], parameters["reconnect_count"]) == ("true", "1")
            assert start["start"]["callSid"] == call_id  # the same call
            assert any(0 < level < 200 for level in levels)  # comfort noise, not dead air
            uac.bye(dialog, final)
            done = mq.wait_event("call.completed", call_id)
            assert done["data"]["hangup_by"] == "caller"
            assert "event=agent_reconnecting" in node.log()
            assert node.stop() == 0
    finally:
        backup.close()


def test_an_agent_that_does_not_come_back_in_time_ends_the_call(tmp_path: Path) -> None:
    agent = Agent(drop_after=5)
    try:
        config = node_config(tmp_path, f"ws://{HOST}:{agent.port}/a", reconnect_timeout=1)
        with (
            NodeProcess(tmp_path, config) as node,
            MqttWatch(node.mqtt_port) as mq,
            RawUac(node.sip_port) as uac,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp,
        ):
            rtp.bind((HOST, 0))
            dialog = uac.invite()
            final = uac.wait_final(dialog)
            uac.ack(dialog, final)
            port = int(final.text.split("m=audio ", 1)[1].split(" ", 1)[0])
            agent.close()
            rtp.sendto(b"\x80\x00\x00\x01" + bytes(8) + b"\xff" * 160, (HOST, port))
            rtp_levels(rtp, 0.5)
            call_id = mq.wait_event("call.incoming")["call_id"]
            done = mq.wait_event("call.completed", call_id)
            assert done["data"]["hangup_by"] == "gateway"
            reasons = [e["data"]["reason"] for e in mq.events(call_id)
                       if e["type"] == "call.agent.disconnected"]  # fmt: skip
            assert reasons[-1].startswith("reconnect_failed"), reasons
            assert node.stop() == 0
    finally:
        agent.close()
