"""AMD in front of a call's agent (gateway/session/amd.py), fed the committed SIPp pcaps'
audio: the verdict is emitted once, the agent starts with it in its variables and hears what
the analysis held, a machine is hung up or waited for until its beep, and nothing before the
answer (early media) is analysed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.calls.events import AmdDetected, CallEvent
from gateway.calls.model import CallRecord
from gateway.session.amd import AmdSession
from gateway.session.contract import CallControls, MediaSession
from tests.media.test_amd import pcap_frames

PCAPS = Path(__file__).resolve().parents[3] / "sipp_scenarios" / "pcap"
HUMAN = pcap_frames(PCAPS / "amd_human_pcmu.pcap")
MACHINE = pcap_frames(PCAPS / "amd_machine_pcmu.pcap")


class Agent:
    rate = 8000

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.heard: list[bytes] = []
        self.closed = False

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        self.heard.append(pcm)

    def next_frame(self) -> bytes:
        return b"\x01\x00" * 160

    def on_dtmf(self, digit: str) -> None: ...

    def close(self) -> None:
        self.closed = True

    def when_closed(self, callback: Any) -> None:
        callback()


class Call:
    def __init__(self, **amd: Any) -> None:
        self.events: list[CallEvent] = []
        self.hangups: list[tuple[str, str | None]] = []
        self.agents: list[Agent] = []
        record = CallRecord("call_" + "a" * 24, "outbound", "t", "+15550001", "+15550002", "bot",
                            variables={"lead": "L1"}, amd={"action": "connect", **amd})  # fmt: skip

        def hangup(by: str, reason: str | None = None) -> None:
            self.hangups.append((by, reason))

        controls = CallControls(record.id, self.events.append, hangup)
        self.session = AmdSession(record, controls, record.amd or {}, self._agent, 8000)

    def _agent(self, record: CallRecord, controls: CallControls) -> MediaSession:
        agent = Agent(record)
        self.agents.append(agent)
        return agent

    def play(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.session.on_caller_frame(frame)

    @property
    def amd(self) -> list[AmdDetected]:
        return [e for e in self.events if isinstance(e, AmdDetected)]


def test_a_person_is_connected_with_the_verdict_and_their_hello() -> None:
    call = Call()
    call.session.answered()
    call.play(HUMAN)
    (verdict,) = call.amd
    assert (verdict.result, verdict.reason) == ("human", "human")
    (agent,) = call.agents
    assert agent.record.variables["amd_result"] == "human"
    assert agent.record.variables["lead"] == "L1"
    held = verdict.analysis_ms // 20
    assert agent.heard[:held] == HUMAN[:held]  # the "hello?" the analysis held, then the rest
    assert len(agent.heard) == len(HUMAN)
    assert call.session.next_frame() == b"\x01\x00" * 160


def test_a_machine_is_hung_up_when_the_action_says_so() -> None:
    call = Call(action="hangup")
    call.session.answered()
    call.play(MACHINE)
    (verdict,) = call.amd
    assert verdict.result == "machine"
    assert call.hangups == [("gateway", "machine_detected")]
    assert call.agents == [] and call.session.next_frame() == bytes(320)


def test_wait_for_beep_starts_the_agent_after_the_beep_and_says_when() -> None:
    call = Call(action="wait_for_beep")
    call.session.answered()
    call.play(MACHINE)
    (verdict,) = call.amd
    assert verdict.result == "machine" and verdict.beep_ms is not None
    (agent,) = call.agents
    beep_end = verdict.analysis_ms + verdict.beep_ms
    assert 6600 <= beep_end <= 6800  # the pcap's beep ends at 6688 ms
    assert len(agent.heard) == len(MACHINE) - beep_end // 20 - 1  # nothing of the greeting


def test_early_media_is_not_analysed_and_a_hangup_before_a_verdict_is_unknown() -> None:
    call = Call()
    call.play(MACHINE)  # ringback, an announcement: before the answer
    assert call.amd == [] and call.agents == []
    call.session.answered()
    call.play(HUMAN[:10])
    call.session.close()
    (verdict,) = call.amd
    assert (verdict.result, verdict.reason) == ("unknown", "hangup")


@pytest.mark.parametrize("frames", [HUMAN, MACHINE])
def test_the_verdict_is_emitted_once(frames: list[bytes]) -> None:
    call = Call()
    call.session.answered()
    call.play(frames + frames)
    call.session.close()
    assert len(call.amd) == 1 and len(call.agents) == 1 and call.agents[0].closed
