"""The CSeq sanity check that runs before pjsip's transaction layer (gateway/sip/sanity.py)."""

from __future__ import annotations

import pytest

from gateway.sip.sanity import is_new_invite, mismatched_cseq
from tests.torture import RFC4475_DIR as TORTURE


def test_a_request_whose_cseq_method_differs_is_caught() -> None:
    assert mismatched_cseq(b"OPTIONS sip:a@b SIP/2.0\r\nCSeq: 8 INVITE\r\n\r\n")


def test_matching_methods_compact_spacing_and_responses_pass() -> None:
    assert not mismatched_cseq(b"INVITE sip:a@b SIP/2.0\r\nCSeq:1   INVITE\r\n\r\n")
    assert not mismatched_cseq(b"ACK sip:a@b SIP/2.0\r\nCSeq: 1 ACK\r\n\r\n")
    assert not mismatched_cseq(b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n")


def test_a_cseq_in_the_body_is_not_the_header() -> None:
    message = b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 2 MESSAGE\r\n\r\nCSeq: 9 INVITE\r\n"
    assert not mismatched_cseq(message)


@pytest.mark.skipif(not TORTURE.is_dir(), reason="shared RFC 4475 data not present")
def test_of_the_rfc4475_messages_only_the_two_mismatch_cases_are_caught() -> None:
    caught = sorted(p.stem for p in TORTURE.glob("*.dat") if mismatched_cseq(p.read_bytes()))
    assert caught == ["mismatch01", "mismatch02"]


def test_a_new_invite_has_no_to_tag_and_a_reinvite_has_one() -> None:
    new = b"INVITE sip:+15550100@x SIP/2.0\r\nTo: <sip:+15550100@x>\r\nCSeq: 1 INVITE\r\n\r\n"
    compact = b"INVITE sip:a@x SIP/2.0\r\nt: <sip:a@x>;tag=abc\r\nCSeq: 2 INVITE\r\n\r\n"
    spaced = b"INVITE sip:a@x SIP/2.0\r\nTo: <sip:a@x> ; TAG = abc\r\nCSeq: 2 INVITE\r\n\r\n"
    assert is_new_invite(new)
    assert not is_new_invite(compact)
    assert not is_new_invite(spaced)
    assert not is_new_invite(b"OPTIONS sip:a@x SIP/2.0\r\nTo: <sip:a@x>\r\n\r\n")


def test_an_invite_whose_body_is_not_sdp_is_one_the_gate_answers_415() -> None:
    from gateway.sip.sanity import GateAnswer, unsupported_body

    head = b"INVITE sip:u@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    assert unsupported_body(head + b"Content-Type: application/unknownformat\r\n\r\nxyz")
    assert unsupported_body(head + b"c: text/plain\r\n\r\nhello")
    assert not unsupported_body(head + b"Content-Type: application/SDP\r\n\r\nv=0\r\n")
    assert not unsupported_body(head + b"Content-Type: text/plain\r\n\r\n")  # no body at all
    assert not unsupported_body(head + b"\r\n")
    assert GateAnswer(415).header == (b"Accept", b"application/sdp")
    assert GateAnswer(503, retry_after=5).header == (b"Retry-After", b"5")
    assert GateAnswer(404).header is None
