"""The call model: what a failure means (EndReason) and which state may follow which."""

from __future__ import annotations

import pytest

from gateway.calls.model import TRANSITIONS, CallRecord, CallState, EndReason, failure_reason

# -- failure_reason ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "provisional", "reason"),
    [
        (486, False, EndReason.BUSY),
        (600, True, EndReason.BUSY),
        (401, False, EndReason.AUTH_FAILED),
        (407, True, EndReason.AUTH_FAILED),
        (408, True, EndReason.NO_ANSWER),
        (480, True, EndReason.NO_ANSWER),
        (408, False, EndReason.UNREACHABLE),
        (480, False, EndReason.UNREACHABLE),
        (487, True, EndReason.CANCELLED),
        (500, False, EndReason.UNREACHABLE),
        (502, False, EndReason.UNREACHABLE),
        (503, True, EndReason.UNREACHABLE),
        (504, False, EndReason.UNREACHABLE),
        (0, False, EndReason.UNREACHABLE),  # no final response at all
        (403, False, EndReason.REJECTED),
        (404, True, EndReason.REJECTED),
        (603, True, EndReason.REJECTED),
        (488, True, EndReason.REJECTED),
    ],
)
def test_failure_reason_from_the_final_response(
    code: int, provisional: bool, reason: EndReason
) -> None:
    assert failure_reason(code, provisional, timed_out=False) is reason


@pytest.mark.parametrize("code", [0, 487, 503])
def test_ring_timeout_after_ringing_is_no_answer_whatever_the_code(code: int) -> None:
    assert failure_reason(code, got_provisional=True, timed_out=True) is EndReason.NO_ANSWER


@pytest.mark.parametrize("code", [0, 408, 487, 503])
def test_ring_timeout_without_ringing_is_unreachable_whatever_the_code(code: int) -> None:
    assert failure_reason(code, got_provisional=False, timed_out=True) is EndReason.UNREACHABLE


def test_end_reasons_serialise_as_their_values() -> None:
    assert EndReason.NO_ANSWER == "no_answer"
    assert EndReason("auth_failed") is EndReason.AUTH_FAILED


# -- CallRecord.advance ------------------------------------------------------------------------


def record(state: CallState = CallState.INCOMING) -> CallRecord:
    return CallRecord(
        id="call_test",
        direction="inbound",
        trunk="carrier",
        from_number="+15550199",
        to_number="+442070000000",
        agent="bot",
        state=state,
    )


def test_new_call_record_is_incoming_with_no_outcome() -> None:
    rec = record()
    assert rec.state is CallState.INCOMING
    assert rec.end_reason is None and rec.hangup_by is None and not rec.got_provisional


def test_inbound_call_rings_answers_and_ends() -> None:
    rec = record()
    assert rec.advance(CallState.RINGING)
    assert rec.advance(CallState.ANSWERED)
    assert rec.advance(CallState.ENDED)
    assert rec.state is CallState.ENDED


def test_outbound_call_may_be_answered_without_ringing() -> None:
    rec = record(CallState.DIALING)
    assert rec.advance(CallState.ANSWERED)
    assert rec.state is CallState.ANSWERED


@pytest.mark.parametrize("start", [CallState.INCOMING, CallState.DIALING, CallState.RINGING])
def test_a_call_may_end_before_it_is_answered(start: CallState) -> None:
    rec = record(start)
    assert rec.advance(CallState.ENDED)


@pytest.mark.parametrize(
    ("start", "back"),
    [
        (CallState.RINGING, CallState.INCOMING),
        (CallState.RINGING, CallState.DIALING),
        (CallState.ANSWERED, CallState.RINGING),
        (CallState.ANSWERED, CallState.INCOMING),
        (CallState.INCOMING, CallState.DIALING),
    ],
)
def test_going_back_is_refused_and_the_state_stays(start: CallState, back: CallState) -> None:
    rec = record(start)
    assert not rec.advance(back)
    assert rec.state is start


@pytest.mark.parametrize("state", list(CallState))
def test_repeating_a_state_is_refused(state: CallState) -> None:
    rec = record(state)
    assert not rec.advance(state)
    assert rec.state is state


@pytest.mark.parametrize("state", list(CallState))
def test_ended_is_final(state: CallState) -> None:
    rec = record(CallState.ENDED)
    assert not rec.advance(state)
    assert rec.state is CallState.ENDED


def test_every_state_has_a_transition_entry() -> None:
    assert set(TRANSITIONS) == set(CallState)
    assert TRANSITIONS[CallState.ENDED] == set()
