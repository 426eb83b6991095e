from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from gateway.events.schema import (
    EVENT_TYPES,
    CallAnswered,
    CallCompleted,
    CallDtmf,
    CallIncoming,
    CallRinging,
    CallSpeechStarted,
    CommandError,
    Event,
    TrunkRegistrationFailed,
    WebhookDisabled,
    WebhookTest,
    call_events_topic,
    command_name,
    command_topic,
    new_call_id,
    new_event_id,
    status_topic,
    trunk_state_topic,
)

NODE = "node-a"


def test_call_and_event_ids_are_prefixed_hex() -> None:
    assert re.fullmatch(r"call_[0-9a-f]{24}", new_call_id())
    assert re.fullmatch(r"evt_[0-9a-f]{32}", new_event_id())
    assert new_call_id() != new_call_id()


def test_envelope_has_exactly_the_contract_fields_and_utc_z_timestamp() -> None:
    call_id = new_call_id()
    event = Event.of(CallRinging(early_media=True), node=NODE, call_id=call_id)
    wire = json.loads(event.to_json())
    assert set(wire) == {"id", "type", "ts", "node", "call_id", "seq", "data"}
    assert wire["type"] == "call.ringing"
    assert wire["call_id"] == call_id
    assert wire["data"] == {"early_media": True}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wire["ts"])


def test_event_round_trips_through_json_unchanged() -> None:
    event = Event.of(
        CallIncoming(from_="+15551230000", to="+15559870000", trunk="t1", agent="sales",
                     variables={"customer": {"id": 7}, "vip": True}),
        node=NODE,
        call_id=new_call_id(),
    )  # fmt: skip
    again = Event.from_json(event.to_json())
    assert again == event
    assert again.to_json() == event.to_json()


def test_from_is_serialised_under_its_wire_name() -> None:
    event = Event.of(CallIncoming(from_="+1555", to="+1666"), node=NODE, call_id=new_call_id())
    assert event.data["from"] == "+1555"
    assert isinstance(event.typed_data(), CallIncoming)
    assert event.typed_data().from_ == "+1555"  # type: ignore[attr-defined]


def test_timestamps_in_data_are_converted_to_utc() -> None:
    cest = timezone(timedelta(hours=2))
    answered = datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=cest)
    event = Event.of(CallAnswered(codec="PCMU", answered_at=answered), node=NODE,
                     call_id=new_call_id())  # fmt: skip
    assert event.data["answered_at"] == "2025-06-01T12:00:00.123Z"


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError):
        CallAnswered(codec="PCMU", answered_at=datetime(2025, 6, 1, 12, 0))


def test_envelope_validates_data_against_the_type() -> None:
    call_id = new_call_id()
    with pytest.raises(ValidationError, match="digit"):
        Event(type="call.dtmf", node=NODE, call_id=call_id, data={"digit": "x"})
    with pytest.raises(ValidationError):
        Event(type="call.ringing", node=NODE, call_id=call_id, data={"surprise": 1})
    with pytest.raises(ValidationError, match="unknown event type"):
        Event(type="call.exploded", node=NODE, call_id=call_id)


def test_call_events_need_a_well_formed_call_id() -> None:
    with pytest.raises(ValidationError, match="needs a call_id"):
        Event.of(CallRinging(), node=NODE)
    with pytest.raises(ValidationError):
        Event.of(CallRinging(), node=NODE, call_id="call_123")


def test_completed_carries_billing_and_optional_latency() -> None:
    data = CallCompleted(duration=61.4, billable_seconds=62, reason="hangup", sip_code=200,
                         hangup_by="caller", latency={"agent_p50_ms": 420.0})  # fmt: skip
    event = Event.of(data, node=NODE, call_id=new_call_id())
    assert event.data["billable_seconds"] == 62
    assert event.data["latency"] == {"agent_p50_ms": 420.0}


def test_every_contract_event_type_has_a_data_model() -> None:
    contract = {
        "call.incoming", "call.placed", "call.ringing", "call.answered", "call.completed",
        "call.failed", "call.dtmf", "call.speech.started", "call.speech.stopped",
        "call.agent.connected", "call.agent.disconnected", "call.recording.ready",
        "call.recording.deleted", "call.quality", "call.transfer", "call.amd",
        "trunk.registered", "trunk.unregistered", "trunk.registration_failed",
        "node.config_reloaded", "node.config_rejected",
        "campaign.started", "campaign.paused", "campaign.resumed", "campaign.completed",
        "campaign.stopped",
        "webhook.test", "webhook.disabled",
    }  # fmt: skip
    assert contract == EVENT_TYPES


def test_speech_and_dtmf_models_name_their_types() -> None:
    call_id = new_call_id()
    speech = Event.of(CallSpeechStarted(party="caller", offset_ms=1200), node=NODE, call_id=call_id)
    dtmf = Event.of(CallDtmf(digit="#", duration_ms=80), node=NODE, call_id=call_id)
    assert (speech.type, dtmf.type) == ("call.speech.started", "call.dtmf")


def test_trunk_events_have_no_call_and_go_to_the_trunk_topic() -> None:
    retry = datetime(2025, 1, 1, tzinfo=UTC)
    event = Event.of(
        TrunkRegistrationFailed(trunk="carrier1", state="failed", sip_code=403,
                                reason="Forbidden", next_retry_at=retry),
        node=NODE,
    )  # fmt: skip
    assert event.call_id is None
    assert event.data["next_retry_at"] == "2025-01-01T00:00:00.000Z"
    assert event.topic("sipedge") == "sipedge/node-a/trunks/carrier1/events"


def test_topics() -> None:
    call_id = new_call_id()
    assert call_events_topic("p", NODE, call_id) == f"p/node-a/calls/{call_id}/events"
    assert trunk_state_topic("p", NODE, "t1") == "p/node-a/trunks/t1/state"
    assert status_topic("p", NODE) == "p/node-a/status"
    assert command_topic("p", NODE, "originate") == "p/node-a/commands/originate"
    event = Event.of(CallRinging(), node=NODE, call_id=call_id)
    assert event.topic("p") == call_events_topic("p", NODE, call_id)


def test_command_name_is_taken_only_from_this_nodes_command_topics() -> None:
    assert command_name("p", NODE, "p/node-a/commands/hangup") == "hangup"
    assert command_name("p", NODE, "p/node-b/commands/hangup") is None
    assert command_name("p", NODE, "p/node-a/commands/") is None
    assert command_name("p", NODE, "p/node-a/commands/a/b") is None


def test_command_error_serialises_to_the_api_error_shape() -> None:
    err = CommandError("resource_not_found", "no call call_x", [{"field": "call_id"}])
    assert err.to_dict() == {
        "error": {"code": "resource_not_found", "message": "no call call_x",
                  "details": [{"location": None, "field": "call_id", "message": "no call call_x",
                               "type": "invalid", "limit": None}]}
    }  # fmt: skip
    assert CommandError("internal_error", "boom").to_dict()["error"]["details"] == []


def test_webhook_events_are_the_nodes_own() -> None:
    disabled = Event.of(
        WebhookDisabled(webhook_id="cp", url="https://cp/h", reason="20 consecutive failed "
                        "deliveries", consecutive_failures=20),
        node=NODE,
    )  # fmt: skip
    assert disabled.topic("sipedge") == f"sipedge/{NODE}/events"
    assert Event.from_json(disabled.to_json()) == disabled
    test = Event.of(WebhookTest(webhook_id="cp"), node=NODE)
    assert test.data == {"webhook_id": "cp", "message": "a test event from sipedge"}
