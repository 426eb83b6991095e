"""Reading header values and the Request-URI from received SIP message text."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.sip.message import (
    SOURCE_HEADER,
    caller_source,
    header,
    headers_matching,
    request_uri,
    source_address,
    source_ip,
)

TORTURE = Path("/work/shared/testdata/rfc4475")

INVITE = (
    "INVITE sip:+442070000000@edge.example.com:5060;user=phone SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds\r\n"
    "Via: SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK1\r\n"
    "Max-Forwards: 70\r\n"
    'To: "Support" <sip:+442070000000@edge.example.com>\r\n'
    'From: "Alice" <sip:+15550199@carrier.example.com>;tag=1928301774\r\n'
    "Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    "CSeq: 314159 INVITE\r\n"
    "Contact: <sip:+15550199@198.51.100.7:5060>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 142\r\n"
    "\r\n"
    "v=0\r\n"
    "o=- 2890844526 2890844526 IN IP4 198.51.100.7\r\n"
    "s=-\r\n"
    "c=IN IP4 198.51.100.7\r\n"
    "t=0 0\r\n"
    "m=audio 49170 RTP/AVP 0\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
)

COMPACT = (
    "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    "v: SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"
    "f: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
    "t: Bob <sip:bob@biloxi.example.com>\r\n"
    "i: 3848276298220188511@atlanta.example.com\r\n"
    "m: <sip:alice@client.atlanta.example.com;transport=tcp>\r\n"
    "c: application/sdp\r\n"
    "l: 0\r\n"
    "\r\n"
)


def torture(name: str) -> str:
    return (TORTURE / f"{name}.dat").read_bytes().decode("utf-8", errors="replace")


# -- header ------------------------------------------------------------------------------------


def test_header_by_long_name() -> None:
    assert header(INVITE, "Call-ID") == "a84b4c76e66710@pc33.example.com"
    assert header(INVITE, "To") == '"Support" <sip:+442070000000@edge.example.com>'
    assert header(INVITE, "From") == '"Alice" <sip:+15550199@carrier.example.com>;tag=1928301774'
    assert header(INVITE, "CSeq") == "314159 INVITE"


@pytest.mark.parametrize("name", ["call-id", "CALL-ID", "Call-Id", "cAlL-iD"])
def test_header_names_are_case_insensitive(name: str) -> None:
    assert header(INVITE, name) == "a84b4c76e66710@pc33.example.com"


def test_header_names_in_the_message_are_case_insensitive() -> None:
    message = INVITE.replace("Call-ID:", "CALL-id:")
    assert header(message, "call-id") == "a84b4c76e66710@pc33.example.com"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("to", "Bob <sip:bob@biloxi.example.com>"),
        ("from", "Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl"),
        ("call-id", "3848276298220188511@atlanta.example.com"),
        ("contact", "<sip:alice@client.atlanta.example.com;transport=tcp>"),
        ("via", "SIP/2.0/TCP client.atlanta.example.com:5060;branch=z9hG4bK74bf9"),
        ("content-type", "application/sdp"),
        ("content-length", "0"),
    ],
)
def test_header_finds_compact_forms_by_their_long_name(name: str, value: str) -> None:
    assert header(COMPACT, name) == value


def test_compact_form_letters_are_case_insensitive() -> None:
    message = COMPACT.replace("\r\ni:", "\r\nI:").replace("\r\nt:", "\r\nT:")
    assert header(message, "call-id") == "3848276298220188511@atlanta.example.com"
    assert header(message, "to") == "Bob <sip:bob@biloxi.example.com>"


def test_first_value_wins() -> None:
    assert header(INVITE, "via") == "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds"


def test_first_value_wins_across_long_and_compact_forms() -> None:
    message = INVITE.replace("Max-Forwards: 70\r\n", "Max-Forwards: 70\r\ni: compact-first\r\n")
    assert header(message, "call-id") == "compact-first"


def test_absent_header_is_empty() -> None:
    assert header(INVITE, "Subject") == ""
    assert header(INVITE, "") == ""


def test_header_does_not_read_the_body() -> None:
    # "c=IN IP4 ..." and "a=rtpmap:0 ..." in the SDP are not headers.
    assert header(INVITE, "a=rtpmap") == ""
    message = INVITE + "X-Body-Only: yes\r\n"
    assert header(message, "x-body-only") == ""


def test_header_stops_at_a_bare_lf_blank_line() -> None:
    message = "INVITE sip:a@b SIP/2.0\nCall-ID: lf-only\n\nSubject: in the body\n"
    assert header(message, "call-id") == "lf-only"
    assert header(message, "subject") == ""


def test_header_ignores_the_start_line() -> None:
    message = "OPTIONS sip:to: SIP/2.0\r\nCall-ID: x\r\n\r\n"
    assert header(message, "options sip") == ""
    assert header(message, "to") == ""


def test_header_value_is_trimmed_and_keeps_inner_colons() -> None:
    message = "INVITE sip:a@b SIP/2.0\r\nContact  :   <sip:a@192.0.2.1:5060>  \r\n\r\n"
    assert header(message, "contact") == "<sip:a@192.0.2.1:5060>"


def test_folded_header_lines_are_joined() -> None:
    message = (
        "INVITE sip:a@b SIP/2.0\r\n"
        "To:\r\n"
        " <sip:+15550100@example.com>\r\n"
        "Subject: first\r\n"
        "\tcontinued\r\n"
        "\r\n"
    )
    assert header(message, "to") == "<sip:+15550100@example.com>"
    assert header(message, "subject") == "first continued"


def test_header_of_an_empty_message() -> None:
    assert header("", "to") == ""


# -- request_uri -------------------------------------------------------------------------------


def test_request_uri_of_an_invite() -> None:
    assert request_uri(INVITE) == "sip:+442070000000@edge.example.com:5060;user=phone"


def test_request_uri_with_lf_line_endings() -> None:
    assert request_uri("BYE sip:bob@192.0.2.4 SIP/2.0\nCall-ID: x\n\n") == "sip:bob@192.0.2.4"


def test_request_uri_of_a_response_is_empty() -> None:
    assert request_uri("SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n") == ""
    assert request_uri("SIP/2.0 180 Ringing\r\n\r\n") == ""


@pytest.mark.parametrize("message", ["", "\r\n", "INVITE\r\n", "INVITE sip:a@b\r\n"])
def test_request_uri_of_a_malformed_start_line_is_empty(message: str) -> None:
    assert request_uri(message) == ""


# -- RFC 4475 torture messages -----------------------------------------------------------------


def test_wsinv_whitespace_and_folding() -> None:
    message = torture("wsinv")
    assert request_uri(message) == "sip:vivekg@chair-dnrc.example.com;unknownparam"
    assert header(message, "call-id") == "wsinv.ndaksdj@192.0.2.1"
    # "TO :" with its value folded onto the next line.
    assert header(message, "to").startswith("sip:vivekg@chair-dnrc.example.com")
    assert header(message, "max-forwards") == "0068"
    assert header(message, "content-length") == "150"
    assert header(message, "cseq") == "0009 INVITE"
    assert header(message, "contact").startswith('"Quoted string \\"\\"" <sip:jdrosen@example.com>')


def test_esc01_escaped_uris_are_returned_as_written() -> None:
    message = torture("esc01")
    assert request_uri(message) == "sip:sips%3Auser%40example.com@example.net"
    assert header(message, "to") == "sip:%75se%72@example.com"
    assert header(message, "from") == "<sip:I%20have%20spaces@example.net>;tag=938"
    assert header(message, "call-id") == "esc01.239409asdfakjkn23onasd0-3234"  # compact "i:"
    assert header(message, "contact") == (
        "<sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>"
    )
    assert header(message, "content-type") == "application/sdp"  # compact "C:"


def test_intmeth_unusual_method_and_uri() -> None:
    message = torture("intmeth")
    assert request_uri(message).startswith("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?")
    assert request_uri(message).endswith("@example.com")
    assert header(message, "call-id") == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert header(message, "max-forwards") == "255"


def test_responses_among_the_torture_messages_have_no_request_uri() -> None:
    for name in ("bigcode", "noreason", "unreason", "bcast"):
        assert request_uri(torture(name)) == "", name


@pytest.mark.parametrize("path", sorted(TORTURE.glob("*.dat")), ids=lambda p: p.stem)
def test_no_torture_message_breaks_the_readers(path: Path) -> None:
    message = path.read_bytes().decode("utf-8", errors="replace")
    for name in ("to", "from", "call-id", "via", "contact", "cseq"):
        assert isinstance(header(message, name), str)
        assert "\r" not in header(message, name) and "\n" not in header(message, name)
    assert " " not in request_uri(message)


# -- source_ip ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "ip"),
    [
        ("127.0.0.1:5060", "127.0.0.1"),
        ("198.51.100.7:49152", "198.51.100.7"),
        ("[::1]:5060", "::1"),
        ("[2001:db8::5]:5062", "2001:db8::5"),
        ("[2001:db8::5]", "2001:db8::5"),
        ("2001:db8::5", "2001:db8::5"),
        ("127.0.0.1", "127.0.0.1"),
    ],
)
def test_source_ip_drops_the_port(address: str, ip: str) -> None:
    assert source_ip(address) == ip


# -- caller_source -----------------------------------------------------------------------------

FRONT = ("127.0.0.1", 5159)


def vouched(value: str) -> str:
    return INVITE.replace(
        "Max-Forwards: 70\r\n", f"Max-Forwards: 70\r\n{SOURCE_HEADER}: {value}\r\n"
    )


@pytest.mark.parametrize(
    ("value", "caller"),
    [
        ("198.51.100.7:5060;transport=udp", "198.51.100.7"),
        ("[2001:db8::7]:5062;transport=tcp", "2001:db8::7"),
        ("198.51.100.7", "198.51.100.7"),
    ],
)
def test_behind_the_front_the_caller_is_the_address_the_front_names(
    value: str, caller: str
) -> None:
    assert caller_source(vouched(value), FRONT, FRONT) == caller


def test_the_header_counts_only_from_the_fronts_own_socket() -> None:
    message = vouched("198.51.100.7:5060;transport=udp")
    assert caller_source(message, ("127.0.0.1", 40000), FRONT) == "127.0.0.1"  # not its port
    assert caller_source(message, ("192.0.2.9", 5159), FRONT) == "192.0.2.9"
    assert caller_source(message, ("198.51.100.9", 5060), None) == "198.51.100.9"  # no front


def test_a_front_that_names_no_valid_address_leaves_the_sender() -> None:
    assert caller_source(INVITE, FRONT, FRONT) == "127.0.0.1"
    assert caller_source(vouched("sip.example.com:5060"), FRONT, FRONT) == "127.0.0.1"
    assert caller_source(vouched("[::1]:5060"), ("::1", 5159), ("0:0::1", 5159)) == "::1"


@pytest.mark.parametrize(
    ("address", "parts"),
    [("127.0.0.1:5060", ("127.0.0.1", 5060)), ("[::1]:5062", ("::1", 5062)),
     ("2001:db8::5", ("2001:db8::5", 0)), ("127.0.0.1", ("127.0.0.1", 0))],
)  # fmt: skip
def test_source_address_splits_the_port(address: str, parts: tuple[str, int]) -> None:
    assert source_address(address) == parts


# -- headers passed to the agent as variables -------------------------------------------------

WITH_HEADERS = (
    "INVITE sip:+15550100@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
    "X-Lead-Id: 42\r\n"
    "x-lead-id: 43\r\n"
    "X-Campaign:  spring \r\n"
    "Diversion: <sip:+15550999@carrier.example>;reason=unconditional\r\n"
    "X-Sipedge-Source: 198.51.100.7:5060;transport=udp\r\n"
    "X-Long: " + "a" * 2000 + "\r\n"
    "Subject: hello\r\n"
    "Content-Length: 0\r\n\r\n"
)


def test_headers_matching_names_and_wildcards_join_repeats_and_skip_ours() -> None:
    found = headers_matching(WITH_HEADERS, ["X-*", "diversion"])
    assert found["X-Lead-Id"] == "42, 43"  # one name, as first written
    assert found["X-Campaign"] == "spring"
    assert found["Diversion"].startswith("<sip:+15550999@")
    assert "X-Sipedge-Source" not in found  # the front's own, never the agent's
    assert len(found["X-Long"]) == 1024
    assert "Subject" not in found
    assert headers_matching(WITH_HEADERS, []) == {}
    assert headers_matching(WITH_HEADERS, ["s"]) == {}  # no pattern, no compact-form surprise
