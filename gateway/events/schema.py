"""Event schema: the envelope every MQTT event carries, typed data per event type, topics.

Plain data and pure functions, no I/O; the store persists these and the publisher sends them.
"""

from __future__ import annotations

import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from gateway.errors import CommandError as CommandError  # re-exported: commands use it
from gateway.errors import ErrorCode as ErrorCode

CALL_ID_RE = re.compile(r"^call_[0-9a-f]{24}$")
EVENT_ID_RE = re.compile(r"^evt_[0-9a-f]{32}$")


def utc_now() -> datetime:
    """Now, in UTC, to the millisecond (the precision events carry)."""
    return _to_utc(datetime.now(UTC))


def iso_z(value: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a `Z` suffix."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_utc(value: datetime) -> datetime:
    # Millisecond precision, as on the wire, so a parsed event equals the one that was sent.
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


UtcTimestamp = Annotated[
    AwareDatetime,
    AfterValidator(_to_utc),
    PlainSerializer(iso_z, return_type=str, when_used="json"),
]


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def new_event_id() -> str:
    return "evt_" + uuid.uuid4().hex


# --- topics -------------------------------------------------------------------------------


def call_events_topic(prefix: str, node: str, call_id: str) -> str:
    return f"{prefix}/{node}/calls/{call_id}/events"


def trunk_state_topic(prefix: str, node: str, trunk_id: str) -> str:
    return f"{prefix}/{node}/trunks/{trunk_id}/state"


def trunk_events_topic(prefix: str, node: str, trunk_id: str) -> str:
    return f"{prefix}/{node}/trunks/{trunk_id}/events"


def status_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/status"


def command_topic(prefix: str, node: str, name: str) -> str:
    """`name` may be `+` to subscribe to every command of the node."""
    return f"{prefix}/{node}/commands/{name}"


def command_name(prefix: str, node: str, topic: str) -> str | None:
    """The command name of a topic under `command_topic(prefix, node, ...)`, else None."""
    head = command_topic(prefix, node, "")
    if not topic.startswith(head):
        return None
    name = topic[len(head) :]
    return name if name and "/" not in name else None


# --- event data, one model per type --------------------------------------------------------


class EventData(BaseModel):
    """Base of every event's `data`; `event_type` names the event it belongs to."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    event_type: ClassVar[str] = ""


class _CallParties(EventData):
    from_: str = Field(alias="from")
    to: str
    trunk: str | None = None
    agent: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


class CallIncoming(_CallParties):
    event_type: ClassVar[str] = "call.incoming"


class CallPlaced(_CallParties):
    event_type: ClassVar[str] = "call.placed"


class CallRinging(EventData):
    event_type: ClassVar[str] = "call.ringing"
    early_media: bool = False


class CallAnswered(EventData):
    event_type: ClassVar[str] = "call.answered"
    codec: str
    answered_at: UtcTimestamp


class CallCompleted(EventData):
    event_type: ClassVar[str] = "call.completed"
    duration: float = Field(ge=0)
    billable_seconds: int = Field(ge=0)
    reason: str
    sip_code: int | None = None
    hangup_by: Literal["caller", "callee", "agent", "gateway", "control_plane"] | None = None
    latency: dict[str, float] | None = None


class CallFailed(EventData):
    event_type: ClassVar[str] = "call.failed"
    reason: str
    sip_code: int | None = None
    sip_reason: str | None = None


class CallDtmf(EventData):
    event_type: ClassVar[str] = "call.dtmf"
    digit: str = Field(pattern=r"^[0-9*#A-Da-d]$")
    method: Literal["rfc4733", "sip_info", "inband"] = "rfc4733"
    duration_ms: int | None = Field(default=None, ge=0)


class _Speech(EventData):
    party: Literal["caller", "agent"]
    offset_ms: int = Field(ge=0)
    duration_ms: int | None = Field(default=None, ge=0)


class CallSpeechStarted(_Speech):
    event_type: ClassVar[str] = "call.speech.started"


class CallSpeechStopped(_Speech):
    event_type: ClassVar[str] = "call.speech.stopped"


class _AgentLink(EventData):
    agent: str
    transport: Literal["twilio-ws", "pcm-ws", "webrtc", "echo"]
    reason: str | None = None


class AgentConnected(_AgentLink):
    event_type: ClassVar[str] = "call.agent.connected"
    # The audio codec the agent link negotiated (webrtc: "opus" or "PCMU"); WebSocket
    # transports have none, and their events carry no `codec` key at all.
    codec: str | None = None
    reconnect: bool = False  # connected again after the link dropped mid-call

    @model_serializer(mode="wrap")
    def _omit_missing_codec(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("codec") is None:
            data.pop("codec", None)
        if not data.get("reconnect"):
            data.pop("reconnect", None)  # only a reconnect says so
        return data


class AgentDisconnected(_AgentLink):
    event_type: ClassVar[str] = "call.agent.disconnected"


class RecordingReady(EventData):
    event_type: ClassVar[str] = "call.recording.ready"
    path: str
    duration: float = Field(ge=0)
    bytes: int = Field(ge=0)


class RecordingDeleted(EventData):
    """The call's WAV was deleted: by a request (API, MQTT) or by `recording.retention_days`."""

    event_type: ClassVar[str] = "call.recording.deleted"
    path: str
    bytes: int | None = Field(default=None, ge=0)
    reason: Literal["request", "retention"]


class CallQuality(EventData):
    event_type: ClassVar[str] = "call.quality"
    mos: float | None = Field(default=None, ge=1, le=5)
    jitter_ms: float | None = Field(default=None, ge=0)
    packet_loss_pct: float | None = Field(default=None, ge=0, le=100)
    rtt_ms: float | None = Field(default=None, ge=0)
    packets_received: int | None = Field(default=None, ge=0)
    packets_lost: int | None = Field(default=None, ge=0)
    final: bool = False  # the call's last report, at its end


class CallAmd(EventData):
    event_type: ClassVar[str] = "call.amd"
    result: Literal["human", "machine", "unknown"]
    reason: str
    analysis_ms: int = Field(ge=0)
    beep_ms: int | None = Field(default=None, ge=0)


class CallTransfer(EventData):
    event_type: ClassVar[str] = "call.transfer"
    target: str
    status: Literal["requested", "accepted", "completed", "failed"]
    sip_code: int | None = None


class _TrunkState(EventData):
    trunk: str
    state: Literal["registered", "unregistered", "failed", "registering", "disabled"]
    sip_code: int | None = None
    reason: str | None = None
    expires: int | None = Field(default=None, ge=0)
    next_retry_at: UtcTimestamp | None = None


class TrunkRegistered(_TrunkState):
    event_type: ClassVar[str] = "trunk.registered"


class TrunkUnregistered(_TrunkState):
    event_type: ClassVar[str] = "trunk.unregistered"


class TrunkRegistrationFailed(_TrunkState):
    event_type: ClassVar[str] = "trunk.registration_failed"


class NodeConfigReloaded(EventData):
    """A reload applied: which live sections changed (keys only, never values)."""

    event_type: ClassVar[str] = "node.config_reloaded"
    changed: list[str] = Field(default_factory=list)
    trunks_added: list[str] = Field(default_factory=list)
    trunks_removed: list[str] = Field(default_factory=list)
    trunks_changed: list[str] = Field(default_factory=list)


class NodeConfigRejected(EventData):
    """A reload refused: the problems check-config would print; the node runs on as it was."""

    event_type: ClassVar[str] = "node.config_rejected"
    problems: list[str] = Field(min_length=1)


class _CampaignState(EventData):
    campaign_id: str
    name: str
    status: Literal["draft", "running", "paused", "completed", "stopped"]
    reason: str | None = None  # why it ended: all contacts done, stopped by a request


class CampaignStarted(_CampaignState):
    event_type: ClassVar[str] = "campaign.started"


class CampaignPaused(_CampaignState):
    event_type: ClassVar[str] = "campaign.paused"


class CampaignResumed(_CampaignState):
    event_type: ClassVar[str] = "campaign.resumed"


class CampaignCompleted(_CampaignState):
    event_type: ClassVar[str] = "campaign.completed"


class CampaignStopped(_CampaignState):
    event_type: ClassVar[str] = "campaign.stopped"


class WebhookTest(EventData):
    """Sent by POST /v1/webhooks/{id}/test to that subscription only (never to MQTT)."""

    event_type: ClassVar[str] = "webhook.test"
    webhook_id: str
    message: str = "a test event from sipedge"


class WebhookDisabled(EventData):
    """A subscription disabled after a run of failed deliveries; re-enable it through the API."""

    event_type: ClassVar[str] = "webhook.disabled"
    webhook_id: str
    url: str  # without credentials or query
    reason: str
    consecutive_failures: int = Field(ge=0)


DATA_MODELS: dict[str, type[EventData]] = {
    m.event_type: m
    for m in (
        CallIncoming, CallPlaced, CallRinging, CallAnswered, CallCompleted, CallFailed,
        CallDtmf, CallSpeechStarted, CallSpeechStopped, AgentConnected, AgentDisconnected,
        RecordingReady, RecordingDeleted, CallQuality, CallTransfer, CallAmd,
        TrunkRegistered, TrunkUnregistered, TrunkRegistrationFailed,
        NodeConfigReloaded, NodeConfigRejected,
        CampaignStarted, CampaignPaused, CampaignResumed, CampaignCompleted, CampaignStopped,
        WebhookTest, WebhookDisabled,
    )
}  # fmt: skip
EVENT_TYPES: frozenset[str] = frozenset(DATA_MODELS)


# --- the envelope -------------------------------------------------------------------------


class Event(BaseModel):
    """`{"id", "type", "ts", "node", "call_id", "seq", "data"}`; `seq` is set by the store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_event_id, pattern=EVENT_ID_RE.pattern)
    type: str
    ts: UtcTimestamp = Field(default_factory=utc_now)
    node: str = Field(min_length=1)
    call_id: str | None = Field(default=None, pattern=CALL_ID_RE.pattern)
    seq: int = Field(default=0, ge=0)
    data: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check_data(self) -> Event:
        model = DATA_MODELS.get(self.type)
        if model is None:
            raise ValueError(f"unknown event type {self.type!r}")
        if self.type.startswith("call.") and self.call_id is None:
            raise ValueError(f"{self.type} needs a call_id")
        # Normalise data to its JSON form so the envelope round-trips byte for byte.
        normal = model.model_validate(self.data).model_dump(mode="json", by_alias=True)
        object.__setattr__(self, "data", normal)
        return self

    @classmethod
    def of(cls, data: EventData, *, node: str, call_id: str | None = None, **kw: Any) -> Event:
        """An event whose type follows from its data model: `Event.of(CallRinging(), ...)`."""
        return cls(
            type=data.event_type,
            node=node,
            call_id=call_id,
            data=data.model_dump(mode="json", by_alias=True),
            **kw,
        )

    def typed_data(self) -> EventData:
        return DATA_MODELS[self.type].model_validate(self.data)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Event:
        return cls.model_validate_json(raw)

    def topic(self, prefix: str) -> str:
        """Where this event is published: per call, per trunk for trunk.* events, per
        campaign for campaign.* events, else the node's own."""
        if self.call_id is not None:
            return call_events_topic(prefix, self.node, self.call_id)
        trunk = self.data.get("trunk")
        if isinstance(trunk, str):
            return trunk_events_topic(prefix, self.node, trunk)
        campaign = self.data.get("campaign_id")
        if self.type.startswith("campaign.") and isinstance(campaign, str):
            return f"{prefix}/{self.node}/campaigns/{campaign}/events"
        return f"{prefix}/{self.node}/events"


# --- commands -----------------------------------------------------------------------------

# CommandError and ErrorCode (imported above) are the error vocabulary shared with the HTTP
# API; they live with the exception family in gateway.errors.


def command_reply(result: Any) -> dict[str, Any]:
    return {"data": result}
