"""The SIP engine: one pjsua2 endpoint driven from one thread.

Every pjsua2 call happens on the SIP thread, which polls `libHandleEvents` and runs commands
submitted from other threads (`submit`). Engine events leave through `emit`, a callable the
owner provides (the worker hands them to its asyncio loop with call_soon_threadsafe).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from gateway.calls.admission import Admission, NodeLoad, RefusalLog, SocketBudget
from gateway.calls.events import (
    AgentLinkDown,
    AgentLinkUp,
    Answered,
    CallDialed,
    CallEvent,
    CallOffered,
    Completed,
    Failed,
    InvitesRefused,
    Ringing,
    TransferProgress,
    WorkerEvent,
)
from gateway.calls.leg import (
    Action,
    AgentConnected,
    AgentFailed,
    AnswerSent,
    CallLeg,
    ConnectAgent,
    Dialled,
    Ended,
    Final,
    Hangup,
    HangupRequested,
    Happening,
    Invited,
    InviteRefused,
    Limit,
    Lost,
    MediaFailed,
    MediaProbed,
    ProbeMedia,
    RefuseInvite,
    RefuseRinging,
    ReportAnswered,
    ReportRinging,
    ScheduleHangup,
    SendAnswer,
    SendRinging,
    StartTimer,
    TimedOut,
    leg_settings,
    reason_header_value,
)
from gateway.calls.model import CallRecord, CallState, EndReason
from gateway.calls.routing import InboundDecision, number_from_uri, route_inbound
from gateway.config import (
    Config,
    NumberRoute,
    Trunk,
    front_worker_side,
    is_wildcard,
    rtp_advertised_host,
)
from gateway.errors import CallRefused, SipedgeError, SipEngineError
from gateway.events.schema import new_call_id
from gateway.session.contract import (
    NARROWBAND_HZ,
    AnswerAware,
    CallControls,
    MediaSession,
    PlaneMedia,
    bridge_rate,
)
from gateway.sip.accounts import LocalAccount, TrunkAccount, TrunkState
from gateway.sip.bridge import UnclockedBridge
from gateway.sip.call import SipCall
from gateway.sip.endpoint import create_endpoint
from gateway.sip.executor import DatagramWaker, SipExecutor
from gateway.sip.ioqueue import IoQueueGauge, media_ioqueue
from gateway.sip.message import (
    caller_source,
    header,
    headers_matching,
    request_uri,
    source_address,
)
from gateway.sip.probe import probe_call_limit
from gateway.sip.rtpsock import RtpSockets
from gateway.sip.sanity import GateAnswer, RequestGate
from gateway.sip.sdp import srtp_refusal

log = logging.getLogger("sipedge.sip")

RECONCILE_S = 5.0  # how often the engine checks its calls against pjsua's
REFUSALS_REPORT_S = 1.0  # refused INVITEs are counted to the node at most this often

Emit = Callable[[WorkerEvent], None]
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
    amd: dict[str, Any] | None = None  # AmdRequest's fields: detect a machine on answer
    sip_headers: dict[str, str] = field(default_factory=dict)  # X- headers for the INVITE


def call_variables(message: str, trunk: Trunk | None, route: NumberRoute | None) -> dict[str, str]:
    """An inbound call's variables: the INVITE headers its number (or else its trunk) passes
    on, then the number's own variables, which win over a header of the same name."""
    if route is None:
        return {}
    patterns = route.headers_to_variables
    if patterns is None:
        patterns = trunk.headers_to_variables if trunk is not None else []
    return {**headers_matching(message, patterns), **route.variables}


def reason_header(reason: EndReason) -> pj.SipHeader:
    """RFC 3326 `Reason` for a BYE or CANCEL we send: Q.850 cause and our end reason."""
    value = pj.SipHeader()
    value.hName = "Reason"
    value.hValue = reason_header_value(reason)
    return value


class SipEngine:
    def __init__(
        self,
        config: Config,
        emit: Emit,
        make_session: SessionFactory,
        registers: Collection[str] | None = None,
    ) -> None:
        self.config = config
        # Behind a SIP front, where its requests come from: it names each caller's address.
        self._front = front_worker_side(config) if config.sip.front.mode != "none" else None
        # The registering trunks this worker registers (None: all). A node with many workers
        # has each trunk registered by one of them; the others load it without registering.
        self._registers = None if registers is None else frozenset(registers)
        self._emit = emit
        self.make_session = make_session
        self.capacity = 0  # effective concurrent calls, known after start()
        self.engine_limit = 0
        self.draining = False
        self.stopping = False
        self.calls: dict[str, SipCall] = {}
        self.trunks: dict[str, TrunkAccount] = {}
        self._retired: list[TrunkAccount] = []  # of trunks a reload removed, calls still up
        self._usable = 1  # call slots pjsua gives us (known after start)
        self._released: list[SipCall] = []
        self._refusing: dict[str, SipCall] = {}
        self.admission = Admission(config)
        self.refused: dict[str, int] = {}  # new INVITEs refused, by reason
        self._refused_unreported: dict[str, int] = {}
        self._refusal_log = RefusalLog()
        self._sockets = SocketBudget()
        self._gauge: IoQueueGauge | None = None
        self._bridge: UnclockedBridge | None = None
        # A timer acting on a call that has just gone (CallRefused) must not end the SIP thread.
        self._executor = SipExecutor(on_timer_error=(pj.Error, SipedgeError))
        self.submit = self._executor.submit
        self.schedule = self._executor.schedule
        self._waker: DatagramWaker | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: str | None = None
        self._done = threading.Event()
        self.calls_total = 0
        # node.media plane: each call's RTP socket is ours (its SDP names it) and the plane
        # serves it; pjsua's own media sockets are never advertised.
        self.rtp_sockets: RtpSockets | None = None
        self.rtp_host: str | None = None
        if config.node.media == "plane":
            sip = config.sip
            bind = sip.rtp_listen or sip.listen
            self.rtp_sockets = RtpSockets(bind, sip.rtp_ports.start, sip.rtp_ports.end)
            self.rtp_host = rtp_advertised_host(sip) or (None if is_wildcard(bind) else bind)

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
        except BaseException as exc:  # reported to start(), as text: see _abandon_lib
            self._start_error = exc.info() if isinstance(exc, pj.Error) else (str(exc) or repr(exc))
            self._abandon_lib()
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
        # In plane mode no bridge carries audio: its rate (and the session modules that
        # bridge_rate imports to learn an agent's) do not matter to this process.
        plane = self.rtp_sockets is not None
        rate = NARROWBAND_HZ if plane else bridge_rate(self.config)
        self.ep, self._log_writer = create_endpoint(sip, rate, media_clock=not plane)
        self._bridge = UnclockedBridge(rate) if plane else None
        self._gate = RequestGate(self._admit_invite)
        self._gauge = IoQueueGauge(media_ioqueue(self._gate.lib))
        # Calibrated with a datagram to ourselves; then it guards UDP and TCP alike.
        gated = "udp" in sip.transports and self._gate.install(
            sip.listen, sip.port, self.ep.libHandleEvents
        )
        self.engine_limit = probe_call_limit(self.ep, sip.listen)
        if "udp" in sip.transports:
            # An idle SIP thread sleeps in its poll until work comes (not 100 times a second).
            self._waker = DatagramWaker(sip.listen, sip.port)
            self._executor.set_waker(self._waker)
        # At the compiled limit pjsua itself answers 486 Busy Here (the wrong signal to a
        # carrier). The request gate answers 503 + Retry-After before pjsua sees the INVITE,
        # so every slot can carry a call; without the gate one slot stays free for refusing.
        usable = self.engine_limit if gated else self.engine_limit - 1
        self._usable = usable
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
            register = self._registers is None or trunk.id in self._registers
            self.trunks[trunk.id] = TrunkAccount(self, trunk, register=register)
            if not trunk.registers:
                self.on_trunk_state(self.trunks[trunk.id].state)
        self.schedule(RECONCILE_S, self._reconcile)

    def _loop(self) -> None:
        while not (self.stopping and not self.calls and self._stop_deadline_passed()):
            self.ep.libHandleEvents(self._executor.begin_poll())
            self._executor.run_due()
            self._released.clear()  # husks: each C++ Call died in its DISCONNECTED callback
            if self._bridge is not None:
                self._bridge.settle(len(self.calls))  # ended calls' streams off the bridge

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
            self.feed(call, HangupRequested("gateway", EndReason.DRAIN))
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

    def _abandon_lib(self) -> None:
        """SIP thread, after a failed start: destroy what _init_lib made here, on the thread
        pjlib knows (the exception is dropped with its traceback on this thread too; a
        pjsua2 object the main thread collected later would abort the process)."""
        ep = self.__dict__.pop("ep", None)
        if ep is not None:
            with contextlib.suppress(pj.Error):
                ep.libDestroy()
            del ep

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
        self._executor.set_waker(None)
        if self._waker is not None:
            self._waker.close()
        self.ep.libDestroy()
        log.info("event=sip_stopped")

    # -- events -------------------------------------------------------------------------------

    def emit(self, event: WorkerEvent) -> None:
        try:
            self._emit(event)
        except Exception:  # the engine must keep running whatever a listener does
            log.exception("event=emit_failed type=%s", type(event).__name__)

    def register(self, trunk_ids: Collection[str]) -> dict[str, dict[str, Any]]:
        """SIP thread: register these trunks from this worker from now on (the worker that
        registered them was lost); their states as they are now."""
        unknown = sorted(set(trunk_ids) - set(self.trunks))
        if unknown:
            raise CallRefused("unknown_trunk", f"trunk {unknown[0]!r} is not configured")
        for trunk_id in trunk_ids:
            self.trunks[trunk_id].start_registering()
        return {tid: self.trunks[tid].state.as_event().as_status() for tid in trunk_ids}

    def reconfigure(self, config: Config, registers: Collection[str]) -> dict[str, Any]:
        """SIP thread: a reload's config (this worker's slot of it). Calls up go on with the
        settings they started with; new calls are routed, limited and given agents by the new
        config. Trunks added are loaded (registered here if in `registers`), trunks changed
        are modified in place, trunks removed stop registering and taking calls, and their
        accounts go once no call uses them."""
        old = self.config
        self.config = config
        self._registers = frozenset(registers)
        self.admission = Admission(config, keep=self.admission)
        self.capacity = max(1, min(config.limits.max_concurrent_calls, self._usable))
        wanted = {trunk.id: trunk for trunk in config.trunks}
        for trunk_id in sorted(set(self.trunks) - set(wanted)):
            account = self.trunks.pop(trunk_id)
            account.unregister()
            self._retired.append(account)
            log.info("event=trunk_removed trunk=%s", trunk_id)
        for trunk_id, trunk in wanted.items():
            loaded = self.trunks.get(trunk_id)
            if loaded is None:
                added = TrunkAccount(self, trunk, register=trunk_id in self._registers)
                self.trunks[trunk_id] = added
                log.info("event=trunk_added trunk=%s", trunk_id)
                if not trunk.registers:
                    self.on_trunk_state(added.state)
            elif loaded.trunk != trunk:
                loaded.reconfigure(trunk)
                log.info("event=trunk_changed trunk=%s", trunk_id)
                if trunk_id in self._registers:
                    loaded.start_registering()  # no-op if it registers already
        if [t.srtp for t in old.trunks] != [t.srtp for t in config.trunks]:
            self.local_account.reconfigure()
        self._count_trunk_calls()
        if old.limits != config.limits:
            log.info("event=limits_changed capacity=%d", self.capacity)
        return self.status()

    def _retire_accounts(self) -> None:
        """Accounts of trunks a reload removed go once none of their calls is up."""
        busy = {call.record.trunk for call in self.calls.values()}
        for account in list(self._retired):
            if account.trunk.id not in busy and account.trunk.id not in self.trunks:
                self._retired.remove(account)
                account.shutdown()

    def on_trunk_state(self, state: TrunkState) -> None:
        self.emit(state.as_event())

    def status(self) -> dict[str, Any]:
        return {
            "engine_call_limit": self.engine_limit,
            "capacity": self.capacity,
            "active_calls": len(self.calls),
            "calls_total": self.calls_total,
            "draining": self.draining,
            "refused": dict(self.refused),
            "media_sockets_free": self._gauge.free
            if self._gauge and self._gauge.available
            else None,
            "trunks": {tid: acc.state.as_event().as_status() for tid, acc in self.trunks.items()},
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

    def _admit_invite(self, message: bytes, sender: tuple[str, int]) -> GateAnswer | None:
        """Request gate, SIP thread, before pjsua creates anything for a new INVITE: the answer
        that refuses it, or None to let pjsua take it (then on_incoming routes it)."""
        text = message.decode("utf-8", "replace")
        source = caller_source(text, sender, self._front)
        if header(text, "call-id") in self._live_sip_call_ids():
            return None  # a retransmission: the transaction layer absorbs it
        now = time.monotonic()
        load = self._load(unconfirmed=True)
        dialled = [number_from_uri(request_uri(text)), number_from_uri(header(text, "to"))]
        _, refusal = self.admission.decide(source, [d for d in dialled if d], load, now)
        if refusal is None:
            return None
        self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
        if not self._refused_unreported:
            self.schedule(REFUSALS_REPORT_S, self._report_refusals)
        unreported = self._refused_unreported
        unreported[refusal.reason] = unreported.get(refusal.reason, 0) + 1
        log.debug(
            "event=call_refused sip_call_id=%s source=%s code=%d reason=%s",
            header(text, "call-id"),
            source,
            refusal.code,
            refusal.reason,
        )  # every one at DEBUG; the INFO line below is rate-limited per source
        count = self._refusal_log.note(source, refusal.reason, now)
        if count is not None:
            log.info(
                "event=call_refused source=%s code=%d reason=%s detail=%r refused_since_last=%d "
                "active_calls=%d",
                source,
                refusal.code,
                refusal.reason,
                refusal.detail,
                count,
                len(self.calls),
            )
        return GateAnswer(refusal.code, refusal.retry_after)

    def _load(self, unconfirmed: bool = False) -> NodeLoad:
        """What admission needs to know of this worker now (SIP thread)."""
        return NodeLoad(
            active_calls=len(self.calls) + len(self._refusing),
            capacity=self.capacity,
            active_by_trunk=self._active_by_trunk(),
            unconfirmed_by_source=self._unconfirmed_by_source() if unconfirmed else {},
            draining=self.draining,
            room_for_media=self._room_for_media(),
        )

    def _report_refusals(self) -> None:
        """Refusal counts go to the node's metrics batched, not one message per INVITE."""
        counts, self._refused_unreported = self._refused_unreported, {}
        self.emit(InvitesRefused(counts=counts))

    def _room_for_media(self) -> bool:
        gauge = self._gauge
        return gauge is None or not gauge.available or self._sockets.room_for_call(gauge.free)

    def _live_sip_call_ids(self) -> set[str]:
        return {c.record.sip_call_id for c in self.calls.values()} | {
            c.record.sip_call_id for c in self._refusing.values()
        }

    def _unconfirmed_by_source(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls.values():
            if call.record.direction == "inbound" and call.record.state != CallState.ANSWERED:
                counts[call.source] = counts.get(call.source, 0) + 1
        return counts

    def on_incoming(self, account: pj.Account, prm: Any) -> None:
        message = prm.rdata.wholeMsg
        src = caller_source(message, source_address(prm.rdata.srcAddress), self._front)
        dialled = [number_from_uri(request_uri(message)), number_from_uri(header(message, "to"))]
        caller = number_from_uri(header(message, "from"))
        # Admitted by the request gate just before (same thread): this only finds the route.
        decision = route_inbound(
            self.config, src, [d for d in dialled if d], self._active_by_trunk()
        )
        trunk = decision.trunk
        if decision.accept and trunk is not None:
            refusal = srtp_refusal(trunk.srtp, message.partition("\r\n\r\n")[2])
            if refusal is not None:
                decision = InboundDecision(False, 488, refusal, trunk, decision.route)
        route = decision.route
        record = CallRecord(
            id=new_call_id(),
            direction="inbound",
            trunk=decision.trunk.id if decision.trunk else "",
            from_number=caller,
            # The routed number, wherever it was found: a carrier reaching a registered trunk
            # puts the trunk's user in the Request-URI and the dialled number in To.
            to_number=route.number if route else (dialled[0] or dialled[1]),
            agent=route.agent if route else "",
            variables=call_variables(message, decision.trunk, route),
            sip_call_id=header(message, "call-id"),
        )
        leg = CallLeg(record, leg_settings(self.config, route))
        call = SipCall(self, account, leg, prm.callId)
        call.source = src
        if not decision.accept or route is None:
            log.info(
                "event=call_refused call_id=%s sip_call_id=%s source=%s to=%s code=%d reason=%r",
                record.id,
                record.sip_call_id,
                src,
                record.to_number,
                decision.sip_code,
                decision.reason,
            )
            self.feed(call, InviteRefused(decision.sip_code))
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
        self.emit(CallOffered(**self._parties(record)))
        self.feed(call, Invited())

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
    def _parties(record: CallRecord) -> dict[str, Any]:
        return {
            "call_id": record.id,
            "from_number": record.from_number,
            "to_number": record.to_number,
            "trunk": record.trunk,
            "agent": record.agent,
            "variables": record.variables,
            "sip_call_id": record.sip_call_id,
        }

    # -- outbound -----------------------------------------------------------------------------

    def originate(self, req: OriginateRequest) -> str:
        """SIP thread: send the INVITE or raise CallRefused before anything goes out."""
        refusal = self.admission.decide_outbound(req.trunk, req.to, req.agent, self._load())
        if refusal is not None:
            raise CallRefused(refusal.reason, refusal.detail)
        account = self.trunks[req.trunk]
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
            amd=req.amd,
        )
        account.use_caller_id(req.caller_id)
        settings = leg_settings(self.config, ring_timeout=req.ring_timeout)
        call = SipCall(self, account, CallLeg(record, settings))
        op = pj.CallOpParam(True)
        if caller_id and account.trunk.registers:
            pai = pj.SipHeader()
            pai.hName, pai.hValue = (
                "P-Asserted-Identity",
                f"<sip:{caller_id}@{account.domain}>",
            )
            op.txOption.headers.append(pai)
        for name, value in req.sip_headers.items():
            extra = pj.SipHeader()
            extra.hName, extra.hValue = name, value
            op.txOption.headers.append(extra)
        try:
            call.makeCall(account.target_uri(req.to), op)
        except pj.Error as exc:
            call.__disown__()  # a Call that never got a pjsua id must not run its destructor
            raise CallRefused("failed", f"INVITE could not be sent: {exc.reason}") from None
        record.sip_call_id = call.getInfo().callIdString
        self.calls[record.id] = call
        self.calls_total += 1
        self._count_trunk_calls()
        self.feed(call, Dialled())
        log.info(
            "event=call_placed call_id=%s trunk=%s to=%s agent=%s",
            record.id,
            record.trunk,
            record.to_number,
            record.agent,
        )
        self.emit(CallDialed(**self._parties(record)))
        return record.id

    # -- call control -------------------------------------------------------------------------

    def hangup(self, call_id: str, by: str = "control_plane") -> None:
        self.feed(self._get(call_id), HangupRequested(by))

    def send_dtmf(self, call_id: str, digits: str) -> None:
        call = self._get(call_id)
        if call.record.state != CallState.ANSWERED:
            raise CallRefused("conflict", f"call {call_id} is not answered; cannot send DTMF")
        if isinstance(call.session, PlaneMedia):
            call.session.send_dtmf(digits)
        else:
            call.dialDtmf(digits)

    def transfer(self, call_id: str, target: str) -> None:
        call = self._get(call_id)
        if call.record.state != CallState.ANSWERED:
            raise CallRefused("conflict", f"call {call_id} is not answered; cannot transfer")
        call.transfer_target = target
        call.xfer(target, pj.CallOpParam(True))
        self.emit(TransferProgress(call_id=call.record.id, target=target, status="requested"))

    def controls(self, record: CallRecord) -> CallControls:
        def emit(event: CallEvent) -> None:
            self.emit(event)
            if isinstance(event, AgentLinkUp | AgentLinkDown):
                news = AgentConnected() if isinstance(event, AgentLinkUp) else AgentFailed()
                self.submit(lambda: self._feed_live(record.id, news))

        def hangup(by: str, reason: str | None = None) -> None:
            why = EndReason(reason) if reason else EndReason.NORMAL
            self.submit(lambda: self._feed_live(record.id, HangupRequested(by, why)))

        def media_failed() -> None:
            self.submit(lambda: self._feed_live(record.id, MediaFailed()))

        return CallControls(record.id, emit, hangup, media_failed)

    def _get(self, call_id: str) -> SipCall:
        call = self.calls.get(call_id)
        if call is None:
            raise CallRefused("call_not_found", f"no active call {call_id}")
        return call

    # -- call lifecycle: what each call's leg decides, done ------------------------------------

    def feed(self, call: SipCall, happening: Happening) -> None:
        """SIP thread: tell the call's leg what happened and do what it says, in order."""
        for action in call.leg.handle(happening):
            self._perform(call, action)

    def _feed_live(self, call_id: str, happening: Happening) -> None:
        """As feed, for a call that may have ended since (a timer, another thread's news)."""
        call = self.calls.get(call_id)
        if call is not None:
            self.feed(call, happening)

    def _perform(self, call: SipCall, action: Action) -> None:
        rec = call.record
        match action:
            case SendRinging():
                ringing = pj.CallOpParam()
                ringing.statusCode = 180
                call.answer(ringing)
            case ConnectAgent():
                call.session = self.make_session(rec, self.controls(rec))
            case SendAnswer():
                ok = pj.CallOpParam()
                ok.statusCode = 200
                try:
                    call.answer(ok)
                except pj.Error as exc:
                    log.warning("event=answer_failed call_id=%s error=%s", rec.id, exc.reason)
                    return
                self.feed(call, AnswerSent(time.time()))
            case RefuseInvite(sip_code=code):
                self._refuse(call, code)
            case RefuseRinging(sip_code=code, reason=reason):
                log.info("event=call_refused call_id=%s code=%d reason=%s", rec.id, code, reason)
                op = pj.CallOpParam()
                op.statusCode = code
                self._end(call, op)
            case Hangup(reason=reason):
                op = pj.CallOpParam(True)
                op.txOption.headers.append(reason_header(reason))
                self._end(call, op)
            case ScheduleHangup(by=by):  # not from inside the pjsua callback now running
                self.schedule(0, lambda: self.hangup(rec.id, by))
            case StartTimer(after=after, then=then):
                call.timers.append(self.schedule(after, lambda: self._feed_live(rec.id, then)))
            case ProbeMedia(after=after):
                call.timers.append(self.schedule(after, lambda: self._probe_media(rec.id)))
            case ReportRinging(sip_code=code):
                self.emit(Ringing(call_id=rec.id, sip_code=code))
            case ReportAnswered(at=at):
                self.on_answered(call, at)
            case TimedOut(limit=limit):
                level = logging.WARNING if limit is Limit.AGENT_CONNECT else logging.INFO
                where = f" source={call.source}" if call.source else ""
                log.log(level, "event=%s call_id=%s%s", limit, rec.id, where)
            case Ended(final=final):
                call.release_media()  # the port leaves the bridge before its session closes
                self.on_ended(call, final)

    def _end(self, call: SipCall, op: pj.CallOpParam) -> None:
        try:
            call.hangup(op)
        except pj.Error as exc:
            log.warning("event=hangup_failed call_id=%s error=%s", call.record.id, exc.reason)

    def _probe_media(self, call_id: str) -> None:
        call = self.calls.get(call_id)
        if call is not None:
            self.feed(call, MediaProbed(time.monotonic(), call.rx_packets(), call.on_hold))

    def on_answered(self, call: SipCall, at: float) -> None:
        rec = call.record
        log.info("event=call_answered call_id=%s codec=%s", rec.id, call.codec)
        if isinstance(call.session, AnswerAware):
            call.session.answered()
        self.emit(Answered(call_id=rec.id, codec=call.codec, answered_at=at))

    def _reconcile(self) -> None:
        """The live-call count must be the calls really up: end calls pjsua no longer has (a
        DISCONNECTED we never saw), so they cannot hold capacity until the worker dies."""
        for call in list(self.calls.values()) + list(self._refusing.values()):
            if not call.is_gone():
                continue
            rec = call.record
            log.warning("event=phantom_call_dropped call_id=%s state=%s", rec.id, rec.state.value)
            call.__disown__()  # its pjsua slot may hold another call now: never hang that up
            if self._refusing.pop(rec.id, None) is not None:
                continue
            self.feed(call, Lost(time.time()))
            if self._released and self._released[-1] is call:
                self._released.pop()  # disowned: the Python object may go, the C++ one stays
        self._retire_accounts()
        self.schedule(RECONCILE_S, self._reconcile)

    def on_ended(self, call: SipCall, final: Final | None) -> None:
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
        if final is None:
            return
        end = final.reason.value
        if final.completed:
            log.info(
                "event=call_completed call_id=%s duration=%.1f reason=%s hangup_by=%s",
                rec.id,
                final.duration,
                end,
                final.hangup_by,
            )
            summary = getattr(call.session, "latency_summary", None)
            self._emit_final(
                call,
                Completed(
                    call_id=rec.id,
                    duration=round(final.duration, 3),
                    reason=end,
                    sip_code=final.sip_code,
                    hangup_by=final.hangup_by,
                    latency=(summary() or None) if summary else None,
                ),
            )
        else:
            log.info(
                "event=call_failed call_id=%s reason=%s sip_code=%d", rec.id, end, final.sip_code
            )
            self._emit_final(
                call,
                Failed(
                    call_id=rec.id,
                    reason=end,
                    sip_code=final.sip_code,
                    sip_reason=final.sip_reason,
                    hangup_by=final.hangup_by,
                ),
            )

    def _emit_final(self, call: SipCall, event: Completed | Failed) -> None:
        """call.completed/call.failed, the last event of a call: sent once the call's media
        session has emitted its own last events (speech cut off by the hang-up, the
        recording), from whichever thread that finishes on. Never blocks the SIP thread."""
        session = call.session
        if session is None:
            self.emit(event)
        else:
            session.when_closed(lambda: self.emit(event))
