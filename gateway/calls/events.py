"""What a SIP worker reports: one frozen dataclass per kind of happening, typed end to end.

The engine, the call leg and the media sessions create these; the worker's IPC carries them
tagged by class name (gateway/worker/ipc.py: `event_message` / `event_from`); the node's
ledger dispatches on the class (gateway/node/ledger.py) and turns each into the public event
of gateway/events/schema.py. So the public event types ("call.answered", ...) are written
once, in the schema, and this vocabulary is the classes themselves: no string kinds.

Each field is plain JSON data (str, int, float, bool, None, dicts and lists of them), so a
happening crosses the IPC as `dataclasses.asdict` and comes back as the same object.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

Party = Literal["caller", "agent"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerEvent:
    """Base of everything a worker reports; call_id is None for worker and trunk events."""

    call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent(WorkerEvent):
    """Something that happened to one call."""

    call_id: str


# --- the call's SIP life ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Parties(CallEvent):
    from_number: str
    to_number: str
    trunk: str | None
    agent: str | None
    variables: dict[str, str] = field(default_factory=dict)
    sip_call_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallOffered(_Parties):
    """An inbound INVITE was admitted and the call rings here."""

    direction: ClassVar[str] = "inbound"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallDialed(_Parties):
    """An outbound INVITE was sent."""

    direction: ClassVar[str] = "outbound"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ringing(CallEvent):
    """The far end rings (180/183 without media); sip_code is the provisional's code."""

    sip_code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EarlyMedia(CallEvent):
    """Early media (183 with SDP) started."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Answered(CallEvent):
    codec: str
    answered_at: float  # Unix time


@dataclass(frozen=True, slots=True, kw_only=True)
class Completed(CallEvent):
    """An answered call ended."""

    duration: float
    reason: str
    sip_code: int | None = None
    hangup_by: str | None = None  # caller | callee | agent | gateway | control_plane
    latency: dict[str, float] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed(CallEvent):
    """A call ended without being answered."""

    reason: str
    sip_code: int | None = None
    sip_reason: str | None = None
    hangup_by: str | None = None  # caller | callee | agent | gateway | control_plane


@dataclass(frozen=True, slots=True, kw_only=True)
class DtmfReceived(CallEvent):
    digit: str
    method: str = "rfc4733"  # rfc4733 | sip_info | inband
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AmdDetected(CallEvent):
    """Answering-machine detection's verdict on an answered outbound call."""

    result: str  # human | machine | unknown
    reason: str
    analysis_ms: int
    beep_ms: int | None = None  # wait_for_beep: when the beep ended, after the verdict


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityMeasured(CallEvent):
    """What the call's received RTP looked like so far (media/quality.py); `final` at its end."""

    packets_received: int
    packets_lost: int
    packet_loss_pct: float
    jitter_ms: float
    mos: float | None
    rtt_ms: float | None = None
    final: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProgress(CallEvent):
    target: str
    status: str  # requested | accepted | completed | failed
    sip_code: int | None = None


# --- the call's media session -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechBegan(CallEvent):
    party: Party
    offset_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnded(CallEvent):
    party: Party
    offset_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLinkUp(CallEvent):
    agent: str
    transport: str
    codec: str | None = None  # the codec a WebRTC link negotiated; None on WebSockets
    reconnect: bool = False  # the link connected again after it dropped mid-call


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentLinkDown(CallEvent):
    agent: str
    transport: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingFinished(CallEvent):
    path: str
    duration: float
    bytes: int


# --- the worker itself ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkStateChanged(WorkerEvent):
    trunk: str
    registers: bool
    state: str
    sip_code: int | None = None
    reason: str | None = None
    expires: int | None = None
    next_retry_at: float | None = None
    registered_at: float | None = None
    active_calls: int = 0
    max_concurrent_calls: int = 0

    def as_status(self) -> dict[str, Any]:
        """The trunk's state as /health and `sipedge status` show it."""
        status = dataclasses.asdict(self)
        del status["call_id"]
        return status


@dataclass(frozen=True, slots=True, kw_only=True)
class InvitesRefused(WorkerEvent):
    """INVITEs the request gate refused since the last report, by reason."""

    counts: dict[str, int]


EVENT_TYPES: dict[str, type[WorkerEvent]] = {
    cls.__name__: cls
    for cls in (
        CallOffered, CallDialed, Ringing, EarlyMedia, Answered, Completed, Failed,
        DtmfReceived, TransferProgress, SpeechBegan, SpeechEnded, AgentLinkUp, AgentLinkDown,
        RecordingFinished, TrunkStateChanged, InvitesRefused, AmdDetected, QualityMeasured,
    )
}  # fmt: skip
