"""One call leg as a state machine: what happened on the SIP side goes in, what to do comes out.

Pure logic with no I/O, no pjsua2, no threads and no clock: the SIP adapter (gateway/sip) feeds
a leg its happenings, with the time where one matters, and performs the actions it returns, in
order. When to answer, when to give up, why a call ended, who hung up and what its last event
says are decided here, so they are tested with plain function calls.

Rule 1: a leg's state moves only as the tables below say (INBOUND, OUTBOUND), and only along
gateway.calls.model.TRANSITIONS. A happening its state does not take (a timer that fired as the
call moved on, a callback repeated, an answer after the end) is ignored: it changes nothing and
asks for nothing. Whatever else a happening does is in `CallLeg._act`, and nowhere else.

Rule 2: once we have ended the call ourselves (a BYE, a CANCEL or a final answer sent), only
what the far end and pjsua report still counts (TAKEN_WHILE_ENDING): the first reason to end a
call is the one it ends with; a timer or a second hang-up changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from gateway.calls.model import CallRecord, CallState, EndReason, failure_reason
from gateway.config import Config, NumberRoute


class Limit(enum.StrEnum):
    """A limit of a call that ran out; its value names it in the log."""

    RING = "ring_timeout"  # outbound: nobody answered in time
    AGENT_CONNECT = "agent_connect_timeout"  # inbound: the agent did not connect while ringing
    ACK = "ack_timeout"  # inbound: our 200 was never ACKed
    MAX_DURATION = "max_call_duration"
    MEDIA = "media_timeout"  # no RTP from the far end


class Wait(enum.Enum):
    """What an inbound call's 200 waits for."""

    AGENT = "agent"
    DELAY = "delay"


@dataclass(frozen=True)
class LegSettings:
    """What a leg is told when it starts, in seconds: config.limits, and for an inbound call
    what its route and agent say about answering."""

    max_call_duration: float
    media_timeout: float = 0.0  # answered: hang up after this long without RTP (0: never)
    ring_timeout: float = 30.0  # outbound: give up when nobody answered
    ack_timeout: float = 5.0  # inbound: give up when the ACK of our 200 never comes
    answer_delay: float = 0.0  # inbound: ring at least this long before answering
    agent_wait: float | None = None  # inbound: answer once the agent is connected, or after this
    keep_without_agent: bool = False  # ...and then answer anyway (on_agent_failure: keep), no 480


def leg_settings(
    config: Config, route: NumberRoute | None = None, ring_timeout: int | None = None
) -> LegSettings:
    """A leg's settings from the config, the inbound call's route (None: outbound, or refused)
    and an outbound call's own ring timeout."""
    limits = config.limits
    agent = config.agent(route.agent) if route else None
    agent_wait = None
    if route and route.answer_after_agent and agent is not None and agent.type != "echo":
        agent_wait = agent.connect_timeout + 1.0  # a streaming agent connects while ringing
    return LegSettings(
        max_call_duration=limits.max_call_duration,
        media_timeout=limits.media_timeout,
        ring_timeout=ring_timeout or limits.ring_timeout,
        ack_timeout=limits.ack_timeout,
        answer_delay=route.answer_delay_ms / 1000 if route else 0.0,
        agent_wait=agent_wait,
        keep_without_agent=agent is not None and agent.on_agent_failure == "keep",
    )


# -- happenings: what the adapter saw ----------------------------------------------------------


@dataclass(frozen=True)
class Invited:
    """Inbound: an INVITE routed to an agent. The leg rings, then answers as its settings say."""


@dataclass(frozen=True)
class InviteRefused:
    """Inbound: routing refused the INVITE. It is answered `sip_code` and never reported."""

    sip_code: int


@dataclass(frozen=True)
class Dialled:
    """Outbound: our INVITE went out."""


@dataclass(frozen=True)
class Provisional:
    """Outbound: a provisional response (18x) from the far end."""

    sip_code: int


@dataclass(frozen=True)
class AnswerSent:
    """Inbound: our 200 went out."""

    at: float  # wall clock, seconds since the epoch


@dataclass(frozen=True)
class Confirmed:
    """The call is up: the ACK of our 200 (inbound) or the far end's 200 (outbound) arrived."""

    at: float  # wall clock, seconds since the epoch


@dataclass(frozen=True)
class AgentConnected:
    """Inbound: the agent of a call that rings is connected."""


@dataclass(frozen=True)
class AgentFailed:
    """Inbound: the agent of a call that rings could not be connected, or went away."""


@dataclass(frozen=True)
class AgentTimeout:
    """Timer: the agent had its connect timeout (and a second more) to connect."""


@dataclass(frozen=True)
class AnswerDelayElapsed:
    """Timer: the route's answer_delay is over."""


@dataclass(frozen=True)
class AckTimeout:
    """Timer: ack_timeout since our 200 went out."""


@dataclass(frozen=True)
class RingTimeout:
    """Timer: ring_timeout since our INVITE went out."""


@dataclass(frozen=True)
class MaxDurationReached:
    """Timer: max_call_duration since the call was answered."""


@dataclass(frozen=True)
class MediaProbed:
    """What a ProbeMedia found: RTP packets received so far (None: no stream to read)."""

    now: float  # any monotonic clock; only differences between probes count
    rx_packets: int | None
    on_hold: bool


@dataclass(frozen=True)
class HangupRequested:
    """Someone asks us to end the call: the control plane, the agent, the node stopping."""

    by: str  # "control_plane" | "agent" | "gateway": who to report as having hung up
    reason: EndReason = EndReason.NORMAL


@dataclass(frozen=True)
class TransferCompleted:
    """The far end accepted our REFER and now talks to the transfer target."""


@dataclass(frozen=True)
class MediaFailed:
    """The call's audio could not be joined to its media session."""


@dataclass(frozen=True)
class Disconnected:
    """pjsua ended the dialog: a BYE either way, a CANCEL, a final non-2xx, a transport error."""

    sip_code: int  # the last status code pjsua knows for the call
    sip_reason: str
    at: float  # wall clock, seconds since the epoch


@dataclass(frozen=True)
class Lost:
    """pjsua no longer has the call, and never told us it ended."""

    at: float  # wall clock, seconds since the epoch


Happening: TypeAlias = (
    Invited
    | InviteRefused
    | Dialled
    | Provisional
    | AnswerSent
    | Confirmed
    | AgentConnected
    | AgentFailed
    | AgentTimeout
    | AnswerDelayElapsed
    | AckTimeout
    | RingTimeout
    | MaxDurationReached
    | MediaProbed
    | HangupRequested
    | TransferCompleted
    | MediaFailed
    | Disconnected
    | Lost
)


# -- actions: what the adapter does --------------------------------------------------------------


@dataclass(frozen=True)
class SendRinging:
    """Answer the INVITE 180 Ringing."""


@dataclass(frozen=True)
class ConnectAgent:
    """Start the call's media session now, while it rings, so its agent can connect."""


@dataclass(frozen=True)
class SendAnswer:
    """Answer the INVITE 200 OK; feed AnswerSent once it went out."""


@dataclass(frozen=True)
class RefuseInvite:
    """Answer the INVITE routing refused with `sip_code` (a 503 with Retry-After)."""

    sip_code: int


@dataclass(frozen=True)
class RefuseRinging:
    """A final non-2xx to an inbound call that rings, which we will not answer."""

    sip_code: int
    reason: EndReason


@dataclass(frozen=True)
class Hangup:
    """End the call the way its state asks (a BYE once answered, a CANCEL while an outbound call
    rings, pjsua's own final answer while an inbound one does), with a Reason header."""

    reason: EndReason


@dataclass(frozen=True)
class ScheduleHangup:
    """Feed HangupRequested(by) once the pjsua callback now running has returned."""

    by: str


@dataclass(frozen=True)
class StartTimer:
    """Feed `then` after `after` seconds, if the call has not ended by then."""

    after: float
    then: Happening


@dataclass(frozen=True)
class ProbeMedia:
    """After `after` seconds, feed MediaProbed with what the call's RTP stream received."""

    after: float


@dataclass(frozen=True)
class ReportRinging:
    """Report call.ringing."""

    sip_code: int


@dataclass(frozen=True)
class ReportAnswered:
    """Report call.answered."""

    at: float


@dataclass(frozen=True)
class TimedOut:
    """A limit ran out (for the log; what it does comes as the next actions)."""

    limit: Limit


@dataclass(frozen=True)
class Final:
    """A call's last event: call.completed if it was answered, call.failed if not."""

    completed: bool
    reason: EndReason
    sip_code: int
    sip_reason: str
    hangup_by: str | None  # "caller" | "callee" | "gateway" | whoever asked (HangupRequested)
    duration: float  # seconds from answer to end (0.0 if never answered)


@dataclass(frozen=True)
class Ended:
    """The call is over: release it and report `final` (None: a refused INVITE, not reported)."""

    final: Final | None


Action: TypeAlias = (
    SendRinging
    | ConnectAgent
    | SendAnswer
    | RefuseInvite
    | RefuseRinging
    | Hangup
    | ScheduleHangup
    | StartTimer
    | ProbeMedia
    | ReportRinging
    | ReportAnswered
    | TimedOut
    | Ended
)


# -- the tables ----------------------------------------------------------------------------------

Moves = dict[CallState, dict[type[Happening], CallState]]

_ANSWERED: dict[type[Happening], CallState] = {
    HangupRequested: CallState.ANSWERED,
    MaxDurationReached: CallState.ANSWERED,
    MediaProbed: CallState.ANSWERED,
    TransferCompleted: CallState.ANSWERED,
    MediaFailed: CallState.ANSWERED,
    Disconnected: CallState.ENDED,
    Lost: CallState.ENDED,
}

# state -> happening it takes -> the state it leads to. Absent: ignored (Rule 1).
INBOUND: Moves = {
    CallState.INCOMING: {
        Invited: CallState.RINGING,
        InviteRefused: CallState.INCOMING,
        Disconnected: CallState.ENDED,
        Lost: CallState.ENDED,
    },
    CallState.DIALING: {},
    CallState.RINGING: {
        AgentConnected: CallState.RINGING,
        AgentFailed: CallState.RINGING,
        AgentTimeout: CallState.RINGING,
        AnswerDelayElapsed: CallState.RINGING,
        AnswerSent: CallState.RINGING,
        AckTimeout: CallState.RINGING,
        HangupRequested: CallState.RINGING,
        MediaFailed: CallState.RINGING,
        Confirmed: CallState.ANSWERED,
        Disconnected: CallState.ENDED,
        Lost: CallState.ENDED,
    },
    CallState.ANSWERED: _ANSWERED,
    CallState.ENDED: {},
}

OUTBOUND: Moves = {
    CallState.INCOMING: {},
    CallState.DIALING: {
        Dialled: CallState.DIALING,
        RingTimeout: CallState.DIALING,
        HangupRequested: CallState.DIALING,
        MediaFailed: CallState.DIALING,
        Provisional: CallState.RINGING,
        Confirmed: CallState.ANSWERED,
        Disconnected: CallState.ENDED,
        Lost: CallState.ENDED,
    },
    CallState.RINGING: {
        Provisional: CallState.RINGING,
        RingTimeout: CallState.RINGING,
        HangupRequested: CallState.RINGING,
        MediaFailed: CallState.RINGING,
        Confirmed: CallState.ANSWERED,
        Disconnected: CallState.ENDED,
        Lost: CallState.ENDED,
    },
    CallState.ANSWERED: _ANSWERED,
    CallState.ENDED: {},
}

# What still counts once we are ending the call (Rule 2): what the far end and pjsua report
# (a 200 that crossed our CANCEL still answers the call), and the two facts that say why a
# call ended whenever they come.
TAKEN_WHILE_ENDING: frozenset[type[Happening]] = frozenset(
    {Provisional, Confirmed, TransferCompleted, MediaFailed, Disconnected, Lost}
)

# How pjsua ends an answered dialog the far end stopped answering (RFC 4028 session timer
# expired unrefreshed, a refresh or another in-dialog request timed out): 408, its own BYE.
SESSION_TIMED_OUT = 408

# Reasons that stay the call's reason even when it ends before it was answered; any other
# reason we end an unanswered call for (a hang-up request, the end of the call's time) is a
# cancellation.
UNANSWERED_REASONS = frozenset(
    {
        EndReason.NO_ANSWER,
        EndReason.UNREACHABLE,
        EndReason.ACK_TIMEOUT,
        EndReason.DRAIN,
        EndReason.AGENT_UNAVAILABLE,
    }
)

# RFC 3326 Reason header on the BYE/CANCEL we send, by why we end the call (Q.850 causes).
Q850_CAUSES = {
    EndReason.NORMAL: 16,  # normal call clearing
    EndReason.DRAIN: 16,
    EndReason.TRANSFERRED: 16,
    EndReason.TIMEOUT: 16,
    EndReason.NO_ANSWER: 19,  # no answer from user
    EndReason.ACK_TIMEOUT: 102,  # recovery on timer expiry
    EndReason.MEDIA_TIMEOUT: 102,
}
Q850_OTHER = 41  # temporary failure


def reason_header_value(reason: EndReason) -> str:
    """The RFC 3326 `Reason` value for a BYE or CANCEL we send: Q.850 cause and our reason."""
    return f'Q.850;cause={Q850_CAUSES.get(reason, Q850_OTHER)};text="{reason.value}"'


# -- the leg -------------------------------------------------------------------------------------


class CallLeg:
    """The life of one call as the gateway sees it; writes the lifecycle fields of its record
    (state, got_provisional, end_reason, hangup_by) and nothing else does."""

    def __init__(self, record: CallRecord, settings: LegSettings) -> None:
        self.record = record
        self.settings = settings
        self.ending = False  # we sent a BYE, CANCEL or final answer (Rule 2)
        self.answered_at: float | None = None
        self.answer_sent_at: float | None = None  # inbound: when our 200 went out
        self._refused = False
        self._waits: set[Wait] = set()
        self._rx_packets = -1
        self._rx_changed_at = 0.0

    @property
    def state(self) -> CallState:
        return self.record.state

    def handle(self, happening: Happening) -> list[Action]:
        """Take what happened; return what to do, in order ([] when it does not apply now)."""
        previous = self.record.state
        table = INBOUND if self.record.direction == "inbound" else OUTBOUND
        new = table[previous].get(type(happening))
        if new is None or (self.ending and type(happening) not in TAKEN_WHILE_ENDING):
            return []
        self.record.advance(new)  # staying in `previous` is no move
        return self._act(happening, previous)

    def _act(self, happening: Happening, previous: CallState) -> list[Action]:
        rec = self.record
        match happening:
            case Invited():
                return self._ring()
            case InviteRefused(sip_code=code):
                self._refused, self.ending = True, True
                rec.end_reason = EndReason.REJECTED
                return [RefuseInvite(code)]
            case Dialled():
                return [StartTimer(self.settings.ring_timeout, RingTimeout())]
            case Provisional(sip_code=code):
                rec.got_provisional = True
                return [ReportRinging(code)] if previous is CallState.DIALING else []
            case AnswerSent(at=at):
                self.answer_sent_at = at
                return [StartTimer(self.settings.ack_timeout, AckTimeout())]
            case Confirmed(at=at):
                return self._answered(at)
            case AgentConnected():
                return self._agent_ready(connected=True)
            case AgentFailed():
                return self._agent_ready(connected=False)
            case AgentTimeout():
                if Wait.AGENT not in self._waits:
                    return []
                return [TimedOut(Limit.AGENT_CONNECT), *self._agent_ready(connected=False)]
            case AnswerDelayElapsed():
                return self._answer_when_ready(Wait.DELAY)
            case AckTimeout():
                return [TimedOut(Limit.ACK), *self._hang_up("gateway", EndReason.ACK_TIMEOUT)]
            case RingTimeout():
                # Nobody answered, or (nothing ever rang) the destination was never reached.
                reason = failure_reason(0, rec.got_provisional, timed_out=True)
                return [TimedOut(Limit.RING), *self._hang_up("gateway", reason)]
            case MaxDurationReached():
                return [TimedOut(Limit.MAX_DURATION), *self._hang_up("gateway", EndReason.TIMEOUT)]
            case MediaProbed():
                return self._media_probed(happening)
            case HangupRequested(by=by, reason=reason):
                return self._hang_up(by, reason)
            case TransferCompleted():
                # The far end now talks to the transfer target; our leg of the call is done.
                rec.end_reason = EndReason.TRANSFERRED
                return [ScheduleHangup("control_plane")]
            case MediaFailed():  # no agent without media: end the call rather than sit silent
                rec.end_reason = EndReason.FAILED
                return [ScheduleHangup("gateway")]
            case Disconnected(sip_code=code, sip_reason=text, at=at):
                answered = self._bye_before_ack(previous, code)
                if answered is not None:
                    # The caller had our 200 (its BYE names our tag): the call was answered
                    # when that went out, and ends now. Its ACK was overtaken (a proxy's
                    # parallel processes, UDP reordering) or lost; it changes nothing later.
                    self.answered_at = answered
                    final = self._disconnected(CallState.ANSWERED, code, text, at)
                    return [ReportAnswered(answered), Ended(final)]
                return [Ended(self._disconnected(previous, code, text, at))]
            case Lost(at=at):
                rec.end_reason = rec.end_reason or EndReason.FAILED
                return [Ended(self._final(previous, 0, "call lost by pjsua", at))]

    # -- inbound: ringing and answering ------------------------------------------------------------

    def _ring(self) -> list[Action]:
        settings = self.settings
        actions: list[Action] = [SendRinging()]
        if settings.agent_wait is not None:  # connect the agent while ringing; answer once it is
            self._waits.add(Wait.AGENT)
            actions += [ConnectAgent(), StartTimer(settings.agent_wait, AgentTimeout())]
        if settings.answer_delay > 0:
            self._waits.add(Wait.DELAY)
            actions.append(StartTimer(settings.answer_delay, AnswerDelayElapsed()))
        return actions + self._answer_when_ready(None)

    def _agent_ready(self, connected: bool) -> list[Action]:
        if Wait.AGENT not in self._waits:
            return []  # answered already, or never waited for the agent
        if connected or self.settings.keep_without_agent:
            return self._answer_when_ready(Wait.AGENT)
        return self._refuse_ringing(480, EndReason.AGENT_UNAVAILABLE)

    def _answer_when_ready(self, ready: Wait | None) -> list[Action]:
        """A 200 once nothing the answer waits for (ring delay, agent) is pending."""
        if ready is not None:
            self._waits.discard(ready)
        return [] if self._waits else [SendAnswer()]

    def _refuse_ringing(self, code: int, reason: EndReason) -> list[Action]:
        rec = self.record
        rec.end_reason = rec.end_reason or reason
        rec.hangup_by = rec.hangup_by or "gateway"
        self.ending = True
        return [RefuseRinging(code, reason)]

    # -- answered --------------------------------------------------------------------------------

    def _answered(self, at: float) -> list[Action]:
        self.answered_at = at
        settings = self.settings
        actions: list[Action] = [
            ReportAnswered(at),
            StartTimer(settings.max_call_duration, MaxDurationReached()),
        ]
        if settings.media_timeout:
            actions.append(ProbeMedia(self._probe_every()))
        return actions

    def _probe_every(self) -> float:
        return max(0.5, min(5.0, self.settings.media_timeout / 4))

    def _media_probed(self, probe: MediaProbed) -> list[Action]:
        """Hang up an answered call whose far end sent no RTP for media_timeout (a caller gone
        without a BYE); hold is not silence. The first probe sets the baseline."""
        timeout = self.settings.media_timeout
        if not timeout:
            return []
        silent = 0.0  # no stream (yet, or any more): nothing to judge
        if probe.rx_packets is not None:
            if probe.rx_packets != self._rx_packets or probe.on_hold:
                self._rx_packets = probe.rx_packets
                self._rx_changed_at = probe.now
            silent = probe.now - self._rx_changed_at
        if silent >= timeout:
            return [TimedOut(Limit.MEDIA), *self._hang_up("gateway", EndReason.MEDIA_TIMEOUT)]
        return [ProbeMedia(self._probe_every())]

    # -- ending ----------------------------------------------------------------------------------

    def _hang_up(self, by: str, reason: EndReason) -> list[Action]:
        rec = self.record
        if self.ending:
            return []  # already ending: the first reason is the true one
        rec.hangup_by = rec.hangup_by or by
        if rec.state is not CallState.ANSWERED and reason not in UNANSWERED_REASONS:
            reason = EndReason.CANCELLED  # e.g. the control plane hung up a ringing call
        rec.end_reason = rec.end_reason or reason
        self.ending = True
        return [Hangup(rec.end_reason)]

    def _bye_before_ack(self, previous: CallState, code: int) -> float | None:
        """When our 200 went out, for an inbound call the far end ended with a 2xx (pjsua's
        code for a BYE it took) before its ACK came, and not after a hang-up of ours."""
        if previous is CallState.RINGING and not self.ending and 200 <= code < 300:
            return self.answer_sent_at
        return None

    def _disconnected(self, previous: CallState, code: int, text: str, at: float) -> Final | None:
        rec = self.record
        inbound = rec.direction == "inbound"
        if previous is CallState.ANSWERED:
            if code == SESSION_TIMED_OUT and rec.end_reason is None:
                # Not a BYE from the far end: pjsua's own, the dialog having gone unanswered.
                rec.hangup_by = rec.hangup_by or "gateway"
                rec.end_reason = EndReason.SESSION_EXPIRED
            rec.hangup_by = rec.hangup_by or ("caller" if inbound else "callee")
            rec.end_reason = rec.end_reason or EndReason.NORMAL
        elif rec.end_reason is None:
            if inbound:
                rec.end_reason = EndReason.CANCELLED if code == 487 else EndReason.REJECTED
            else:
                rec.end_reason = failure_reason(code, rec.got_provisional, timed_out=False)
        return self._final(previous, code, text, at)

    def _final(self, previous: CallState, code: int, text: str, at: float) -> Final | None:
        rec = self.record
        if self._refused:
            return None
        answered = previous is CallState.ANSWERED
        duration = 0.0 if self.answered_at is None else max(0.0, at - self.answered_at)
        return Final(
            completed=answered,
            reason=rec.end_reason or EndReason.NORMAL,
            sip_code=code,
            sip_reason=text,
            hangup_by=rec.hangup_by,
            duration=duration,
        )
