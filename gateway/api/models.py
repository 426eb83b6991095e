"""Request and response bodies of the HTTP API; the OpenAPI document is generated from them.

Requests reject unknown fields (naming them); responses may grow new fields over time.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from gateway.errors import ErrorCode, Location
from gateway.events.commands import (
    AmdRequest,
    ConfigId,
    DtmfDigits,
    E164Number,
    RingTimeout,
    SipHeaders,
    TransferTarget,
    Variables,
)  # fmt: skip

T = TypeVar("T")

CallStatus = Literal["dialing", "ringing", "answered", "completed", "failed"]
Direction = Literal["inbound", "outbound"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


# --- envelopes ----------------------------------------------------------------------------


class ErrorDetail(_Response):
    location: Location | None = Field(description="where the value is: body, query, path, header")
    field: str | None = Field(description="dotted name of the field, e.g. `variables.lead`")
    message: str
    type: str = Field(description="machine-readable kind, e.g. `missing`, `string_too_long`")
    limit: int | None = Field(description="the limit that was passed, when there is one")


class ErrorBody(_Response):
    code: ErrorCode
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorEnvelope(_Response):
    error: ErrorBody


class Data(_Response, Generic[T]):
    data: T


class Meta(_Response):
    """The slice served, said both ways: page/per_page and skip/limit."""

    total: int = Field(ge=0)
    page: int = Field(ge=1)
    per_page: int = Field(ge=1, le=100)
    skip: int = Field(ge=0)
    limit: int = Field(ge=1, le=100)


class Page(_Response, Generic[T]):
    data: list[T]
    meta: Meta


# --- calls --------------------------------------------------------------------------------


class CallCreate(_Request):
    """The body of POST /v1/calls: the fields of the `call.originate` command (the same types
    and limits), with the idempotency key in a header instead."""

    to: E164Number = Field(description="E.164 number to dial")
    from_: E164Number | None = Field(None, alias="from", description="caller id (E.164)")
    trunk: ConfigId | None = Field(None, description="trunk id; default: the first that may "
                                   "dial `to`")  # fmt: skip
    agent: ConfigId = Field(description="agent id that talks on the call")
    variables: Variables = Field(default_factory=dict)
    ring_timeout: RingTimeout | None = None
    record: StrictBool | None = Field(None, description="record this call (default: config)")
    amd: AmdRequest | None = Field(None, description="answering-machine detection on answer "
                                   "(call.amd event; the result reaches the agent)")  # fmt: skip
    sip_headers: SipHeaders = Field(default_factory=dict)
    variables_as_headers: StrictBool = Field(
        False, description="also send each variable as an X-<name> header (names that fit)"
    )


class CallTransferRequest(_Request):
    target: TransferTarget


class CallDtmfRequest(_Request):
    digits: DtmfDigits


class Call(_Response):
    id: str = Field(examples=["call_5f0c2b9a1d3e4f5a6b7c8d9e"])
    status: CallStatus
    direction: Direction | None = None
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    trunk: str | None = None
    agent: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = Field(None, description="ISO 8601 UTC")
    ringing_at: str | None = None
    answered_at: str | None = None
    ended_at: str | None = None
    duration: float | None = Field(None, description="seconds")
    billable_seconds: int | None = None
    end_reason: str | None = None
    sip_code: int | None = None
    hangup_by: str | None = None
    codec: str | None = None
    latency: dict[str, float] | None = Field(
        None, description="agent latency figures of call.completed (ms), e.g. response_p50_ms"
    )
    recording_url: str | None = Field(None, description="path of the WAV, when there is one")
    replayed: bool | None = Field(None, description="true when an Idempotency-Key replayed")


class CallAction(_Response):
    id: str
    status: Literal["hanging_up", "requested"] | None = None
    target: str | None = None
    digits: str | None = None


class CallEvent(_Response):
    id: str
    type: str
    ts: str = Field(description="ISO 8601 UTC")
    node: str
    call_id: str | None
    seq: int
    data: dict[str, Any]


# --- configuration views (never secrets) --------------------------------------------------


class ReloadResult(_Response):
    reloaded: bool
    changed: list[str] = Field(description="sections that changed: trunks, numbers, agents, "
                               "limits, vad, recording")  # fmt: skip
    trunks_added: list[str]
    trunks_removed: list[str]
    trunks_changed: list[str]


class TrunkView(_Response):
    id: str
    registers: bool = Field(alias="register", description="registers with the registrar")
    registrar: str | None
    proxy: str | None
    domain: str | None
    transport: str | None
    state: str = Field(description="registered, registering, unregistered, failed, disabled")
    sip_code: int | None = None
    reason: str | None = None
    expires: int | None = None
    registered_at: str | None = None
    next_retry_at: str | None = None
    active_calls: int = 0
    max_concurrent_calls: int
    allowed_destinations: list[str]
    allowed_ips: list[str]


class NumberView(_Response):
    number: str
    agent: str
    trunk: str | None
    variables: dict[str, str]
    answer_delay_ms: int


class AgentView(_Response):
    id: str
    type: str
    url: str | None = Field(description="without credentials or query string")
    header_names: list[str] = Field(description="names of the headers sent; values are secret")
    connect_timeout: float
    on_agent_failure: str
    sample_rate: int


# --- operations ---------------------------------------------------------------------------


class Health(_Response):
    status: Literal["ok", "unhealthy", "ready", "not_ready", "alive"]
    checks: dict[str, str] = Field(default_factory=dict)
    reasons: list[str] = Field(default_factory=list)


class WorkerHealth(_Response):
    worker: int = Field(description="1-based, as in logs and metrics")
    state: Literal["starting", "running", "restarting", "stopped"]
    pid: int | None
    active_calls: int
    capacity: int = Field(description="calls it holds at once (0 until it is ready)")
    free_slots: int
    restarts: int = Field(description="times the node restarted it since the node started")
    trunks: list[str] = Field(description="trunks it registers (or reports the state of)")


class NodeHealth(Health):
    active_calls: int = 0
    capacity: int = Field(0, description="calls the running workers hold at once, within "
                          "limits.max_concurrent_calls")  # fmt: skip
    workers: list[WorkerHealth] = Field(default_factory=list)


class Version(_Response):
    version: str
    node: str
    api: str = "v1"


# --- analytics ----------------------------------------------------------------------------


class GroupFigures(_Response):
    id: str | None = Field(description="the trunk, agent or campaign id (null: none recorded)")
    total: int = Field(ge=0)
    answered: int = Field(ge=0)
    failed: int = Field(ge=0)
    answer_rate: float | None = Field(ge=0, le=1, description="answered / total")
    average_duration: float | None = Field(description="seconds, of the completed calls")


class DurationFigures(_Response):
    average: float | None = Field(description="seconds, of the completed calls")
    p50: float | None
    p90: float | None
    p99: float | None


class AgentLatency(_Response):
    calls: int = Field(ge=0, description="completed calls that reported latency figures")
    average_response_p50_ms: float | None = Field(
        description="mean of each call's median turn latency (caller stops -> agent audio)"
    )
    average_response_p95_ms: float | None


class CallAnalytics(_Response):
    total: int = Field(ge=0)
    answered: int = Field(ge=0)
    failed: int = Field(ge=0)
    answer_rate: float | None = Field(ge=0, le=1, description="answered / total")
    by_status: dict[str, int]
    by_direction: dict[str, int]
    by_trunk: list[GroupFigures]
    by_agent: list[GroupFigures]
    by_campaign: list[GroupFigures] = Field(description="campaign calls only")
    duration: DurationFigures
    average_time_to_answer: float | None = Field(description="seconds, created -> answered")
    agent_latency: AgentLatency


class CallBucket(_Response):
    start: str = Field(description="ISO 8601 in the requested time zone, with its offset")
    total: int = Field(ge=0)
    answered: int = Field(ge=0)
    failed: int = Field(ge=0)
    average_duration: float | None = Field(description="seconds, of the completed calls")


class CallBuckets(_Response):
    unit: Literal["hour", "day"]
    timezone: str
    buckets: list[CallBucket] = Field(description="in order; hours or days with no calls left out")


# --- recordings ---------------------------------------------------------------------------


class Recording(_Response):
    call_id: str
    created_at: str | None = Field(description="ISO 8601 UTC: when the recording was finished")
    duration: float | None = Field(description="seconds")
    bytes: int | None = Field(description="size of the file")
    channels: int | None = Field(description="2: the caller left, the agent right")
    sample_rate: int | None = Field(description="Hz")
    bits_per_sample: int | None
    format: str | None = Field(examples=["wav/pcm_s16le"])
    available: bool = Field(description="false once the file is deleted or missing")
    url: str | None = Field(description="where to download it (Range supported)")
    direction: Direction
    trunk: str | None
    agent: str | None
    campaign_id: str | None
    deleted_at: str | None = Field(description="ISO 8601 UTC, once deleted")
