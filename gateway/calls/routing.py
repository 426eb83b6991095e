"""Call routing: who may call in, which trunk and number route an inbound call takes, and
where an outbound call may go.

Pure logic with no I/O: the SIP engine asks these functions and acts on the answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gateway.config import Config, NumberRoute, Trunk


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
    active_by_trunk: dict[str, int],
) -> InboundDecision:
    """Route an inbound INVITE: 403 from an unknown source, 404 for a number nobody answers,
    503 when its trunk is at max_concurrent_calls, otherwise accept with the trunk and route.
    Whether the node takes a call at all (draining, capacity) is admission's decision."""
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
