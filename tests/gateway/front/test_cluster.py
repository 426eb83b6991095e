"""One front for several nodes, rendered from each node's own config: the nodes must agree on
what the front enforces; dispatcher.list holds every node's workers under its node id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.front.cluster import ClusterNode, render_cluster
from gateway.front.health import FrontWorker
from gateway.front.render import FrontPaths, render

PATHS = FrontPaths(Path("/etc/kamailio/sipedge"))


def node(node_id: str, worker_host: str, workers: int = 2, **sip: Any) -> ClusterNode:
    front = {"mode": "external", "worker_host": worker_host, "host": "10.0.0.1", "port": 5090}
    config = Config.model_validate(
        {
            "node": {"id": node_id, "workers": workers},
            "sip": {
                "listen": "192.0.2.10",
                "port": 5060,
                "rtp_listen": worker_host,
                "front": {**front, **sip.pop("front", {})},
                **sip,
            },
            "trunks": [{"id": "carrier", "allowed_ips": ["198.51.100.0/24"]}],
            "numbers": [{"number": "+15550100", "agent": "echo"}],
            "agents": [{"id": "echo", "type": "echo"}],
        }
    )
    return ClusterNode(f"{node_id}.yaml", config)


def test_the_front_of_two_nodes_dispatches_over_the_workers_of_both() -> None:
    a, b = node("node-a", "10.0.0.2"), node("node-b", "10.0.0.3", workers=1)
    files = render_cluster([a, b], PATHS)
    rows = [line for line in files.dispatcher_list.splitlines() if not line.startswith("#")]
    socket = "socket=udp:10.0.0.1:5090"
    assert rows == [
        f"1 sip:10.0.0.2:5160 8 0 duid=node-a/worker-1;maxload=4;{socket}",
        f"1 sip:10.0.0.2:5161 8 0 duid=node-a/worker-2;maxload=4;{socket}",
        f"1 sip:10.0.0.3:5160 8 0 duid=node-b/worker-1;maxload=4;{socket}",
    ]
    assert "# node node-b (node-b.yaml)" in files.dispatcher_list
    # The front's own config is each node's: one socket for every node's workers.
    assert files.kamailio_cfg == render(a.config, [], PATHS).kamailio_cfg
    assert "listen=udp:10.0.0.1:5090" in files.kamailio_cfg


def test_one_node_renders_as_it_does_alone() -> None:
    a = node("node-a", "10.0.0.2")
    assert render_cluster([a], PATHS).dispatcher_list.count("duid=worker-") == 2


def test_nodes_that_disagree_on_what_the_front_enforces_are_told_where() -> None:
    a = node("node-a", "10.0.0.2")
    b = node("node-b", "10.0.0.3", port=5070)
    with pytest.raises(ConfigError) as info:
        render_cluster([a, b], PATHS)
    (problem,) = info.value.problems
    assert problem.startswith("node-b.yaml: the front it renders differs from node-a.yaml's")
    assert "'listen=udp:192.0.2.10:5070'" in problem and "sip.port" in problem


def test_nodes_without_the_fronts_address_would_each_want_their_own_socket() -> None:
    a = node("node-a", "10.0.0.2", front={"host": None, "port": 0})
    b = node("node-b", "10.0.0.3", front={"host": None, "port": 0})
    with pytest.raises(ConfigError, match=r"listen=udp:10\.0\.0\.3:5159.*sip\.front\.host"):
        render_cluster([a, b], PATHS)


def test_node_ids_and_worker_addresses_must_be_each_nodes_own() -> None:
    a = node("node-a", "10.0.0.2")
    with pytest.raises(ConfigError) as info:
        render_cluster([a, ClusterNode("copy.yaml", a.config)], PATHS)
    assert info.value.problems == [
        "copy.yaml: node.id 'node-a' is also node-a.yaml's; each node behind the front needs "
        "its own",
        "copy.yaml: worker 1 listens on 10.0.0.2:5160, as a worker of node-a.yaml does; give "
        "each node its own sip.front.worker_host or worker_ports_start",
        "copy.yaml: worker 2 listens on 10.0.0.2:5161, as a worker of node-a.yaml does; give "
        "each node its own sip.front.worker_host or worker_ports_start",
    ]


def test_a_shared_front_is_the_operators_not_a_nodes_own() -> None:
    a = node("node-a", "10.0.0.2", front={"mode": "embedded"})
    with pytest.raises(ConfigError, match="node-a.yaml: sip.front.mode is embedded"):
        render_cluster([a, node("node-b", "10.0.0.3")], PATHS)


def test_a_workers_slot_is_read_from_a_shared_fronts_duid_too() -> None:
    def worker(duid: str) -> FrontWorker:
        return FrontWorker("sip:10.0.0.3:5161", duid, True, True, 0)

    assert worker("node-b/worker-2").index == 2 and worker("worker-3").index == 3
    assert worker("carrier-sbc").index is None
