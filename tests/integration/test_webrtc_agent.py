"""WebRTC agents end to end: SIPp calls a real sipedge node, which reaches a real aiortc peer
through its WHIP endpoint on 127.0.0.1, streams the caller to it and plays it back.

One node, three concurrent calls (the pjsua2 build's capacity):
  +15550100 -> `rtc`: the 3 s speech pcap; the agent greets with a 400 ms tone and a mark.
               Checked: the speech reached the agent (correlation per burst), the tone reached
               SIPp's RTP (captured off `lo`), the mark came back, Opus was negotiated, the
               session was DELETEd at hangup.
  +15550101 -> `rtc`: RFC 4733 DTMF "1234#" from SIPp arrives on the `events` data channel.
  +15550102 -> `rtc-dead`: the agent answers, then its peer vanishes: ICE never completes,
               call.agent.disconnected says why and, the agent being connected while the
               call rings, the INVITE is refused with 480 (call.failed, agent_unavailable).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media.codecs import ulaw_decode
from tests.gateway.session.test_webrtc import AgentPeer, WhipAgent
from tests.integration.test_media_agents import (
    HOST,
    SCENARIOS,
    LoopbackCapture,
    Node,
    burst_correlations,
    dominant_hz,
    free_port,
    free_rtp_port,
    media_config,
    of_type,
    sipp_call,
    speech_samples,
    stored_events,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="captures RTP on lo with AF_PACKET (root)"),
]

GREETING_HZ = 1000


class AgentThread:
    """WHIP agents served from their own event loop, as a separate agent process would be."""

    def __init__(self, modes: list[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.agents = [WhipAgent(mode) for mode in modes]
        self.urls: list[str] = []
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.urls = [self.loop.run_until_complete(a.start()) for a in self.agents]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(5)

    def close(self) -> None:
        for agent in self.agents:
            asyncio.run_coroutine_threadsafe(agent.close(), self.loop).result(5)
        asyncio.run_coroutine_threadsafe(_cancel_others(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def agents() -> Iterator[AgentThread]:
    thread = AgentThread(["ok", "dead"])
    yield thread
    thread.close()


def sipp_dtmf(number: str, node_port: int, workdir: Path) -> subprocess.Popen[bytes]:
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        "sipp", "-sf", str(SCENARIOS / "uac_dtmf.xml"), "-s", number, "-m", "1",
        "-i", HOST, "-p", str(free_port(both=False)), "-mi", HOST,
        "-mp", str(free_rtp_port()), "-cp", str(free_port(both=False)),
        "-d", "1500", "-nostdin", "-timeout", "30", f"{HOST}:{node_port}",
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def peer_for(agent: WhipAgent, number: str) -> AgentPeer:
    (peer,) = [p for p in agent.peers.values() if p.messages and p.messages[0]["to"] == number]
    return peer


def test_calls_reach_a_webrtc_agent_both_ways_with_dtmf_marks_teardown_and_ice_failure(
    tmp_path: Path, agents: AgentThread
) -> None:
    ok_url, dead_url = agents.urls
    rtp_base = 33000 + (os.getpid() % 100) * 40
    rtc: dict[str, Any] = {"type": "webrtc", "ice_addresses": [HOST], "connect_timeout": 3}
    config = media_config(
        tmp_path,
        "webrtc-test",
        rtp_base,
        numbers=[
            {"number": "+15550100", "agent": "rtc", "variables": {"campaign": "spring"}},
            {"number": "+15550101", "agent": "rtc"},
            {"number": "+15550102", "agent": "rtc-dead"},
        ],
        agents=[
            {"id": "rtc", "url": ok_url, **rtc},
            {"id": "rtc-dead", "url": dead_url, **rtc, "connect_timeout": 1.5},
        ],
        vad={"barge_in": False},
    )
    node = Node(tmp_path, config)
    capture = LoopbackCapture()
    try:
        node.wait_ready()
        speech_port = free_rtp_port()
        capture.ports = {speech_port}
        calls = {
            "+15550100": sipp_call("+15550100", node.sip_port, tmp_path / "speech", speech_port),
            "+15550101": sipp_dtmf("+15550101", node.sip_port, tmp_path / "dtmf"),
            "+15550102": sipp_call("+15550102", node.sip_port, tmp_path / "dead", free_rtp_port()),
        }
        codes = {n: p.wait(40) for n, p in calls.items()}
        time.sleep(0.5)  # the DELETEs follow the BYEs
    finally:
        capture.close()
        exit_code = node.stop()
    log = node.log()
    assert exit_code == 0, log[-3000:]
    assert codes["+15550100"] == 0 and codes["+15550101"] == 0, log[-3000:]
    assert codes["+15550102"] != 0  # the gateway refused SIPp's INVITE (480)

    ok, dead = agents.agents
    talk = peer_for(ok, "+15550100")
    start = talk.messages[0]
    assert start["event"] == "start" and start["variables"] == {"campaign": "spring"}
    assert start["encoding"] == "opus" and talk.events()[-1] == "stop"
    # The caller's speech, through pjmedia, 8 -> 48 kHz, Opus and back down, at the agent.
    heard = np.frombuffer(b"".join(talk.heard), "<i2").astype(np.float64)
    bursts = burst_correlations(heard, speech_samples())
    assert len(bursts) == 5 and sorted(bursts)[1] > 0.8, bursts
    # The agent's greeting, played to SIPp as PCMU, and its mark back once played.
    tones = [dominant_hz(payload_pcm) for payload_pcm in _rtp_pcm(capture, speech_port)]
    assert 12 <= tones.count(GREETING_HZ) <= 26, tones.count(GREETING_HZ)
    assert {"event": "mark", "name": "greeting"} in talk.messages
    assert talk.deleted

    dtmf = peer_for(ok, "+15550101")
    digits = [m["digit"] for m in dtmf.messages if m["event"] == "dtmf"]
    assert digits == list("1234#"), dtmf.events()
    assert dtmf.deleted

    events = stored_events(tmp_path / "sipedge.db")
    assert of_type(events["+15550100"], "call.agent.connected") == [
        {"agent": "rtc", "transport": "webrtc", "reason": None, "codec": "opus"}
    ]
    assert of_type(events["+15550100"], "call.agent.disconnected")[0]["reason"] == "call_ended"
    (gone,) = of_type(events["+15550102"], "call.agent.disconnected")
    assert gone["reason"] == "ice_failed: no connectivity within 1.5s", gone
    assert "action=hangup" in log and [m for m, _, _ in dead.requests] == ["POST", "DELETE"]
    # The agent is connected while the call rings: one that cannot be reached gets the INVITE
    # refused (480), never answered and hung up (issue 9, item 6).
    ended = of_type(events["+15550102"], "call.failed")
    assert len(ended) == 1 and ended[0]["reason"] == "agent_unavailable", ended
    assert ended[0]["sip_code"] == 480, ended
    assert not of_type(events["+15550102"], "call.completed")
    assert "event=media_latency" in log


def _rtp_pcm(capture: LoopbackCapture, port: int) -> list[bytes]:
    return [ulaw_decode(payload) for _, payload in capture.packets.get(port, [])]
