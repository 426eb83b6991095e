"""What a worker runs with behind the front: its own address in SIP, the public one in SDP,
the front as its outbound proxy, and the trunks' allowed_ips as written (the front names
each caller's address)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import (
    Config,
    front_worker_side,
    listeners,
    rtp_advertised_host,
    share,
    sip_advertised_host,
    slot_config,
    worker_slots,
)
from gateway.sip.accounts import outbound_proxies


def config(mode: str = "embedded", **sip: Any) -> Config:
    return Config.model_validate(
        {
            "node": {"workers": 1 if mode == "none" else 2},
            "sip": {
                "listen": "192.0.2.10",
                "port": 5060,
                "public_address": "203.0.113.50",
                "front": {"mode": mode},
                **sip,
            },  # fmt: skip
            "trunks": [
                {
                    "id": "carrier",
                    "allowed_ips": ["198.51.100.0/24"],
                    "proxy": "sip:sbc.carrier.example:5060",
                    "registrar": "sip:reg.example",
                    "register": True,
                    "username": "u",
                    "password": "${PW}",
                },
                {"id": "dialout", "proxy": "sip:198.51.100.9"},
            ],
        }  # fmt: skip
    )


def worker(c: Config, index: int = 1) -> Config:
    return slot_config(c, worker_slots(c)[index - 1])


def test_behind_a_front_sip_advertises_the_worker_and_sdp_the_public_address() -> None:
    sip = worker(config()).sip
    assert (sip.listen, sip.port) == ("127.0.0.1", 5160)
    assert sip_advertised_host(sip) is None  # Via and Contact: 127.0.0.1:5160, the front's way
    assert sip.public_address == "203.0.113.50"  # media (SDP c=) still advertises it
    alone = worker(config("none")).sip
    assert sip_advertised_host(alone) == "203.0.113.50"


def test_the_front_is_every_trunks_first_hop() -> None:
    c = worker(config())
    carrier, dialout = c.trunks
    assert outbound_proxies(c, carrier) == [
        "sip:127.0.0.1:5159;transport=udp;lr",
        "sip:sbc.carrier.example:5060;transport=udp;lr",
    ]
    assert outbound_proxies(c, dialout) == ["sip:127.0.0.1:5159;transport=udp;lr"]
    alone = worker(config("none"))
    assert outbound_proxies(alone, alone.trunks[1]) == []


def test_trunks_keep_their_allowed_ips_and_per_source_limits_widen() -> None:
    c = worker(config())
    carrier, dialout = c.trunks
    # The front names each caller's address (X-Sipedge-Source): not one trunk lets it in.
    assert carrier.allowed_ips == ["198.51.100.0/24"] and dialout.allowed_ips == []
    assert not carrier.allow_ips_match("127.0.0.1")
    # The front limits each source and spreads it over the workers: its per-worker cap.
    assert c.limits.invites_per_second_per_source >= 2 * c.sip.front.worker_invites_per_second
    assert c.limits.max_unconfirmed_per_source == 4
    alone = worker(config("none"))
    assert alone.trunks[0].allowed_ips == ["198.51.100.0/24"]
    assert alone.limits == Config().limits


def test_the_front_sits_on_the_port_below_the_first_worker() -> None:
    assert front_worker_side(config()) == ("127.0.0.1", 5159)
    assert front_worker_side(
        config(front={"mode": "external", "worker_ports_start": 7000, "worker_host": "10.0.0.5"})
    ) == ("10.0.0.5", 6999)


def test_a_front_on_every_address_must_be_told_the_address_it_advertises() -> None:
    with pytest.raises(ValueError, match="set sip.public_address"):
        config(listen="0.0.0.0", public_address=None)
    assert config(listen="0.0.0.0").sip.public_address == "203.0.113.50"


def cluster_node(worker_host: str) -> Config:
    """A node of a cluster: its workers on its own address, the front elsewhere."""
    return config(
        "external",
        public_address=None,
        rtp_listen=worker_host,
        rtp_public_address="198.51.100.77",
        front={"mode": "external", "worker_host": worker_host, "host": "192.0.2.10", "port": 5090},
    )


def test_a_front_on_another_machine_is_the_workers_first_hop_and_their_only_source() -> None:
    c = worker(cluster_node("10.0.0.2"))
    assert (c.sip.listen, c.sip.port) == ("10.0.0.2", 5160)
    assert front_worker_side(c) == ("192.0.2.10", 5090)
    assert outbound_proxies(c, c.trunks[1]) == ["sip:192.0.2.10:5090;transport=udp;lr"]
    assert c.trunks[0].allowed_ips == ["198.51.100.0/24"]  # the caller's own address counts


def test_sdp_advertises_the_nodes_own_media_address_in_a_cluster() -> None:
    sip = worker(cluster_node("10.0.0.2")).sip
    assert rtp_advertised_host(sip) == "198.51.100.77"  # not the front's address
    assert rtp_advertised_host(worker(config()).sip) == "203.0.113.50"  # one node: public


def test_the_front_socket_and_the_workers_are_separate_listeners() -> None:
    bound = {b.key: b for b in listeners(cluster_node("10.0.0.2"))}
    assert (bound["sip.front.port"].host, bound["sip.front.port"].ports) == ("192.0.2.10", "5090")
    workers = bound["sip.front.worker_ports_start"]
    assert (workers.host, workers.ports) == ("10.0.0.2", "5160-5161")
    assert bound["sip.rtp_ports"].host == "10.0.0.2"  # RTP binds rtp_listen


def test_each_worker_takes_its_share_of_the_nodes_call_limits() -> None:
    c = Config.model_validate(
        {
            "node": {"workers": 3},
            "sip": {"listen": "192.0.2.10", "front": {"mode": "embedded"}},
            "trunks": [
                {"id": "a", "max_concurrent_calls": 3},
                {"id": "b", "max_concurrent_calls": 1},
                {"id": "c", "max_concurrent_calls": 5},
                {"id": "d"},
            ],
            "limits": {"max_concurrent_calls": 5},
        }  # fmt: skip
    )
    assert [slot.calls for slot in worker_slots(c)] == [2, 2, 1]
    workers = [worker(c, i) for i in (1, 2, 3)]
    assert [w.limits.max_concurrent_calls for w in workers] == [2, 2, 1]
    limits = {t.id: [w.trunk(t.id).max_concurrent_calls for w in workers] for t in c.trunks}
    # Below the node's limit a trunk is split (one worker takes none of b's calls); at or
    # above it the node's limit holds the trunk's.
    assert limits == {"a": [1, 1, 1], "b": [1, 0, 0], "c": [5, 5, 5], "d": [100, 100, 100]}


def test_shares_add_up_to_the_whole() -> None:
    for total in range(1, 30):
        for parts in range(1, 8):
            shares = [share(total, parts, i) for i in range(1, parts + 1)]
            assert sum(shares) == total and max(shares) - min(shares) <= 1


def test_a_node_cannot_have_more_workers_than_calls() -> None:
    with pytest.raises(ValueError, match="3 workers share limits.max_concurrent_calls \\(2\\)"):
        Config.model_validate(
            {"node": {"workers": 3}, "sip": {"listen": "192.0.2.10", "front": {"mode": "embedded"}},
             "limits": {"max_concurrent_calls": 2}}
        )  # fmt: skip
