"""Call model and routing: who may call in, which agent answers, what a failure means.

Pure logic with no I/O: the SIP engine asks these functions and acts on the answers.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from gateway.config import Config, NumberRoute, Trunk


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
    AGENT_UNAVAILABLE = "agent_unavailable"  # the agent could not be connected while ringing
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

    def advance(self, new: CallState) -> bool:
        """Move to `new` if allowed; returns False (and stays) for a repeated or late state."""
        if new not in TRANSITIONS[self.state]:
            return False
        self.state = new
        return True


@dataclass(frozen=True)
class InboundDecision:
    accept: bool
    sip_code: int
    reason: str
    trunk: Trunk | None = None
    route: NumberRoute | None = None


def number_from_uri(uri: str) -> str:
    """The user part of a SIP URI or name-addr, normalised to E.164 where it looks like one."""
    # A quoted display name may hold anything, "sip:" and "<" included: drop it first.
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", uri)
    bracketed = re.search(r"<([^>]*)>", text)
    if bracketed:
        text = bracketed.group(1)
    match = re.search(r"sips?:([^@>\s]+)@", text, re.IGNORECASE) or re.search(
        r"tel:([^;>]+)", text, re.IGNORECASE
    )
    if not match:
        return ""
    # A telephone-subscriber user part may carry parameters: sip:+15551234567;npdi@host
    user = match.group(1).split(";", 1)[0]
    digits = re.sub(r"[\s().-]", "", user)
    if re.fullmatch(r"\+?[0-9]+", digits):
        return digits if digits.startswith("+") else "+" + digits
    return user


def route_inbound(
    config: Config,
    source_ip: str,
    dialled: list[str],
    active_total: int,
    capacity: int,
    active_by_trunk: dict[str, int],
    draining: bool,
) -> InboundDecision:
    """Decide an inbound INVITE: 503 when full or draining, 403 from an unknown source,
    404 for a number nobody answers, otherwise accept with the trunk and route."""
    if draining:
        return InboundDecision(False, 503, "draining")
    if active_total >= capacity:
        return InboundDecision(False, 503, "node at capacity")
    candidates = [t for t in config.trunks if t.allow_ips_match(source_ip)]
    if not candidates:
        return InboundDecision(False, 403, f"source {source_ip} is not allowed by any trunk")
    trunk = candidates[0]
    numbers = {n.number: n for n in config.numbers}
    route = next((numbers[d] for d in dialled if d in numbers), None)
    if route is None:
        return InboundDecision(False, 404, "number not routed", trunk)
    if route.trunk is not None:
        # Trunks of one carrier often share its addresses: take the one the number is bound to.
        bound = next((t for t in candidates if t.id == route.trunk), None)
        if bound is None:
            return InboundDecision(False, 403, f"number belongs to trunk {route.trunk}", trunk)
        trunk = bound
    if active_by_trunk.get(trunk.id, 0) >= trunk.max_concurrent_calls:
        return InboundDecision(False, 503, "trunk at max_concurrent_calls", trunk)
    return InboundDecision(True, 200, "accepted", trunk, route)


def destination_allowed(trunk: Trunk, to: str) -> bool:
    return any(to.startswith(prefix) for prefix in trunk.allowed_destinations)


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
