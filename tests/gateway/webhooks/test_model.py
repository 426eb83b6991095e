"""The pure parts of webhooks: the signature, which events a subscription takes, and what
follows an attempt."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.events.schema import EVENT_TYPES
from gateway.webhooks.model import (
    DeliveryStatus,
    RetryPolicy,
    WebhookCreate,
    after_attempt,
    matches,
    signature_header,
    unknown_patterns,
    verify,
)

SECRET = "whsec_0123456789abcdef"
BODY = b'{"id":"evt_1","type":"call.completed"}'


def test_signature_is_hmac_sha256_of_timestamp_dot_body_as_documented() -> None:
    header = signature_header(SECRET, 1_700_000_000, BODY)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_takes_a_good_signature_and_refuses_a_changed_body_key_or_stale_time() -> None:
    header = signature_header(SECRET, 1_700_000_000, BODY)
    assert verify(SECRET, header, BODY, now=1_700_000_010)
    assert not verify(SECRET, header, BODY + b" ", now=1_700_000_010)
    assert not verify("whsec_another_secret__", header, BODY, now=1_700_000_010)
    assert not verify(SECRET, header, BODY, now=1_700_000_000 + 301)  # a replay, too late
    assert not verify(SECRET, "t=x,v1=00", BODY, now=1_700_000_000)
    assert not verify(SECRET, "", BODY, now=1_700_000_000)


def test_the_readme_verification_example_takes_our_signature() -> None:
    readme = (Path(__file__).parents[3] / "README.md").read_text()
    snippet = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert snippet is not None, "README: the Webhooks section's Python example"
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    readme_verify = namespace["verify"]
    header = signature_header(SECRET, int(time.time()), BODY)
    assert readme_verify(SECRET, header, BODY)
    assert not readme_verify(SECRET, header, BODY + b"x")
    assert not readme_verify(SECRET, signature_header(SECRET, 1_000, BODY), BODY)
    assert not readme_verify(SECRET, "junk", BODY)


def test_patterns_match_one_type_a_prefix_or_everything() -> None:
    assert matches(["call.completed"], "call.completed")
    assert not matches(["call.completed"], "call.completed.x")
    assert matches(["call.*"], "call.speech.started")
    assert not matches(["call.*"], "campaign.started")
    assert not matches(["call.*"], "callx.y")
    assert matches(["*"], "trunk.registered")
    assert matches(["trunk.registered", "call.*"], "call.dtmf")
    assert not matches([], "call.dtmf")
    assert unknown_patterns(["call.*", "call.complete", "webhook.*"], EVENT_TYPES) == [
        "call.complete"
    ]


def test_a_subscription_request_names_a_bad_url_or_pattern() -> None:
    ok = WebhookCreate.model_validate({"url": "https://cp.example.com/h", "events": ["call.*"]})
    assert ok.secret is None and ok.enabled
    for url in ("http://127.0.0.1:65535/h", "https://u:p@cp:8443", "http://cp/h?token=x#f"):
        assert WebhookCreate.model_validate({"url": url}).url == url
    for body, field in (
        ({"url": "ftp://x/h"}, "url"),
        ({"url": "http://cp:65536/h"}, "url"),
        ({"url": "http://[::1]/h"}, "url"),
        ({"url": "https://x/h", "events": ["call.complete"]}, "events"),
        ({"url": "https://x/h", "events": ["CALL"]}, "events"),
        ({"url": "https://x/h", "events": []}, "events"),
        ({"url": "https://x/h", "secret": "short"}, "secret"),
        ({"url": "https://x/h", "extra": 1}, "extra"),
    ):
        with pytest.raises(ValidationError) as caught:
            WebhookCreate.model_validate(body)
        assert caught.value.errors()[0]["loc"][0] == field


POLICY = RetryPolicy(backoff_min=1.0, backoff_max=60.0, max_attempts=5)


def test_a_success_delivers_and_resets_the_run_of_failures() -> None:
    d = after_attempt(ok=True, attempts=3, consecutive_failures=7, max_failures=20,
                      policy=POLICY, now=100.0)  # fmt: skip
    assert (d.status, d.next_attempt_at, d.consecutive_failures, d.disable) == (
        DeliveryStatus.DELIVERED, None, 0, False)  # fmt: skip


def test_failures_back_off_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    delays = []
    for attempts in range(1, 5):
        d = after_attempt(ok=False, attempts=attempts, consecutive_failures=0, max_failures=20,
                          policy=POLICY, now=100.0, rng=rng)  # fmt: skip
        assert d.status is DeliveryStatus.PENDING and d.next_attempt_at is not None
        delays.append(d.next_attempt_at - 100.0)
    for attempts, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2.0**attempts)
        assert max(1.0, ceiling / 2) <= delay <= ceiling
    capped = [POLICY.delay(40, rng) for _ in range(20)]
    assert all(30.0 <= d <= 60.0 for d in capped)
    assert len(set(capped)) > 1  # jittered: not every node retries at the same instant


def test_a_delivery_is_given_up_at_max_attempts_and_the_run_disables_at_max_failures() -> None:
    given_up = after_attempt(ok=False, attempts=5, consecutive_failures=2, max_failures=20,
                             policy=POLICY, now=0.0)  # fmt: skip
    assert given_up.status is DeliveryStatus.FAILED and given_up.next_attempt_at is None
    assert given_up.consecutive_failures == 3 and not given_up.disable
    last = after_attempt(ok=False, attempts=1, consecutive_failures=19, max_failures=20,
                         policy=POLICY, now=0.0)  # fmt: skip
    assert last.disable and last.consecutive_failures == 20
    assert last.status is DeliveryStatus.PENDING  # kept: sent after a re-enable
