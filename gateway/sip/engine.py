"""The SIP engine: one pjsua2 endpoint driven from one thread.

Every pjsua2 call happens on the SIP thread, which polls `libHandleEvents` and runs commands
submitted from other threads (`submit`). Engine events leave through `emit`, a callable the
owner provides (the worker hands them to its asyncio loop with call_soon_threadsafe).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from gateway.calls import (
    CallRecord,
    CallState,
    EndReason,
    destination_allowed,
    number_from_uri,
    route_inbound,
)
from gateway.config import Config
from gateway.errors import CallRefused, SipEngineError
from gateway.events import new_call_id
from gateway.media_session import CallControls, MediaSession, bridge_rate
from gateway.sip.accounts import LocalAccount, TrunkAccount, TrunkState
from gateway.sip.call import SipCall
from gateway.sip.endpoint import create_endpoint
from gateway.sip.executor import SipExecutor
from gateway.sip.message import header, request_uri, source_ip
from gateway.sip.probe import probe_call_limit
from gateway.sip.sanity import RequestGate

log = logging.getLogger("sipedge.sip")

Emit = Callable[[str, str | None, dict[str, Any]], None]
SessionFactory = Callable[[CallRecord, CallControls], MediaSession]


@dataclass
class OriginateRequest:
    to: str
    trunk: str
    agent: str
    caller_id: str | None = None
    variables: dict[str, str] = field(default_factory=dict)
    ring_timeout: int | None = None
    call_id: str | None = None
    record: bool | None = None


class SipEngine:
    def __init__(self, config: Config, emit: Emit, make_session: SessionFactory) -> None:
        self.config = config
        self._emit = emit
        self.make_session = make_session
        self.capacity = 0  # effective concurrent calls, known after start()
        self.engine_limit = 0
        self.draining = False
        self.stopping = False
        self.calls: dict[str, SipCall] = {}
        self.trunks: dict[str, TrunkAccount] = {}
        self._released: list[SipCall] = []
        self._refusing: dict[str, SipCall] = {}
        self._executor = SipExecutor(on_timer_error=pj.Error)
        self.submit = self._executor.submit
        self.schedule = self._executor.schedule
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._done = threading.Event()
        self.calls_total = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        self._thread = threading.Thread(target=self._run, name="sip", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SipEngineError("SIP engine did not start in time")
        if self._start_error is not None:
            raise SipEngineError(f"SIP engine failed to start: {self._start_error}")

    def stop(self, timeout: float = 10.0) -> None:
        """Hang up every call, unregister trunks, destroy the endpoint."""
        if self._thread is None:
            return
        self.submit(self._begin_stop)
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._init_lib()
        except BaseException as exc:  # reported to start()
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        finally:
            self._shutdown_lib()
            self._done.set()

    def _init_lib(self) -> None:
        sip = self.config.sip
        self.ep, self._log_writer = create_endpoint(sip, bridge_rate(self.config))
        self._gate = RequestGate(self._refuse_new_call)
        # Calibrated with a datagram to ourselves; then it guards UDP and TCP alike.
        gated = "udp" in sip.transports and self._gate.install(
            sip.listen, sip.port, self.ep.libHandleEvents
        )
        self.engine_limit = probe_call_limit(self.ep, sip.listen)
        # At the compiled limit pjsua itself answers 486 Busy Here (the wrong signal to a
        # carrier). The request gate answers 503 + Retry-After before pjsua sees the INVITE,
        # so every slot can carry a call; without the gate one slot stays free for refusing.
        usable = self.engine_limit if gated else self.engine_limit - 1
        self.capacity = max(1, min(self.config.limits.max_concurrent_calls, usable))
        log.info(
            "event=sip_started listen=%s:%d transports=%s engine_call_limit=%d capacity=%d",
            sip.listen,
            sip.port,
            ",".join(sip.transports),
            self.engine_limit,
            self.capacity,
        )
        self.local_account = LocalAccount(self)
        for trunk in self.config.trunks:
            self.trunks[trunk.id] = TrunkAccount(self, trunk)
            if not trunk.registers:
                self.on_trunk_state(self.trunks[trunk.id].state)

    def _loop(self) -> None:
        while not (self.stopping and not self.calls and self._stop_deadline_passed()):
            self.ep.libHandleEvents(self._executor.poll_ms())
            self._executor.run_due()
            self._released.clear()  # pjsua2 Call objects die here, outside their callbacks

    # -- shutdown -----------------------------------------------------------------------------

    def drain(self) -> None:
        """Stop taking calls: new INVITEs get 503 while active calls continue."""
        self.draining = True
        log.info("event=draining active_calls=%d", len(self.calls))

    def _begin_stop(self) -> None:
        self.draining = True
        self.stopping = True
        self._stop_at = time.monotonic() + 3.0
        for call in list(self.calls.values()):
            self._hangup(call, "gateway", EndReason.NORMAL)
        waiting = [acc for acc in self.trunks.values() if acc.unregister()]
        if waiting:
            log.info("event=unregistering trunks=%s", ",".join(a.trunk.id for a in waiting))

    def _stop_deadline_passed(self) -> bool:
        if time.monotonic() >= self._stop_at:
            return True
        unregistering = any(
            a.unregistering and a.state.state == "registered" for a in self.trunks.values()
        )
        return not unregistering

    def _shutdown_lib(self) -> None:
        try:
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.ep.libHandleEvents(10)
        except pj.Error as exc:
            log.warning("event=shutdown_hangup_failed error=%s", exc.info())
        self.calls.clear()
        self._refusing.clear()
        self._released.clear()
        self.trunks.clear()
        del self.local_account
        self.ep.libDestroy()
        log.info("event=sip_stopped")

    # -- events -------------------------------------------------------------------------------

    def emit(self, kind: str, record: CallRecord | None, data: dict[str, Any]) -> None:
        try:
            self._emit(kind, record.id if record else None, data)
        except Exception:  # the engine must keep running whatever a listener does
            log.exception("event=emit_failed type=%s", kind)

    def on_trunk_state(self, state: TrunkState) -> None:
        self.emit("trunk.state", None, state.as_dict())

    def status(self) -> dict[str, Any]:
        return {
            "engine_call_limit": self.engine_limit,
            "capacity": self.capacity,
            "active_calls": len(self.calls),
            "calls_total": self.calls_total,
            "draining": self.draining,
            "trunks": {tid: acc.state.as_dict() for tid, acc in self.trunks.items()},
        }

    def _active_by_trunk(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls.values():
            counts[call.record.trunk] = counts.get(call.record.trunk, 0) + 1
        return counts

    def _count_trunk_calls(self) -> None:
        counts = self._active_by_trunk()
        for tid, acc in self.trunks.items():
            acc.state.active_calls = counts.get(tid, 0)

    # -- inbound ------------------------------------------------------------------------------

    def on_incoming(self, account: pj.Account, prm: Any) -> None:
        message = prm.rdata.wholeMsg
        src = source_ip(prm.rdata.srcAddress)
        dialled = [number_from_uri(request_uri(message)), number_from_uri(header(message, "to"))]
        caller = number_from_uri(header(message, "from"))
        decision = route_inbound(
            self.config,
            src,
            [d for d in dialled if d],
            len(self.calls),
            self.capacity,
            self._active_by_trunk(),
            self.draining,
        )
        record = CallRecord(
            id=new_call_id(),
            direction="inbound",
            trunk=decision.trunk.id if decision.trunk else "",
            from_number=caller,
            to_number=dialled[0] or dialled[1],
            agent=decision.route.agent if decision.route else "",
            variables=dict(decision.route.variables) if decision.route else {},
            sip_call_id=header(message, "call-id"),
        )
        call = SipCall(self, account, record, prm.callId)
        if not decision.accept:
            log.info(
                "event=call_refused call_id=%s sip_call_id=%s source=%s to=%s code=%d reason=%r",
                record.id,
                record.sip_call_id,
                src,
                record.to_number,
                decision.sip_code,
                decision.reason,
            )
            record.end_reason = EndReason.REJECTED
            self._refuse(call, decision.sip_code)
            self._refusing[record.id] = call  # holds a pjsua slot until DISCONNECTED
            return
        self.calls[record.id] = call
        self.calls_total += 1
        self._count_trunk_calls()
        log.info(
            "event=call_incoming call_id=%s trunk=%s from=%s to=%s agent=%s source=%s",
            record.id,
            record.trunk,
            record.from_number,
            record.to_number,
            record.agent,
            src,
        )
        self.emit("call.incoming", record, self._call_data(record))
        ringing = pj.CallOpParam()
        ringing.statusCode = 180
        call.answer(ringing)
        record.advance(CallState.RINGING)
        assert decision.route is not None
        delay = decision.route.answer_delay_ms / 1000
        if delay:
            call_id = record.id
            call.timers.append(self.schedule(delay, lambda: self._answer(call_id)))
        else:
            self._answer(record.id)

    def _answer(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.record.state != CallState.RINGING:
            return  # cancelled while ringing
        ok = pj.CallOpParam()
        ok.statusCode = 200
        try:
            call.answer(ok)
        except pj.Error as exc:
            log.warning("event=answer_failed call_id=%s error=%s", call_id, exc.reason)

    def _refuse_new_call(self) -> int | None:
        """Request gate, SIP thread: Retry-After seconds to refuse a new INVITE with 503."""
        if self.draining or len(self.calls) + len(self._refusing) >= self.capacity:
            log.info(
                "event=call_refused code=503 reason=%r active_calls=%d",
                "draining" if self.draining else "node at capacity",
                len(self.calls),
            )
            return self.config.limits.retry_after
        return None

    def _refuse(self, call: SipCall, code: int) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        if code == 503:
            retry = pj.SipHeader()
            retry.hName = "Retry-After"
            retry.hValue = str(self.config.limits.retry_after)
            op.txOption.headers.append(retry)
        call.answer(op)  # a final answer carries txOption headers; hangup() drops them

    @staticmethod
    def _call_data(record: CallRecord) -> dict[str, Any]:
        return {
            "direction": record.direction,
            "from": record.from_number,
            "to": record.to_number,
            "trunk": record.trunk,
            "agent": record.agent,
            "variables": record.variables,
            "sip_call_id": record.sip_call_id,
        }

    # -- outbound -----------------------------------------------------------------------------

    def originate(self, req: OriginateRequest) -> str:
        """SIP thread: send the INVITE or raise CallRefused before anything goes out."""
        account = self.trunks.get(req.trunk)
        if account is None:
            raise CallRefused("unknown_trunk", f"trunk {req.trunk!r} is not configured")
        if self.config.agent(req.agent) is None:
            raise CallRefused("unknown_agent", f"agent {req.agent!r} is not configured")
        if not destination_allowed(account.trunk, req.to):
            raise CallRefused(
                "destination_not_allowed",
                f"{req.to} is outside trunk {req.trunk}'s allowed_destinations "
                f"({', '.join(account.trunk.allowed_destinations)})",
            )
        if self.draining:
            raise CallRefused("draining", "the node is draining and takes no new calls")
        if len(self.calls) >= self.capacity:
            raise CallRefused("capacity_exceeded", f"node at capacity ({self.capacity} calls)")
        if self._active_by_trunk().get(req.trunk, 0) >= account.trunk.max_concurrent_calls:
            raise CallRefused("capacity_exceeded", f"trunk {req.trunk} at max_concurrent_calls")
        caller_id = req.caller_id or account.trunk.caller_id or ""
        record = CallRecord(
            id=req.call_id or new_call_id(),
            direction="outbound",
            trunk=req.trunk,
            from_number=caller_id,
            to_number=req.to,
            agent=req.agent,
            variables=dict(req.variables),
            state=CallState.DIALING,
            record=req.record,
        )
        account.use_caller_id(req.caller_id)
        call = SipCall(self, account, record)
        op = pj.CallOpParam(True)
        if caller_id and account.trunk.registers:
            pai = pj.SipHeader()
            pai.hName, pai.hValue = (
                "P-Asserted-Identity",
                f"<sip:{caller_id}@{account.domain}>",
            )
            op.txOption.headers.append(pai)
        try:
            call.makeCall(account.target_uri(req.to), op)
        except pj.Error as exc:
            call.__disown__()  # a Call that never got a pjsua id must not run its destructor
            raise CallRefused("failed", f"INVITE could not be sent: {exc.reason}") from None
        record.sip_call_id = call.getInfo().callIdString
        self.calls[record.id] = call
        self.calls_total += 1
        self._count_trunk_calls()
        ring_timeout = req.ring_timeout or self.config.limits.ring_timeout
        call_id = record.id
        call.timers.append(self.schedule(ring_timeout, lambda: self._ring_timeout(call_id)))
        log.info(
            "event=call_placed call_id=%s trunk=%s to=%s agent=%s",
            record.id,
            record.trunk,
            record.to_number,
            record.agent,
        )
        self.emit("call.placed", record, self._call_data(record))
        return record.id

    def _ring_timeout(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is None or call.record.state not in (CallState.DIALING, CallState.RINGING):
            return
        call.timed_out = True
        self._hangup(call, "gateway", EndReason.NO_ANSWER)

    # -- call control -------------------------------------------------------------------------

    def hangup(self, call_id: str, by: str = "control_plane") -> None:
        call = self._get(call_id)
        self._hangup(call, by, EndReason.NORMAL)

    def _hangup(self, call: SipCall, by: str, reason: EndReason) -> None:
        rec = call.record
        rec.hangup_by = rec.hangup_by or by
        if rec.state != CallState.ANSWERED:
            rec.end_reason = rec.end_reason or (
                EndReason.NO_ANSWER if reason == EndReason.NO_ANSWER else EndReason.CANCELLED
            )
        else:
            rec.end_reason = rec.end_reason or reason
        try:
            call.hangup(pj.CallOpParam(True))
        except pj.Error as exc:
            log.warning("event=hangup_failed call_id=%s error=%s", rec.id, exc.reason)

    def send_dtmf(self, call_id: str, digits: str) -> None:
        call = self._get(call_id)
        if call.record.state != CallState.ANSWERED:
            raise CallRefused("conflict", f"call {call_id} is not answered; cannot send DTMF")
        call.dialDtmf(digits)

    def transfer(self, call_id: str, target: str) -> None:
        call = self._get(call_id)
        if call.record.state != CallState.ANSWERED:
            raise CallRefused("conflict", f"call {call_id} is not answered; cannot transfer")
        call.transfer_target = target
        call.xfer(target, pj.CallOpParam(True))
        self.emit("call.transfer", call.record, {"target": target, "status": "requested"})

    def controls(self, record: CallRecord) -> CallControls:
        def emit(kind: str, data: dict[str, Any]) -> None:
            self.emit(kind, record, data)

        def hangup(by: str) -> None:
            def run() -> None:
                call = self.calls.get(record.id)
                if call is not None:
                    self._hangup(call, by, EndReason.NORMAL)

            self.submit(run)

        return CallControls(record.id, emit, hangup)

    def _get(self, call_id: str) -> SipCall:
        call = self.calls.get(call_id)
        if call is None:
            raise CallRefused("call_not_found", f"no active call {call_id}")
        return call

    # -- call lifecycle (from SipCall) --------------------------------------------------------

    def on_answered(self, call: SipCall) -> None:
        rec = call.record
        log.info("event=call_answered call_id=%s codec=%s", rec.id, call.codec)
        self.emit("call.answered", rec, {"codec": call.codec, "answered_at": call.answered_at})
        limit = self.config.limits.max_call_duration
        call_id = rec.id
        call.timers.append(self.schedule(limit, lambda: self._duration_exceeded(call_id)))

    def _duration_exceeded(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            log.info("event=max_call_duration call_id=%s", call_id)
            self._hangup(call, "gateway", EndReason.TIMEOUT)

    def on_ended(self, call: SipCall, answered: bool, code: int, reason: str) -> None:
        rec = call.record
        for timer in call.timers:
            timer.cancel()
        if self.calls.pop(rec.id, None) is None:
            refused = self._refusing.pop(rec.id, None)
            if refused is not None:
                self._released.append(refused)
            return  # a refused INVITE, already logged
        self._count_trunk_calls()
        self._released.append(call)
        end = rec.end_reason.value if rec.end_reason else "normal"
        if answered:
            duration = call.duration()
            log.info(
                "event=call_completed call_id=%s duration=%.1f reason=%s hangup_by=%s",
                rec.id,
                duration,
                end,
                rec.hangup_by,
            )
            summary = getattr(call.session, "latency_summary", None)
            self._emit_final(
                call,
                "call.completed",
                {
                    "duration": round(duration, 3),
                    "reason": end,
                    "sip_code": code,
                    "hangup_by": rec.hangup_by,
                    "codec": call.codec,
                    "latency": (summary() or None) if summary else None,
                },
            )
        else:
            log.info("event=call_failed call_id=%s reason=%s sip_code=%d", rec.id, end, code)
            self._emit_final(
                call,
                "call.failed",
                {
                    "reason": end,
                    "sip_code": code,
                    "sip_reason": reason,
                    "hangup_by": rec.hangup_by,
                },
            )

    def _emit_final(self, call: SipCall, kind: str, data: dict[str, Any]) -> None:
        """call.completed/call.failed, the last event of a call: sent once the call's media
        session has emitted its own last events (speech cut off by the hang-up, the
        recording), from whichever thread that finishes on. Never blocks the SIP thread."""
        session, record = call.session, call.record
        if session is None:
            self.emit(kind, record, data)
        else:
            session.when_closed(lambda: self.emit(kind, record, data))
