"""The front's Kamailio files rendered from a sipedge config: pure text, checked as text."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, worker_slots
from gateway.front.render import FrontPaths, dispatcher_list, fill, front_limits, render
from gateway.sip.message import SOURCE_HEADER

PATHS = FrontPaths(Path("/run/sipedge-front"))


def config(**overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "node": {"workers": 3},
        "sip": {"listen": "192.0.2.10", "port": 5060, "front": {"mode": "embedded"}},
        "trunks": [
            {"id": "carrier", "allowed_ips": ["198.51.100.0/24", "203.0.113.7"]},
            {"id": "outbound-only"},
            {"id": "pbx", "allowed_ips": ["198.51.100.20/32"]},
        ],
        "numbers": [
            {"number": "+15550100", "agent": "echo"},
            {"number": "+15550199", "agent": "echo", "trunk": "pbx"},
        ],
        "agents": [{"id": "echo", "type": "echo"}],
        "limits": {"max_concurrent_calls": 12},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return Config.model_validate(raw)


def cfg(c: Config) -> str:
    return render(c, worker_slots(c), PATHS).kamailio_cfg


def block(text: str, head: str) -> str:
    """The body of one route block of the rendered config."""
    start = text.index(head + " {")
    return text[start : text.index("\n}\n", start)]


def test_every_placeholder_is_filled_and_the_files_live_in_the_run_directory() -> None:
    text = cfg(config())
    assert "{{" not in text and "}}" not in text
    assert 'modparam("dispatcher", "list_file", "/run/sipedge-front/dispatcher.list")' in text
    assert 'modparam("jsonrpcs", "dgram_socket", "/run/sipedge-front/rpc.sock")' in text


def test_the_front_listens_publicly_and_on_its_worker_side_socket() -> None:
    text = cfg(config(sip={"public_address": "203.0.113.50"}))
    assert "listen=udp:192.0.2.10:5060 advertise 203.0.113.50:5060" in text
    assert "listen=tcp:192.0.2.10:5060 advertise 203.0.113.50:5060" in text
    assert "listen=udp:127.0.0.1:5159" in text  # the port below the first worker's (5160)
    assert "/@203.0.113.50:5060/" in text  # REGISTER Contacts name the public address
    udp_only = cfg(config(sip={"transports": ["udp"]}))
    assert "disable_tcp=yes" in udp_only and "listen=tcp:" not in udp_only
    assert '$fs = "udp:192.0.2.10:5060";' in block(udp_only, "route[PUBLIC_SOCKET]")


def test_the_dispatcher_list_has_every_worker_capped_at_its_call_slots() -> None:
    c = config()
    lines = render(c, worker_slots(c), PATHS).dispatcher_list.splitlines()[1:]
    assert lines == [
        f"1 sip:127.0.0.1:{5160 + i} 8 0 duid=worker-{i + 1};maxload=4;socket=udp:127.0.0.1:5159"
        for i in range(3)
    ]


def test_each_worker_is_capped_at_its_share_of_the_nodes_calls() -> None:
    c = config(limits={"max_concurrent_calls": 5})
    listed = render(c, worker_slots(c), PATHS).dispatcher_list
    assert re.findall(r";maxload=(\d+);", listed) == ["2", "2", "1"]


def test_a_node_limited_below_one_workers_slots_caps_each_worker_at_its_limit() -> None:
    c = config(node={"workers": 1}, limits={"max_concurrent_calls": 2})
    assert ";maxload=2;" in render(c, worker_slots(c), PATHS).dispatcher_list


def test_dispatcher_list_writes_ipv6_workers_in_brackets() -> None:
    [slot] = worker_slots(config(node={"workers": 1}))
    slot = type(slot)(1, "::1", 5160, "::", 20000, 20999)
    assert "1 sip:[::1]:5160 8 0 duid=worker-1;" in dispatcher_list([slot], "udp:[::1]:5159", 4)


def test_sources_map_to_the_first_trunk_that_allows_them_in_config_order() -> None:
    body = block(cfg(config()), "route[TRUNK_OF_SOURCE]")
    carrier = body.index('is_in_subnet("$si", "198.51.100.0/24,203.0.113.7/32")')
    pbx = body.index('is_in_subnet("$si", "198.51.100.20/32")')
    assert carrier < pbx  # 198.51.100.20 is the carrier's unless the number is the pbx's
    assert "outbound-only" not in body  # no allowed_ips: no inbound calls at all
    bound = block(cfg(config()), "route[SOURCE_IN_BOUND_TRUNK]")
    assert '$var(bound) == "pbx" && is_in_subnet("$si", "198.51.100.20/32")' in bound


def test_routed_numbers_are_loaded_with_the_trunk_they_are_bound_to() -> None:
    body = block(cfg(config()), "event_route[htable:mod-init]")
    assert '$sht(numbers=>+15550100) = "*";' in body
    assert '$sht(numbers=>+15550199) = "pbx";' in body


def test_limits_turn_the_workers_token_bucket_into_windows_of_the_same_rate_and_burst() -> None:
    c = config(limits={"invites_per_second_per_source": 20, "invite_burst_per_source": 40})
    limits = front_limits(c)
    assert limits.rate_window == 2 and limits.source_invites == 40  # 20/s, 40 at once
    assert limits.worker_invites == 40  # sip.front.worker_invites_per_second 20, per 2 s
    text = cfg(c)
    assert 'modparam("pipelimit", "timer_interval", 2)' in text
    assert 'pl_check("source:$si", "TAILDROP", 40)' in text
    slow = front_limits(config(limits={"invites_per_second_per_source": 0.5,
                                       "invite_burst_per_source": 3}))  # fmt: skip
    assert (slow.rate_window, slow.source_invites) == (6, 3)


def test_refusals_carry_retry_after_and_the_server_header_has_no_version() -> None:
    text = cfg(config(limits={"retry_after": 7}, sip={"user_agent": "acme-edge"}))
    assert text.count("Retry-After: 7\\r\\n") == 2  # a refusal, and all workers failing
    assert 'server_header="Server: acme-edge"' in text
    assert 'user_agent_header="User-Agent: acme-edge"' in text
    assert "5.6" not in re.sub(r"(?m)^#.*$", "", text)


def test_a_missing_value_is_a_renderer_bug_named_by_its_placeholder() -> None:
    with pytest.raises(KeyError, match="PORT"):
        fill("listen={{HOST}}:{{PORT}}", {"HOST": "127.0.0.1"})
    assert fill("a {{B}} c", {"B": "b"}) == "a b c"


def test_the_front_alone_names_the_callers_address_to_the_workers() -> None:
    text = cfg(config())
    assert f'remove_hf("{SOURCE_HEADER}");' in block(text, "request_route")
    dispatch = block(text, "route[DISPATCH]")
    assert f'append_hf("{SOURCE_HEADER}: $siz:$sp;transport=$pr\\r\\n");' in dispatch
