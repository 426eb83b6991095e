"""What a webhook delivery is, as plain code: the signature, which events a subscription takes,
and what follows an attempt (delivered, retried later, given up; the subscription disabled).

The signature scheme (README "Webhooks"): `X-Sipedge-Signature: t=<unix seconds>,v1=<hex>`,
where hex is HMAC-SHA256 keyed with the secret's UTF-8 bytes over `f"{t}.{body}"`, body being
the exact bytes POSTed. A receiver recomputes it, compares in constant time, and refuses a `t`
too far from its own clock (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, StrictBool, StrictStr, WithJsonSchema

from gateway.backoff import Backoff
from gateway.events.commands import _Args
from gateway.events.schema import EVENT_TYPES

SIGNATURE_HEADER = "X-Sipedge-Signature"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300
PATTERN_RE = re.compile(r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$")
MAX_URL = 2048
MAX_PATTERNS = 64


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its turn, or for its next attempt
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up after max_attempts


def new_webhook_id() -> str:
    return "whk_" + secrets.token_hex(12)


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# --- the signature ------------------------------------------------------------------------


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{body}"` keyed with `secret`."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    return f"t={timestamp},{SIGNATURE_VERSION}={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str, body: bytes, now: float, tolerance: float = DEFAULT_TOLERANCE_S
) -> bool:
    """What a receiver does: True if `header` signs `body` with `secret` at a time within
    `tolerance` seconds of `now`."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields.get("t", [""])[0])
    except ValueError:
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, v) for v in fields.get(SIGNATURE_VERSION, []))


# --- which events a subscription takes ----------------------------------------------------


def matches(patterns: Iterable[str], event_type: str) -> bool:
    """`*` takes every event, `call.*` every type under `call.`, anything else one type."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def unknown_patterns(patterns: Iterable[str], types: Collection[str]) -> list[str]:
    """The patterns that match none of `types` (a typo like call.complete)."""
    return [p for p in patterns if not any(matches([p], t) for t in types)]


# --- what follows an attempt --------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter between the attempts of one delivery."""

    backoff_min: float = 1.0
    backoff_max: float = 600.0
    max_attempts: int = 12  # ~1 h of retries at the default backoff
    timeout: float = 10.0  # one attempt: connect and answer

    def delay(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        backoff = Backoff(self.backoff_min, self.backoff_max, attempts=max(0, attempts - 1),
                          rng=rng or random.Random())  # fmt: skip
        return backoff.next_delay()


@dataclass(frozen=True)
class Decision:
    status: DeliveryStatus
    next_attempt_at: float | None  # epoch seconds, for a delivery still pending
    consecutive_failures: int  # the subscription's, after this attempt
    disable: bool  # this failure is the one that disables the subscription


def succeeded(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def after_attempt(
    *,
    ok: bool,
    attempts: int,
    consecutive_failures: int,
    max_failures: int,
    policy: RetryPolicy,
    now: float,
    rng: random.Random | None = None,
) -> Decision:
    """`attempts`: of this delivery, this one counted; `consecutive_failures`: the
    subscription's before it. A success resets the run of failures; a failure retries the
    delivery later (or gives it up at max_attempts) and disables the subscription when the
    run reaches `max_failures`."""
    if ok:
        return Decision(DeliveryStatus.DELIVERED, None, 0, False)
    run = consecutive_failures + 1
    disable = run >= max_failures
    if attempts >= policy.max_attempts:
        return Decision(DeliveryStatus.FAILED, None, run, disable)
    return Decision(DeliveryStatus.PENDING, now + policy.delay(attempts, rng), run, disable)


# --- a subscription as the API and the webhook.create command take it ----------------------


# What the API's schema says of a URL, so a request it allows is one the node takes: a host
# (no IPv6 literal), an optional port (0-65535) and user info.
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = (
    r"^https?://([A-Za-z0-9._~%!$&'()*+,;=:-]+@)?[A-Za-z0-9._~-]+"
    rf"(:{_PORT})?([/?#]\S*)?$"
)
URL_HINT = "must be an http:// or https:// URL like https://cp.example.com/hooks"


def known_patterns(types: Collection[str]) -> list[str]:
    """Every type, every prefix pattern that matches one, and `*`."""
    prefixes = {
        ".".join(t.split(".")[:i]) + ".*" for t in types for i in range(1, t.count(".") + 1)
    }
    return sorted({"*", *types, *prefixes})


EVENT_PATTERNS = known_patterns(EVENT_TYPES)


def _known(value: str) -> str:
    if not PATTERN_RE.match(value):
        raise ValueError(f"{value!r} is not an event type or pattern like call.completed, "
                         "call.* or *")  # fmt: skip
    if unknown_patterns([value], EVENT_TYPES):
        raise ValueError(f"{value!r} matches no event type")
    return value


EventPattern = Annotated[
    StrictStr,
    AfterValidator(_known),
    WithJsonSchema({"type": "string", "enum": EVENT_PATTERNS}),
]


class WebhookCreate(_Args):
    url: StrictStr = Field(
        max_length=MAX_URL,
        pattern=URL_PATTERN,
        description="http:// or https:// URL the events are POSTed to",
    )
    events: list[EventPattern] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=MAX_PATTERNS,
        description="event types, or patterns like call.* or * (every event)",
    )
    secret: StrictStr | None = Field(
        None,
        min_length=16,
        max_length=256,
        description="the HMAC-SHA256 key; omitted: one is generated and returned once",
    )
    description: StrictStr | None = Field(None, max_length=256)
    enabled: StrictBool = True
