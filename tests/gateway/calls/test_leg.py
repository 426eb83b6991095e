"""The call leg: SIP happenings in, actions out. Every transition, every end reason the SIP
engine gives a call, and what a leg ignores (a late timer, an answer after the end)."""

from __future__ import annotations

import copy
import typing
from dataclasses import replace
from typing import Any

import pytest

from gateway.calls.leg import (
    INBOUND,
    OUTBOUND,
    TAKEN_WHILE_ENDING,
    AckTimeout,
    Action,
    AgentConnected,
    AgentFailed,
    AgentTimeout,
    AnswerDelayElapsed,
    AnswerSent,
    CallLeg,
    Confirmed,
    ConnectAgent,
    Dialled,
    Disconnected,
    Ended,
    Final,
    Hangup,
    HangupRequested,
    Happening,
    Invited,
    InviteRefused,
    LegSettings,
    Limit,
    Lost,
    MaxDurationReached,
    MediaFailed,
    MediaProbed,
    ProbeMedia,
    Provisional,
    RefuseInvite,
    RefuseRinging,
    ReportAnswered,
    ReportRinging,
    RingTimeout,
    ScheduleHangup,
    SendAnswer,
    SendRinging,
    StartTimer,
    TimedOut,
    TransferCompleted,
    leg_settings,
    reason_header_value,
)
from gateway.calls.model import TRANSITIONS, CallRecord, CallState, EndReason
from gateway.config import Config

R = EndReason
SETTINGS = LegSettings(max_call_duration=3600, ring_timeout=30, ack_timeout=5)


def leg(direction: str = "inbound", **settings: Any) -> CallLeg:
    record = CallRecord(
        id="call_test",
        direction=direction,
        trunk="carrier",
        from_number="+15550199",
        to_number="+442070000000",
        agent="bot",
        state=CallState.INCOMING if direction == "inbound" else CallState.DIALING,
    )
    return CallLeg(record, replace(SETTINGS, **settings))


def fed(call: CallLeg, *happenings: Happening) -> list[Action]:
    """Feed each happening in turn; the actions of the last one."""
    actions: list[Action] = []
    for happening in happenings:
        actions = call.handle(happening)
    return actions


def final_of(actions: list[Action]) -> Final | None:
    assert len(actions) == 1 and isinstance(actions[0], Ended), actions
    return actions[0].final


RINGS = (Invited(), AnswerSent(at=99.9))  # an inbound call that rings, our 200 sent
ANSWERS = (*RINGS, Confirmed(at=100.0))  # ... and ACKed at t=100


def bye(at: float = 160.0, code: int = 200) -> Disconnected:
    return Disconnected(code, "OK", at)


# -- inbound: ringing and answering -------------------------------------------------------------


def test_an_invite_rings_and_is_answered_at_once_when_nothing_waits() -> None:
    call = leg()
    assert call.handle(Invited()) == [SendRinging(), SendAnswer()]
    assert call.state is CallState.RINGING
    assert call.handle(AnswerSent(at=1.0)) == [StartTimer(5, AckTimeout())]


def test_the_ack_answers_the_call_and_starts_its_limits() -> None:
    call = leg(media_timeout=8)
    assert fed(call, *RINGS, Confirmed(at=100.0)) == [
        ReportAnswered(100.0),
        StartTimer(3600, MaxDurationReached()),
        ProbeMedia(2.0),
    ]
    assert call.state is CallState.ANSWERED and call.answered_at == 100.0


def test_without_a_media_timeout_an_answered_call_is_not_probed() -> None:
    actions = fed(leg(media_timeout=0), *ANSWERS)
    assert not any(isinstance(a, ProbeMedia) for a in actions)


def test_the_answer_waits_for_the_ring_delay() -> None:
    call = leg(answer_delay=2.5)
    assert call.handle(Invited()) == [SendRinging(), StartTimer(2.5, AnswerDelayElapsed())]
    assert call.handle(AnswerDelayElapsed()) == [SendAnswer()]


def test_the_answer_waits_for_the_agent_connected_while_ringing() -> None:
    call = leg(agent_wait=6.0)
    assert call.handle(Invited()) == [
        SendRinging(),
        ConnectAgent(),
        StartTimer(6.0, AgentTimeout()),
    ]
    assert call.handle(AgentConnected()) == [SendAnswer()]
    assert call.handle(AgentTimeout()) == []  # the agent came in time


@pytest.mark.parametrize("first", [AgentConnected(), AnswerDelayElapsed()])
def test_the_answer_waits_for_both_the_agent_and_the_delay(first: Happening) -> None:
    call = leg(agent_wait=6.0, answer_delay=2.0)
    call.handle(Invited())
    second = AnswerDelayElapsed() if isinstance(first, AgentConnected) else AgentConnected()
    assert call.handle(first) == []
    assert call.handle(second) == [SendAnswer()]


def test_an_agent_that_fails_while_ringing_gets_the_invite_refused_480() -> None:
    call = leg(agent_wait=6.0)
    assert fed(call, Invited(), AgentFailed()) == [RefuseRinging(480, R.AGENT_UNAVAILABLE)]
    assert call.ending
    assert call.handle(AgentConnected()) == []  # too late
    assert final_of(call.handle(Disconnected(480, "Temporarily Unavailable", 9.0))) == Final(
        False, R.AGENT_UNAVAILABLE, 480, "Temporarily Unavailable", "gateway", 0.0
    )


def test_an_agent_that_never_connects_gets_the_invite_refused_480() -> None:
    call = leg(agent_wait=6.0)
    assert fed(call, Invited(), AgentTimeout()) == [
        TimedOut(Limit.AGENT_CONNECT),
        RefuseRinging(480, R.AGENT_UNAVAILABLE),
    ]


@pytest.mark.parametrize("failure", [AgentFailed(), AgentTimeout()])
def test_keep_without_agent_answers_when_the_agent_fails(failure: Happening) -> None:
    call = leg(agent_wait=6.0, keep_without_agent=True)
    actions = fed(call, Invited(), failure)
    assert actions[-1] == SendAnswer() and not call.ending


def test_agent_news_means_nothing_to_a_call_that_does_not_wait_for_it() -> None:
    call = leg(answer_delay=2.0)
    call.handle(Invited())
    for news in (AgentConnected(), AgentFailed(), AgentTimeout()):
        assert call.handle(news) == []
    answered = leg(agent_wait=6.0)
    fed(answered, Invited(), AgentConnected(), AnswerSent(at=0.9), Confirmed(at=1.0))
    assert answered.handle(AgentFailed()) == []  # an agent gone later is the session's business


def test_a_200_never_acked_is_given_up_on() -> None:
    call = leg()
    assert fed(call, *RINGS, AckTimeout()) == [TimedOut(Limit.ACK), Hangup(R.ACK_TIMEOUT)]
    assert final_of(call.handle(bye(at=106.0))) == Final(
        False, R.ACK_TIMEOUT, 200, "OK", "gateway", 0.0
    )


def test_a_bye_that_overtook_the_ack_ends_a_call_answered_when_our_200_went_out() -> None:
    call = leg()
    assert fed(call, *RINGS, bye(at=102.4)) == [
        ReportAnswered(99.9),
        Ended(Final(True, R.NORMAL, 200, "OK", "caller", 2.5)),
    ]
    assert call.state is CallState.ENDED and call.answered_at == 99.9
    assert call.handle(Confirmed(at=102.5)) == []  # the overtaken ACK, had pjsua reported it


def test_a_call_that_ends_with_no_2xx_before_the_ack_was_not_answered() -> None:
    final = final_of(fed(leg(), *RINGS, Disconnected(408, "Request Timeout", 132.0)))
    assert final == Final(False, R.REJECTED, 408, "Request Timeout", None, 0.0)


def test_the_ack_timer_means_nothing_once_the_ack_came() -> None:
    call = leg()
    fed(call, *ANSWERS)
    assert call.handle(AckTimeout()) == []


def test_a_refused_invite_is_answered_and_ends_unreported() -> None:
    call = leg()
    assert call.handle(InviteRefused(404)) == [RefuseInvite(404)]
    assert call.record.end_reason is R.REJECTED and call.state is CallState.INCOMING
    assert call.handle(Invited()) == []
    assert call.handle(HangupRequested("control_plane")) == []
    assert call.handle(Disconnected(404, "Not Found", 1.0)) == [Ended(None)]
    assert call.state is CallState.ENDED


# -- outbound ------------------------------------------------------------------------------------


def test_a_dialled_call_starts_its_ring_timer() -> None:
    assert leg("outbound", ring_timeout=12).handle(Dialled()) == [StartTimer(12, RingTimeout())]


def test_the_first_provisional_reports_ringing_and_later_ones_do_not() -> None:
    call = leg("outbound")
    assert call.handle(Provisional(180)) == [ReportRinging(180)]
    assert call.state is CallState.RINGING and call.record.got_provisional
    assert call.handle(Provisional(183)) == []


def test_an_outbound_call_may_be_answered_without_ringing() -> None:
    call = leg("outbound")
    assert call.handle(Confirmed(at=5.0))[0] == ReportAnswered(5.0)
    assert call.state is CallState.ANSWERED


def test_an_inbound_call_takes_no_provisional() -> None:
    call = leg()
    call.handle(Invited())  # pjsua reports our own 180 as the call going early
    assert call.handle(Provisional(180)) == []
    assert not call.record.got_provisional


@pytest.mark.parametrize(("provisional", "reason"), [(True, R.NO_ANSWER), (False, R.UNREACHABLE)])
def test_the_ring_timeout_cancels_as_no_answer_or_unreachable(
    provisional: bool, reason: EndReason
) -> None:
    call = leg("outbound")
    happenings = [Dialled(), Provisional(180)] if provisional else [Dialled()]
    assert fed(call, *happenings, RingTimeout()) == [TimedOut(Limit.RING), Hangup(reason)]
    final = final_of(call.handle(Disconnected(487, "Request Terminated", 30.0)))
    assert final == Final(False, reason, 487, "Request Terminated", "gateway", 0.0)


def test_the_ring_timer_means_nothing_once_answered() -> None:
    call = leg("outbound")
    fed(call, Dialled(), Confirmed(at=1.0))
    assert call.handle(RingTimeout()) == []


def test_a_200_that_crosses_our_cancel_still_answers_the_call() -> None:
    call = leg("outbound")
    fed(call, Dialled(), Provisional(180), RingTimeout())
    assert call.handle(Confirmed(at=30.0))[0] == ReportAnswered(30.0)
    assert final_of(call.handle(Disconnected(200, "OK", 30.5))) == Final(
        True, R.NO_ANSWER, 200, "OK", "gateway", 0.5
    )


@pytest.mark.parametrize(
    ("code", "provisional", "reason"),
    [(480, True, R.NO_ANSWER), (480, False, R.UNREACHABLE), (486, False, R.BUSY)],
)  # the whole mapping: failure_reason's tests (the call model's)
def test_an_outbound_failure_takes_its_reason_from_the_final_response(
    code: int, provisional: bool, reason: EndReason
) -> None:
    call = leg("outbound")
    fed(call, Dialled(), *([Provisional(180)] if provisional else []))
    final = final_of(call.handle(Disconnected(code, "Whatever", 3.0)))
    assert final == Final(False, reason, code, "Whatever", None, 0.0)


# -- every end reason the SIP engine gives a call ------------------------------------------------

CP = "control_plane"
ENDINGS: list[tuple[str, str, dict[str, Any], list[Happening], Final]] = [
    # (what happens, direction, settings, happenings, the call's last event)
    ("caller hangs up", "inbound", {}, [*ANSWERS, bye()],
     Final(True, R.NORMAL, 200, "OK", "caller", 60.0)),
    ("callee hangs up", "outbound", {}, [Dialled(), Confirmed(at=100.0), bye(at=101.25)],
     Final(True, R.NORMAL, 200, "OK", "callee", 1.25)),
    ("control plane hangs up", "inbound", {}, [*ANSWERS, HangupRequested(CP), bye()],
     Final(True, R.NORMAL, 200, "OK", CP, 60.0)),
    ("AMD heard a machine", "outbound", {},
     [Dialled(), Confirmed(at=100.0), HangupRequested("gateway", R.MACHINE_DETECTED),
      bye(at=104.5)],
     Final(True, R.MACHINE_DETECTED, 200, "OK", "gateway", 4.5)),
    # pjsua's session timer (RFC 4028) ran out, or an in-dialog request went unanswered:
    # pjsua sent the BYE, and the far end is gone, not hung up
    ("session expires", "inbound", {}, [*ANSWERS, Disconnected(408, "Request Timeout", 160.0)],
     Final(True, R.SESSION_EXPIRED, 408, "Request Timeout", "gateway", 60.0)),
    ("session expires", "outbound", {}, [Dialled(), Confirmed(at=100.0),
                                         Disconnected(408, "Request Timeout", 190.0)],
     Final(True, R.SESSION_EXPIRED, 408, "Request Timeout", "gateway", 90.0)),
    ("agent hangs up", "inbound", {}, [*ANSWERS, HangupRequested("agent"), bye()],
     Final(True, R.NORMAL, 200, "OK", "agent", 60.0)),
    ("busy", "outbound", {}, [Dialled(), Disconnected(486, "Busy Here", 2.0)],
     Final(False, R.BUSY, 486, "Busy Here", None, 0.0)),
    ("no answer", "outbound", {}, [Dialled(), Provisional(180), RingTimeout(), bye(code=487)],
     Final(False, R.NO_ANSWER, 487, "OK", "gateway", 0.0)),
    ("rejected inbound", "inbound", {"answer_delay": 1.0},
     [Invited(), Disconnected(500, "Server Error", 1.0)],
     Final(False, R.REJECTED, 500, "Server Error", None, 0.0)),
    ("unreachable", "outbound", {}, [Dialled(), Disconnected(503, "Unreachable", 2.0)],
     Final(False, R.UNREACHABLE, 503, "Unreachable", None, 0.0)),
    ("auth failed", "outbound", {}, [Dialled(), Disconnected(407, "Proxy Auth", 2.0)],
     Final(False, R.AUTH_FAILED, 407, "Proxy Auth", None, 0.0)),
    ("caller cancels", "inbound", {"answer_delay": 5.0},
     [Invited(), Disconnected(487, "Request Terminated", 1.0)],
     Final(False, R.CANCELLED, 487, "Request Terminated", None, 0.0)),
    ("control plane hangs up a ringing call", "outbound", {},
     [Dialled(), Provisional(180), HangupRequested(CP), bye(code=487)],
     Final(False, R.CANCELLED, 487, "OK", CP, 0.0)),
    ("max duration", "inbound", {}, [*ANSWERS, MaxDurationReached(), bye(at=3700.0)],
     Final(True, R.TIMEOUT, 200, "OK", "gateway", 3600.0)),
    ("transferred", "inbound", {},
     [*ANSWERS, TransferCompleted(), HangupRequested(CP), bye()],
     Final(True, R.TRANSFERRED, 200, "OK", CP, 60.0)),
    ("media failed", "inbound", {}, [*RINGS, MediaFailed(), HangupRequested("gateway"), bye()],
     Final(False, R.FAILED, 200, "OK", "gateway", 0.0)),
    ("lost by pjsua", "inbound", {}, [*ANSWERS, Lost(at=130.0)],
     Final(True, R.FAILED, 0, "call lost by pjsua", None, 30.0)),
    ("drain", "inbound", {}, [*ANSWERS, HangupRequested("gateway", R.DRAIN), bye()],
     Final(True, R.DRAIN, 200, "OK", "gateway", 60.0)),
    ("drain while ringing", "outbound", {},
     [Dialled(), HangupRequested("gateway", R.DRAIN), bye(code=487)],
     Final(False, R.DRAIN, 487, "OK", "gateway", 0.0)),
    ("ack timeout", "inbound", {}, [*RINGS, AckTimeout(), bye()],
     Final(False, R.ACK_TIMEOUT, 200, "OK", "gateway", 0.0)),
    ("media timeout", "inbound", {"media_timeout": 2.0},
     [*ANSWERS, MediaProbed(1.0, 4, False), MediaProbed(3.0, 4, False), bye()],
     Final(True, R.MEDIA_TIMEOUT, 200, "OK", "gateway", 60.0)),
    ("agent unavailable", "inbound", {"agent_wait": 6.0},
     [Invited(), AgentTimeout(), Disconnected(480, "Unavailable", 6.0)],
     Final(False, R.AGENT_UNAVAILABLE, 480, "Unavailable", "gateway", 0.0)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("direction", "settings", "happenings", "final"),
    [case[1:] for case in ENDINGS],
    ids=[case[0] for case in ENDINGS],
)
def test_how_a_call_ends_is_its_last_event(
    direction: str, settings: dict[str, Any], happenings: list[Happening], final: Final
) -> None:
    call = leg(direction, **settings)
    assert final_of(fed(call, *happenings)) == final
    assert call.state is CallState.ENDED
    assert (call.record.end_reason, call.record.hangup_by) == (final.reason, final.hangup_by)


def test_every_end_reason_the_sip_engine_gives_is_shown_above() -> None:
    given_elsewhere = {R.WORKER_LOST, R.NODE_RESTART}  # by the node, when a worker is gone
    assert {case[-1].reason for case in ENDINGS} == set(EndReason) - given_elsewhere


def test_a_clock_set_back_gives_no_negative_duration() -> None:
    final = final_of(fed(leg(), *ANSWERS, bye(at=99.0)))
    assert final is not None and final.duration == 0.0


# -- hanging up ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "answered", "reason", "sent"),
    [
        ("inbound", True, R.NORMAL, R.NORMAL),
        ("inbound", False, R.NORMAL, R.CANCELLED),  # a ringing call we end is cancelled
        ("outbound", False, R.NORMAL, R.CANCELLED),
        ("outbound", True, R.TIMEOUT, R.TIMEOUT),
        ("outbound", False, R.TIMEOUT, R.CANCELLED),
        ("inbound", True, R.DRAIN, R.DRAIN),
        ("inbound", False, R.DRAIN, R.DRAIN),  # ... unless it says why it was never answered
        ("outbound", False, R.NO_ANSWER, R.NO_ANSWER),
        ("outbound", False, R.UNREACHABLE, R.UNREACHABLE),
        ("inbound", False, R.ACK_TIMEOUT, R.ACK_TIMEOUT),
        ("inbound", False, R.AGENT_UNAVAILABLE, R.AGENT_UNAVAILABLE),
    ],
)
def test_a_hangup_request_ends_the_call_with_a_reason_for_its_state(
    direction: str, answered: bool, reason: EndReason, sent: EndReason
) -> None:
    call = leg(direction, answer_delay=1.0)
    start = [Invited()] if direction == "inbound" else [Dialled()]
    fed(call, *start, *([Confirmed(at=1.0)] if answered else []))
    assert call.handle(HangupRequested("gateway", reason)) == [Hangup(sent)]
    assert call.ending and call.record.end_reason is sent and call.record.hangup_by == "gateway"


def test_the_first_reason_to_end_a_call_holds() -> None:
    call = leg(media_timeout=2.0)
    fed(call, *ANSWERS)
    assert call.handle(HangupRequested(CP)) == [Hangup(R.NORMAL)]
    for later in (
        HangupRequested("gateway", R.DRAIN),
        MaxDurationReached(),
        MediaProbed(50.0, 0, False),
        AckTimeout(),
    ):
        assert call.handle(later) == []
    assert final_of(call.handle(bye())) == Final(True, R.NORMAL, 200, "OK", CP, 60.0)


def test_a_transfer_or_a_media_failure_says_why_even_a_call_we_are_ending_ended() -> None:
    for news, reason, by in (
        (TransferCompleted(), R.TRANSFERRED, CP),
        (MediaFailed(), R.FAILED, "gateway"),
    ):
        call = leg()
        fed(call, *ANSWERS, HangupRequested("agent"))
        assert call.handle(news) == [ScheduleHangup(by)]
        assert call.handle(HangupRequested(by)) == []  # the deferred hang-up: already ending
        assert final_of(call.handle(bye())) == Final(True, reason, 200, "OK", "agent", 60.0)


def test_a_deferred_hangup_sends_the_reason_the_call_already_has() -> None:
    call = leg()
    fed(call, *ANSWERS, TransferCompleted())
    assert call.handle(HangupRequested(CP)) == [Hangup(R.TRANSFERRED)]


def test_a_provisional_after_our_cancel_still_reports_ringing() -> None:
    call = leg("outbound")
    fed(call, Dialled(), HangupRequested(CP))
    assert call.handle(Provisional(180)) == [ReportRinging(180)]


@pytest.mark.parametrize(
    ("reason", "value"),
    [
        (R.NORMAL, 'Q.850;cause=16;text="normal"'),
        (R.DRAIN, 'Q.850;cause=16;text="drain"'),
        (R.TRANSFERRED, 'Q.850;cause=16;text="transferred"'),
        (R.TIMEOUT, 'Q.850;cause=16;text="timeout"'),
        (R.NO_ANSWER, 'Q.850;cause=19;text="no_answer"'),
        (R.ACK_TIMEOUT, 'Q.850;cause=102;text="ack_timeout"'),
        (R.MEDIA_TIMEOUT, 'Q.850;cause=102;text="media_timeout"'),
        (R.CANCELLED, 'Q.850;cause=41;text="cancelled"'),
        (R.FAILED, 'Q.850;cause=41;text="failed"'),
    ],
)
def test_the_reason_header_carries_a_q850_cause_and_our_reason(
    reason: EndReason, value: str
) -> None:
    assert reason_header_value(reason) == value


# -- media liveness ------------------------------------------------------------------------------


def test_a_far_end_silent_for_the_media_timeout_is_hung_up() -> None:
    call = leg(media_timeout=2.0)
    fed(call, *ANSWERS)
    assert call.handle(MediaProbed(10.0, 5, False)) == [ProbeMedia(0.5)]  # the baseline
    assert call.handle(MediaProbed(11.0, 9, False)) == [ProbeMedia(0.5)]  # RTP arrives
    assert call.handle(MediaProbed(12.9, 9, False)) == [ProbeMedia(0.5)]  # silent 1.9 s
    assert call.handle(MediaProbed(13.0, 9, False)) == [
        TimedOut(Limit.MEDIA),
        Hangup(R.MEDIA_TIMEOUT),
    ]


def test_hold_is_not_silence() -> None:
    call = leg(media_timeout=2.0)
    fed(call, *ANSWERS, MediaProbed(0.0, 5, False))
    assert call.handle(MediaProbed(5.0, 5, True)) == [ProbeMedia(0.5)]
    assert call.handle(MediaProbed(6.9, 5, False)) == [ProbeMedia(0.5)]  # silent since 5.0


def test_a_call_with_no_stream_to_read_is_never_judged_silent() -> None:
    call = leg(media_timeout=2.0)
    fed(call, *ANSWERS, MediaProbed(0.0, None, False))
    assert call.handle(MediaProbed(100.0, None, False)) == [ProbeMedia(0.5)]


@pytest.mark.parametrize(("timeout", "every"), [(1.0, 0.5), (8.0, 2.0), (30.0, 5.0)])
def test_media_is_probed_four_times_per_timeout_within_half_a_second_and_five(
    timeout: float, every: float
) -> None:
    assert fed(leg(media_timeout=timeout), *ANSWERS)[-1] == ProbeMedia(every)


def test_a_probe_means_nothing_without_a_media_timeout() -> None:
    assert fed(leg(media_timeout=0), *ANSWERS, MediaProbed(1.0, 0, False)) == []


# -- what a leg ignores --------------------------------------------------------------------------

ONE_OF_EACH: list[Happening] = [
    Invited(),
    InviteRefused(404),
    Dialled(),
    Provisional(180),
    AnswerSent(at=1.0),
    Confirmed(at=1.0),
    AgentConnected(),
    AgentFailed(),
    AgentTimeout(),
    AnswerDelayElapsed(),
    AckTimeout(),
    RingTimeout(),
    MaxDurationReached(),
    MediaProbed(1.0, 0, False),
    HangupRequested(CP),
    TransferCompleted(),
    MediaFailed(),
    Disconnected(200, "OK", 1.0),
    Lost(at=1.0),
]

# A leg brought to each state it can be in.
IN_STATE: dict[tuple[str, CallState], list[Happening]] = {
    ("inbound", CallState.INCOMING): [],
    ("inbound", CallState.RINGING): [Invited()],
    ("inbound", CallState.ANSWERED): [*ANSWERS],
    ("inbound", CallState.ENDED): [*ANSWERS, bye()],
    ("outbound", CallState.DIALING): [Dialled()],
    ("outbound", CallState.RINGING): [Dialled(), Provisional(180)],
    ("outbound", CallState.ANSWERED): [Dialled(), Confirmed(at=1.0)],
    ("outbound", CallState.ENDED): [Dialled(), Disconnected(486, "Busy Here", 1.0)],
}


def snapshot(call: CallLeg) -> dict[str, Any]:
    """Everything a leg holds, its record's fields included."""
    return copy.deepcopy(vars(call))


def test_one_of_each_is_every_happening() -> None:
    assert {type(h) for h in ONE_OF_EACH} == set(typing.get_args(Happening))


@pytest.mark.parametrize(("direction", "state"), list(IN_STATE))
def test_a_happening_its_state_does_not_take_changes_nothing(
    direction: str, state: CallState
) -> None:
    table = INBOUND if direction == "inbound" else OUTBOUND
    for happening in ONE_OF_EACH:
        if type(happening) in table[state]:
            continue
        call = leg(direction, agent_wait=6.0, answer_delay=1.0, media_timeout=2.0)
        fed(call, *IN_STATE[direction, state])
        assert call.state is state
        before = snapshot(call)
        assert call.handle(happening) == [], happening
        assert snapshot(call) == before, happening


@pytest.mark.parametrize("happening", ONE_OF_EACH, ids=lambda h: type(h).__name__)
def test_nothing_happens_to_an_ended_call(happening: Happening) -> None:
    for direction in ("inbound", "outbound"):
        call = leg(direction)
        fed(call, *IN_STATE[direction, CallState.ENDED])
        before = snapshot(call)
        assert call.handle(happening) == []  # e.g. an answer after the end
        assert snapshot(call) == before


@pytest.mark.parametrize("happening", ONE_OF_EACH, ids=lambda h: type(h).__name__)
def test_once_ending_only_what_pjsua_reports_and_why_it_ended_still_count(
    happening: Happening,
) -> None:
    call = leg(agent_wait=6.0, media_timeout=2.0)
    fed(call, Invited(), AgentConnected(), AnswerSent(at=1.0), HangupRequested(CP))
    assert call.ending
    if type(happening) in TAKEN_WHILE_ENDING:
        return
    before = snapshot(call)
    assert call.handle(happening) == []
    assert snapshot(call) == before


# -- the tables ----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [INBOUND, OUTBOUND], ids=["inbound", "outbound"])
def test_the_tables_cover_every_state_and_move_only_along_the_call_model(
    table: dict[CallState, dict[type[Happening], CallState]],
) -> None:
    assert set(table) == set(CallState)
    assert table[CallState.ENDED] == {}
    for state, moves in table.items():
        for target in moves.values():
            assert target is state or target in TRANSITIONS[state], (state, target)


def test_every_happening_is_taken_somewhere() -> None:
    taken = {kind for table in (INBOUND, OUTBOUND) for moves in table.values() for kind in moves}
    assert taken == set(typing.get_args(Happening))


def test_a_call_always_ends_on_disconnected_or_lost_in_any_live_state() -> None:
    for (direction, state), happenings in IN_STATE.items():
        if state is CallState.ENDED:
            continue
        for end in (Disconnected(500, "x", 1.0), Lost(at=1.0)):
            call = leg(direction)
            fed(call, *happenings)
            actions = call.handle(end)
            assert len(actions) == 1 and isinstance(actions[0], Ended), (direction, state)
            assert call.state is CallState.ENDED


# -- settings from the config --------------------------------------------------------------------

CONFIG = Config.model_validate(
    {
        "agents": [
            {"id": "echo", "type": "echo"},
            {"id": "bot", "type": "pcm-ws", "url": "ws://127.0.0.1:9/", "connect_timeout": 3},
            {"id": "keeper", "type": "twilio-ws", "url": "ws://127.0.0.1:9/",
             "on_agent_failure": "keep"},
        ],
        "numbers": [
            {"number": "+15550100", "agent": "echo", "answer_delay_ms": 1500},
            {"number": "+15550101", "agent": "bot"},
            {"number": "+15550102", "agent": "bot", "answer_after_agent": False},
            {"number": "+15550103", "agent": "keeper"},
        ],
        "limits": {"max_call_duration": 600, "ring_timeout": 40, "ack_timeout": 4,
                   "media_timeout": 12},
    }
)  # fmt: skip


def route(number: str) -> Any:
    return next(r for r in CONFIG.numbers if r.number == number)


def test_an_outbound_leg_takes_the_limits_and_its_own_ring_timeout() -> None:
    assert leg_settings(CONFIG) == LegSettings(
        max_call_duration=600, media_timeout=12, ring_timeout=40, ack_timeout=4
    )
    assert leg_settings(CONFIG, ring_timeout=7).ring_timeout == 7


def test_an_inbound_leg_takes_its_routes_answer_delay() -> None:
    settings = leg_settings(CONFIG, route("+15550100"))
    assert settings.answer_delay == 1.5 and settings.agent_wait is None  # an echo: no wait


def test_a_streaming_agent_is_waited_for_its_connect_timeout_and_a_second() -> None:
    assert leg_settings(CONFIG, route("+15550101")).agent_wait == 4.0
    assert leg_settings(CONFIG, route("+15550102")).agent_wait is None  # the route says no
    keeper = leg_settings(CONFIG, route("+15550103"))
    assert keeper.agent_wait == 6.0 and keeper.keep_without_agent
