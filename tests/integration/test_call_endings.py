"""How a call's media ends, end to end: SIPp calls a real node whose pcm-ws agent (a real
WebSocket server here) hangs up while the caller is still talking, with recording on.

Checked: the conference bridge runs at the rate the config needs (8 kHz for narrowband calls
and agents, 16 kHz once a 16 kHz agent is configured) and the agent still gets audio at its own
rate; `call.completed` is the last stored event of the call, after the `call.speech.stopped`
the hang-up cut off and after `call.recording.ready`; and RFC 4733 digits, whose duration
pjsua does not know, carry `duration_ms: null`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from websockets.asyncio.server import ServerConnection

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import Sipp
from tests.integration.test_media_agents import (
    HOST,
    Node,
    free_rtp_port,
    media_config,
    sipp_call,
    stored_events_by_call,
)
from tests.integration.wsserver import ThreadedWsServer

pytestmark = pytest.mark.integration

FINAL = ("call.completed", "call.failed")


class HangUpOnSpeech(ThreadedWsServer):
    """A pcm-ws agent that hangs up as soon as the gateway says the caller started talking."""

    def __init__(self) -> None:
        self.texts: list[dict[str, Any]] = []
        self.audio: list[bytes] = []
        super().__init__()

    async def _handle(self, ws: ServerConnection) -> None:
        async for raw in ws:
            if isinstance(raw, bytes):
                self.audio.append(raw)
                continue
            message = json.loads(raw)
            self.texts.append(message)
            if message["event"] == "speech_started":
                await ws.send(json.dumps({"event": "hangup", "reason": "test"}))


class QuietNode(Node):
    """A node logging at WARNING: its SIP thread does no I/O between closing a call's media
    session and sending call.completed, which gives the worker's loop no chance to flush the
    session's last events in between (with numpy's first percentile of the process, slow
    enough to do the same, only a second call shows it)."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.config = config
        self.path = tmp / "node.yaml"
        self.path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / "node.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "gateway.cli", "--log-level", "WARNING", "run"]
        self.proc = subprocess.Popen(
            [*command, "--config", str(self.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=tmp,
        )
        self.sip_port = int(config["sip"]["port"])


@dataclass
class EndedCalls:
    log: str
    bot: HangUpOnSpeech
    events: list[list[dict[str, Any]]]  # per call, its stored events in seq order


def calls_hung_up_by_the_agent(
    tmp_path: Path, agent_rate: int, calls: int = 1, quiet: bool = False, media: str = "plane"
) -> EndedCalls:
    """`calls` SIPp calls, one after the other (the 3 s speech pcap), to a pcm-ws agent at
    `agent_rate` that hangs up as the caller starts talking; recording on; the calls' media
    served by the media plane or (`media` worker) by each worker's pjmedia."""
    bot = HangUpOnSpeech()
    rtp_base = 33000 + (os.getpid() % 100) * 40 + (agent_rate // 8000) * 4000
    config = media_config(
        tmp_path,
        "endings",
        rtp_base,
        numbers=[{"number": "+15550100", "agent": "bot"}],
        agents=[
            {"id": "echo", "type": "echo"},
            {
                "id": "bot",
                "type": "pcm-ws",
                "url": f"ws://{HOST}:{bot.port}/",
                "sample_rate": agent_rate,
            },
        ],
        recording={"enabled": True},
    )
    config.setdefault("node", {})["media"] = media
    node = (QuietNode if quiet else Node)(tmp_path, config)
    try:
        node.wait_ready()
        for i in range(calls):
            sipp = sipp_call("+15550100", node.sip_port, tmp_path / f"sipp{i}", free_rtp_port())
            sipp.wait(40)  # nonzero: the agent's hang-up is a BYE SIPp does not expect
    finally:
        exit_code = node.stop()
        bot.close()
    log = node.log()
    assert exit_code == 0, log[-3000:]
    by_call = stored_events_by_call(tmp_path / "sipedge.db")
    assert len(by_call) == calls
    return EndedCalls(log, bot, [sorted(e, key=lambda e: e["seq"]) for e in by_call.values()])


def test_completed_is_the_last_event_even_after_speech_cut_off_and_a_recording(
    tmp_path: Path,
) -> None:
    ended = calls_hung_up_by_the_agent(tmp_path, 8000, calls=2, quiet=True)
    for events in ended.events:
        types = [e["type"] for e in events]
        assert types[-1] == "call.completed", types
        assert [t for t in types if t in FINAL] == ["call.completed"]
        assert events[-1]["data"]["hangup_by"] == "agent"
        cut_off = [e for e in events if e["type"] == "call.speech.stopped"]
        assert any(e["data"]["party"] == "caller" for e in cut_off), types
        assert "call.recording.ready" in types and "call.agent.disconnected" in types


@pytest.mark.parametrize(
    "media,agent_rate,clock_rate",
    [
        ("worker", 8000, 8000),
        ("worker", 16000, 16000),
        ("plane", 8000, None),
        ("plane", 16000, None),
    ],  # fmt: skip
)
def test_the_bridge_runs_at_8khz_unless_an_agent_needs_16khz_and_agents_get_their_rate(
    tmp_path: Path, media: str, agent_rate: int, clock_rate: int | None
) -> None:
    """With the media plane no worker runs a media clock at all (the plane's 20 ms clock
    serves every call, and resamples for a 16 kHz agent)."""
    ended = calls_hung_up_by_the_agent(tmp_path, agent_rate, media=media)  # PCMU only
    clock = re.findall(r"event=media_clock_started clock_rate=(\d+)", ended.log)
    assert clock == ([str(clock_rate)] if clock_rate else [])
    bot = ended.bot
    assert bot.texts[0]["event"] == "start" and bot.texts[0]["sample_rate"] == agent_rate
    assert {len(frame) for frame in bot.audio} == {agent_rate // 50 * 2}
    heard = np.frombuffer(b"".join(bot.audio), "<i2").astype(np.float64)
    assert np.sqrt(np.mean(heard**2)) > 300  # the start of the caller's first burst


def test_dtmf_digits_of_unknown_duration_say_null_not_4294967295(
    tmp_path: Path,
) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        for scenario in ("uac_dtmf.xml", "uac_dtmf_info.xml"):
            res = Sipp(
                scenario,
                remote=(HOST, node.sip_port),
                service="+15550100",
                workdir=tmp_path / scenario,
            ).run(30)
            assert res.successful == 1, res.errors
        mq.wait(lambda: len([e for e in mq.events() if e["type"] == "call.completed"]) == 2)
        digits = [e["data"] for e in mq.events() if e["type"] == "call.dtmf"]
    rfc4733 = [d["duration_ms"] for d in digits if d["method"] == "rfc4733"]
    info = [d["duration_ms"] for d in digits if d["method"] == "sip_info"]
    assert len(rfc4733) == 5 and set(rfc4733) == {None}, digits
    # pjsua 2.15 reports SIP INFO digits without their Duration line's value too.
    assert len(info) == 3 and all(d is None or 0 < d < 65536 for d in info), digits
