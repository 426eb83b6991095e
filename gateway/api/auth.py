"""Who may call the HTTP API, and how often: bearer keys and a per-key rate limit.

Plain logic with an injectable clock, no I/O; the API middleware is the thin shell around it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import SecretStr

WINDOW_SECONDS = 60


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison time independent of key lengths too.
    return hashlib.sha256(value.encode("utf-8")).digest()


class ApiKeys:
    """The configured bearer keys; `identify` compares in constant time against every key."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        self._digests = [_digest(k.get_secret_value()) for k in keys]

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str | None) -> str | None:
        """A stable, non-secret id (`key-1`, `key-2`, ...) for a valid key, else None.

        Every configured key is compared, whatever matched before, so the time taken does not
        say which key (or how much of one) was right.
        """
        if not presented:
            return None
        given = _digest(presented)
        found: str | None = None
        for index, digest in enumerate(self._digests, start=1):
            if hmac.compare_digest(given, digest) and found is None:
                found = f"key-{index}"
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True, slots=True)
class Quota:
    """The state of one bucket after a request: what the X-RateLimit-* headers say."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # Unix time (s) when the window ends and the bucket refills

    def headers(self, now: float) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.reset_at - now)))
        return headers


class RateLimiter:
    """Fixed one-minute windows per bucket (an API key id, or a client address)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._windows: dict[str, tuple[int, int]] = {}  # bucket -> (window start, used)

    def _window(self, bucket: str) -> tuple[int, int]:
        start = int(self.clock()) // WINDOW_SECONDS * WINDOW_SECONDS
        window = self._windows.get(bucket)
        if window is None or window[0] != start:
            if len(self._windows) > 10_000:  # forget buckets of past windows
                self._windows = {b: w for b, w in self._windows.items() if w[0] == start}
            window = (start, 0)
        return window

    def hit(self, bucket: str) -> Quota:
        """Count one request against `bucket`; refused (allowed=False) past the limit."""
        start, used = self._window(bucket)
        allowed = used < self.per_minute
        if allowed:
            used += 1
        self._windows[bucket] = (start, used)
        return Quota(allowed, self.per_minute, self.per_minute - used, start + WINDOW_SECONDS)

    def peek(self, bucket: str) -> Quota:
        """The bucket's state without counting a request (for endpoints that are not limited)."""
        start, used = self._window(bucket)
        return Quota(True, self.per_minute, self.per_minute - used, start + WINDOW_SECONDS)
