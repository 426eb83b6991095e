"""Call routing: who may call in, which agent answers, which destinations a trunk may dial."""

from __future__ import annotations

import textwrap

import pytest

from gateway.calls.routing import (
    InboundDecision,
    destination_allowed,
    number_from_uri,
    route_inbound,
)
from gateway.config import Config, parse_config

CONFIG = parse_config(
    textwrap.dedent(
        """
        trunks:
          - id: carrier
            allowed_ips: [198.51.100.0/24, "2001:db8:100::/48"]
            max_concurrent_calls: 2
            allowed_destinations: ["+44", "+353"]
          - id: carrier-b
            # A second account at the same carrier: same signalling addresses.
            allowed_ips: [198.51.100.0/24]
            max_concurrent_calls: 5
          - id: pbx
            allowed_ips: [192.0.2.20/32]
        agents:
          - {id: echo, type: echo}
          - {id: bot, type: pcm-ws, url: "ws://127.0.0.1:9000"}
        numbers:
          - {number: "+442070000000", agent: bot, variables: {queue: sales}}
          - {number: "+442070000001", agent: echo, trunk: pbx}
          - {number: "+442070000002", agent: bot, trunk: carrier-b}
        """
    ),
    "test.yaml",
    {},
)
CARRIER_IP = "198.51.100.7"
PBX_IP = "192.0.2.20"


def route(
    source_ip: str = CARRIER_IP,
    dialled: list[str] | None = None,
    active_by_trunk: dict[str, int] | None = None,
    config: Config = CONFIG,
) -> InboundDecision:
    return route_inbound(
        config,
        source_ip,
        ["+442070000000"] if dialled is None else dialled,
        active_by_trunk or {},
    )


# -- route_inbound -----------------------------------------------------------------------------


def test_accepts_a_routed_number_from_a_trunk_address() -> None:
    decision = route()
    assert decision.accept and decision.sip_code == 200
    assert decision.trunk is not None and decision.trunk.id == "carrier"
    assert decision.route is not None and decision.route.agent == "bot"
    assert decision.route.variables == {"queue": "sales"}


def test_source_outside_every_trunk_is_forbidden() -> None:
    decision = route(source_ip="203.0.113.1")
    assert (decision.accept, decision.sip_code) == (False, 403)
    assert "203.0.113.1" in decision.reason
    assert decision.trunk is None and decision.route is None


def test_unparseable_source_is_forbidden_not_a_crash() -> None:
    decision = route(source_ip="carrier.example.com")
    assert (decision.accept, decision.sip_code) == (False, 403)


def test_ipv6_source_inside_a_trunk_network_is_accepted() -> None:
    decision = route(source_ip="2001:db8:100::5")
    assert decision.accept and decision.trunk is not None and decision.trunk.id == "carrier"


def test_unknown_number_is_not_found_and_names_the_trunk() -> None:
    decision = route(dialled=["+15550100"])
    assert (decision.accept, decision.sip_code, decision.reason) == (
        False,
        404,
        "number not routed",
    )
    assert decision.trunk is not None and decision.trunk.id == "carrier"


def test_no_dialled_number_is_not_found() -> None:
    assert route(dialled=[]).sip_code == 404


def test_first_dialled_number_that_is_routed_wins() -> None:
    # The engine passes the Request-URI number first, then the To number.
    decision = route(dialled=["+15550100", "+442070000000"])
    assert decision.accept and decision.route is not None
    assert decision.route.number == "+442070000000"


def test_number_bound_to_another_trunk_is_forbidden() -> None:
    decision = route(dialled=["+442070000001"])  # bound to pbx, arriving from the carrier
    assert (decision.accept, decision.sip_code) == (False, 403)
    assert "pbx" in decision.reason


def test_number_bound_to_its_trunk_is_accepted_from_that_trunk() -> None:
    decision = route(source_ip=PBX_IP, dialled=["+442070000001"])
    assert decision.accept and decision.trunk is not None and decision.trunk.id == "pbx"
    assert decision.route is not None and decision.route.agent == "echo"


def test_trunks_sharing_addresses_route_to_the_trunk_the_number_is_bound_to() -> None:
    decision = route(dialled=["+442070000002"])
    assert decision.accept
    assert decision.trunk is not None and decision.trunk.id == "carrier-b"


def test_trunk_at_its_call_limit_refuses_with_503() -> None:
    decision = route(active_by_trunk={"carrier": 2})
    assert (decision.accept, decision.sip_code) == (False, 503)
    assert decision.reason == "trunk at max_concurrent_calls"
    assert decision.trunk is not None and decision.trunk.id == "carrier"


def test_another_trunks_calls_do_not_count_against_this_one() -> None:
    assert route(active_by_trunk={"pbx": 10, "carrier": 1}).accept


def test_limit_is_checked_on_the_trunk_the_number_is_bound_to() -> None:
    assert not route(dialled=["+442070000002"], active_by_trunk={"carrier-b": 5}).accept
    assert route(dialled=["+442070000002"], active_by_trunk={"carrier": 2}).accept


# -- number_from_uri ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "number"),
    [
        ("sip:+442070000000@carrier.example.com", "+442070000000"),
        ("sips:+442070000000@carrier.example.com:5061", "+442070000000"),
        ("sip:442070000000@198.51.100.7:5060;user=phone", "+442070000000"),
        ("<sip:+15550100@127.0.0.1:5060>", "+15550100"),
        ("<sip:+15550100@127.0.0.1>;tag=1928301774", "+15550100"),
        ('"Alice Smith" <sip:+15550100@example.com>;tag=abc', "+15550100"),
        ("Bob <sip:15550100@example.com;transport=tcp>", "+15550100"),
        ('"sip:spoof@evil <x>" <sip:+15550100@example.com>', "+15550100"),
        ("sip:+1-555-0100@example.com", "+15550100"),
        ("sip:+15551234567;npdi;rn=+15559999999@example.com;user=phone", "+15551234567"),
        ("SIP:+15550100@EXAMPLE.COM", "+15550100"),
        ("tel:+1-555-0100", "+15550100"),
        ("tel:+1.555.0100;phone-context=example.com", "+15550100"),
        ("<tel:+1 (555) 0100>", "+15550100"),
    ],
)
def test_number_from_uri_normalises_telephone_users_to_e164(uri: str, number: str) -> None:
    assert number_from_uri(uri) == number


@pytest.mark.parametrize(
    ("uri", "user"),
    [
        ("sip:alice@example.com", "alice"),
        ('"Alice" <sips:alice@example.com>;tag=1', "alice"),
        ("sip:user;par=u%40example.net@example.com", "user"),
        ("sip:12ab@example.com", "12ab"),
    ],
)
def test_number_from_uri_returns_non_numeric_users_unchanged(uri: str, user: str) -> None:
    assert number_from_uri(uri) == user


@pytest.mark.parametrize("uri", ["sip:example.com", "<sip:example.com;lr>", "", "mailto:a@b.c"])
def test_number_from_uri_without_a_user_part_is_empty(uri: str) -> None:
    assert number_from_uri(uri) == ""


# -- destination_allowed -----------------------------------------------------------------------


def test_destination_allowed_by_prefix() -> None:
    carrier = CONFIG.trunk("carrier")
    assert carrier is not None
    assert destination_allowed(carrier, "+442070000000")
    assert destination_allowed(carrier, "+35312345678")
    assert not destination_allowed(carrier, "+15550100")
    assert not destination_allowed(carrier, "442070000000")


def test_default_destinations_allow_any_e164_number() -> None:
    pbx = CONFIG.trunk("pbx")
    assert pbx is not None and pbx.allowed_destinations == ["+"]
    assert destination_allowed(pbx, "+15550100")
    assert not destination_allowed(pbx, "15550100")
