"""One error family: every error names its code, and through it its HTTP and SIP answers."""

from __future__ import annotations

from gateway.errors import (
    HTTP_STATUS,
    SIP_STATUS,
    CallRefused,
    CommandError,
    ConfigError,
    SipedgeError,
)


def test_every_code_has_an_http_and_a_sip_answer() -> None:
    assert set(HTTP_STATUS) == set(SIP_STATUS)
    assert all(400 <= s < 600 for s in (*HTTP_STATUS.values(), *SIP_STATUS.values()))


def test_a_full_node_says_503_both_ways_and_to_try_again() -> None:
    full = CallRefused("capacity_exceeded", "node at capacity (4 calls)")
    assert (full.code, full.http_status, full.sip_status, full.retryable) == (
        "capacity_exceeded", 503, 503, True,
    )  # fmt: skip
    draining = CallRefused("draining", "the node is draining")
    assert (draining.http_status, draining.retryable) == (503, True)


def test_a_missing_call_is_404_over_http_and_481_in_sip_and_not_worth_retrying() -> None:
    gone = CallRefused("call_not_found", "no active call c1")
    assert (gone.code, gone.http_status, gone.sip_status, gone.retryable) == (
        "resource_not_found", 404, 481, False,
    )  # fmt: skip


def test_every_sipedge_error_has_a_code() -> None:
    bad = CommandError("invalid_parameter", "to: must be E.164")
    assert (bad.http_status, bad.sip_status, bad.retryable) == (422, 400, False)
    assert ConfigError(["x: bad"]).code == "invalid_parameter"
    unexpected = SipedgeError("something broke")
    assert (unexpected.code, unexpected.http_status, unexpected.sip_status) == (
        "internal_error", 500, 500,
    )  # fmt: skip
