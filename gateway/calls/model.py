"""Call model: a call's states and their transitions, its record, why it ended and what a
failure means.

Pure logic with no I/O: the SIP engine asks these functions and acts on the answers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class CallState(enum.Enum):
    INCOMING = "incoming"  # inbound INVITE received, not yet answered
    DIALING = "dialing"  # outbound INVITE sent
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


# Which state may follow which; anything else is a bug in the engine.
TRANSITIONS: dict[CallState, set[CallState]] = {
    CallState.INCOMING: {CallState.RINGING, CallState.ANSWERED, CallState.ENDED},
    CallState.DIALING: {CallState.RINGING, CallState.ANSWERED, CallState.ENDED},
    CallState.RINGING: {CallState.ANSWERED, CallState.ENDED},
    CallState.ANSWERED: {CallState.ENDED},
    CallState.ENDED: set(),
}


class EndReason(enum.StrEnum):
    NORMAL = "normal"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    AUTH_FAILED = "auth_failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    TRANSFERRED = "transferred"
    FAILED = "failed"
    DRAIN = "drain"  # the node was stopping and hung up
    ACK_TIMEOUT = "ack_timeout"  # the caller never confirmed our 200 with an ACK
    MEDIA_TIMEOUT = "media_timeout"  # no RTP from the far end for limits.media_timeout
    # the far end stopped answering in the dialog: its RFC 4028 session timer ran out
    # unrefreshed, or our refresh (or another in-dialog request) got no answer
    SESSION_EXPIRED = "session_expired"
    AGENT_UNAVAILABLE = "agent_unavailable"  # the agent could not be connected while ringing
    MACHINE_DETECTED = "machine_detected"  # AMD heard a machine and the call's action hangs up
    WORKER_LOST = "worker_lost"  # the SIP worker died with the call up
    NODE_RESTART = "node_restart"  # the node was killed with the call up


@dataclass
class CallRecord:
    """What the node knows about one call; owned by the SIP thread while the call lives."""

    id: str
    direction: str  # "inbound" | "outbound"
    trunk: str
    from_number: str
    to_number: str
    agent: str
    variables: dict[str, str] = field(default_factory=dict)
    state: CallState = CallState.INCOMING
    sip_call_id: str = ""
    got_provisional: bool = False
    hangup_by: str | None = None
    end_reason: EndReason | None = None
    record: bool | None = None  # record this call; None: as recording.enabled says
    amd: dict[str, Any] | None = None  # answering-machine detection asked (AmdRequest's fields)

    def advance(self, new: CallState) -> bool:
        """Move to `new` if allowed; returns False (and stays) for a repeated or late state."""
        if new not in TRANSITIONS[self.state]:
            return False
        self.state = new
        return True


def failure_reason(sip_code: int, got_provisional: bool, timed_out: bool) -> EndReason:
    """Map how an outbound call ended before answer to a reason a control plane can act on.

    A destination that never rang (no 18x) before the ring timeout, a 408/480 without a
    provisional response, and pjsip's own 503 for a transport error (connection refused, no
    route) were never reached: `unreachable`, not `no_answer`.
    """
    if timed_out:
        return EndReason.NO_ANSWER if got_provisional else EndReason.UNREACHABLE
    if sip_code in (486, 600):
        return EndReason.BUSY
    if sip_code in (401, 407):
        return EndReason.AUTH_FAILED
    if sip_code in (408, 480):
        return EndReason.NO_ANSWER if got_provisional else EndReason.UNREACHABLE
    if sip_code == 487:
        return EndReason.CANCELLED
    if 500 <= sip_code < 600 or sip_code < 300:
        return EndReason.UNREACHABLE
    return EndReason.REJECTED
