"""Answering-machine detection in front of a call's agent (an outbound call that asked for
`amd`): the callee's first seconds go to the detector (media/amd.py), not to the agent; on the
verdict the session emits `call.amd` and then, by the call's `action`:
  - connect: the agent session starts, its start message carrying the result (variables
    amd_result, amd_reason, amd_analysis_ms), and hears the audio the analysis held (a
    person's "hello?");
  - hangup (on a machine): the gateway hangs up, reason machine_detected;
  - wait_for_beep (on a machine): the agent starts when the voicemail beep has ended (or
    after beep_timeout_ms), to speak into the recording; the event carries beep_ms.
Analysis starts when the call is answered (`answered()`): early media (ringback, a carrier's
announcement) is not the callee. Until the agent starts the caller hears silence.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from gateway.calls.events import AmdDetected
from gateway.calls.model import CallRecord, EndReason
from gateway.session.contract import CallControls, MediaSession
from media.amd import AmdResult, AmdSettings, AnsweringMachineDetector, BeepWaiter

log = logging.getLogger("sipedge.session")

HELD_MS = 10_000  # callee audio kept for the agent while the analysis runs, at most


def amd_settings(request: dict[str, Any]) -> AmdSettings:
    """The detector's settings from the call's `amd` request (AmdRequest's fields)."""
    names = {f.name for f in dataclasses.fields(AmdSettings)}
    return AmdSettings(**{k: v for k, v in request.items() if k in names})


class AmdSession:
    def __init__(
        self,
        record: CallRecord,
        controls: CallControls,
        request: dict[str, Any],
        make_agent: Callable[[CallRecord, CallControls], MediaSession],
        rate: int,
    ) -> None:
        self.rate = rate
        self.record = record
        self.controls = controls
        self.action = str(request.get("action", "connect"))
        self.beep_timeout_ms = int(request.get("beep_timeout_ms", 30_000))
        self.detector = AnsweringMachineDetector(amd_settings(request), rate=rate)
        self._make_agent = make_agent
        self._silence = bytes(rate // 50 * 2)
        self._held: list[bytes] = []
        self._held_max = HELD_MS // 20
        self._answered = False
        self._verdict: AmdResult | None = None
        self._waiter: BeepWaiter | None = None
        self.agent: MediaSession | None = None
        self._closed = False

    # -- the call ----------------------------------------------------------------------------

    def answered(self) -> None:
        """The callee picked up: what comes from now on is theirs."""
        self._answered = True

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        agent = self.agent
        if agent is not None:
            agent.on_caller_frame(pcm, mulaw)
            return
        if not self._answered or self._closed:
            return
        if len(self._held) < self._held_max:
            self._held.append(pcm)
        if self._waiter is not None:
            waited = self._waiter.feed(pcm)
            if waited is not None:
                self._report(self._verdict, waited.beep_ms)  # type: ignore[arg-type]
                self._start_agent(replay=False)
            return
        result = self.detector.feed(pcm)
        if result is not None:
            self._decided(result)

    def next_frame(self) -> bytes:
        agent = self.agent
        return agent.next_frame() if agent is not None else self._silence

    def on_dtmf(self, digit: str) -> None:
        if self.agent is not None:
            self.agent.on_dtmf(digit)

    def close(self) -> None:
        self._closed = True
        if self.agent is not None:
            self.agent.close()
        elif self._answered and self._verdict is None:
            result = self.detector.finish("hangup")  # the callee went before a verdict
            if result is not None:
                self._verdict = result
                self._report(result, None)

    def when_closed(self, callback: Callable[[], None]) -> None:
        if self.agent is not None:
            self.agent.when_closed(callback)
        else:
            callback()

    # -- the verdict -------------------------------------------------------------------------

    def _decided(self, result: AmdResult) -> None:
        self._verdict = result
        log.info("event=amd call_id=%s result=%s reason=%s analysis_ms=%d action=%s",
                 self.record.id, result.result, result.reason, result.analysis_ms,
                 self.action)  # fmt: skip
        if result.result != "machine" or self.action == "connect":
            self._report(result, None)
            self._start_agent(replay=True)
        elif self.action == "hangup":
            self._report(result, None)
            self.controls.hangup("gateway", EndReason.MACHINE_DETECTED)
        elif self.detector.beep is not None:  # the beep was heard during the analysis
            self._report(result, self.detector.beep.end_ms - result.analysis_ms)
            self._start_agent(replay=False)
        else:
            self._waiter = BeepWaiter(self.beep_timeout_ms, self.detector.beeps)

    def _report(self, result: AmdResult, beep_ms: int | None) -> None:
        beep = None if beep_ms is None else max(0, beep_ms)
        event = AmdDetected(call_id=self.record.id, result=result.result, reason=result.reason,
                            analysis_ms=result.analysis_ms, beep_ms=beep)  # fmt: skip
        self.controls.emit(event)

    def _start_agent(self, replay: bool) -> None:
        """The agent session, told the verdict in its start message's variables."""
        verdict = self._verdict
        assert verdict is not None
        variables = {
            **self.record.variables,
            "amd_result": verdict.result,
            "amd_reason": verdict.reason,
            "amd_analysis_ms": str(verdict.analysis_ms),
        }
        record = dataclasses.replace(self.record, variables=variables)
        agent = self._make_agent(record, self.controls)
        held, self._held = self._held, []
        self.agent = agent
        if replay:
            for frame in held:
                agent.on_caller_frame(frame)
