"""One front for the workers of several nodes: rendered from each node's own config, which
says where that node's workers listen. Pure, like the renderer.

The nodes must agree on everything the front enforces, i.e. each must render the very same
kamailio.cfg; dispatcher.list then lists the workers of all of them, each node's under its
node id. Adding or removing a node changes dispatcher.list only, which the front reloads
without a restart (`dispatcher.reload` over its control socket).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import zip_longest

from gateway.config import Config, front_worker_side, hostport, worker_slots
from gateway.errors import ConfigError
from gateway.front.render import FrontFiles, FrontPaths, dispatcher_list, front_limits, render

# What the front is rendered from, for the message when two nodes do not agree.
SHARED = (
    "sip.listen, sip.port, sip.transports, sip.public_address, sip.user_agent, "
    "sip.front.host and port, sip.front.worker_invites_per_second, sip.tls, the trunks' "
    "allowed_ips, transport, tls_client_certificate and inbound_auth, numbers, limits and the "
    "agents' connect_timeout"
)


@dataclass(frozen=True)
class ClusterNode:
    """A node behind the front: its config, and where it came from (for messages)."""

    source: str
    config: Config


def render_cluster(
    nodes: Sequence[ClusterNode], paths: FrontPaths, log_level: str = "INFO"
) -> FrontFiles:
    """kamailio.cfg and dispatcher.list of one front dispatching over every node's workers;
    ConfigError naming each reason the nodes cannot share it."""
    if not nodes:
        raise ConfigError(["a front needs at least one node's config"])
    problems = [
        f"{n.source}: sip.front.mode is {n.config.sip.front.mode}: a front shared by "
        "several nodes is run by the operator (set it to external)"
        for n in nodes
        if len(nodes) > 1 and n.config.sip.front.mode != "external"
    ]
    problems += _repeated_ids(nodes) + _shared_worker_addresses(nodes)
    first = nodes[0]
    rendered = [render(n.config, worker_slots(n.config), paths, log_level) for n in nodes]
    for node, files in zip(nodes[1:], rendered[1:], strict=True):
        difference = _first_difference(rendered[0].kamailio_cfg, files.kamailio_cfg)
        if difference is not None:
            number, ours, theirs = difference
            problems.append(
                f"{node.source}: the front it renders differs from {first.source}'s at line "
                f"{number} ({theirs!r}, not {ours!r}); nodes behind one front must agree on "
                f"{SHARED}"
            )
    if problems:
        raise ConfigError(problems)
    if len(nodes) == 1:
        return rendered[0]
    first_files = rendered[0]
    return FrontFiles(
        kamailio_cfg=first_files.kamailio_cfg,
        dispatcher_list=_workers(nodes),
        tls_cfg=first_files.tls_cfg,
        tls_key=first_files.tls_key,
    )


def _workers(nodes: Sequence[ClusterNode]) -> str:
    """Every node's workers, each node's under a comment line and its node id."""
    lines = ["# setid destination flags priority attributes (rendered by sipedge)"]
    for node in nodes:
        config = node.config
        socket = f"udp:{hostport(*front_worker_side(config))}"
        calls = front_limits(config).worker_calls
        rows = dispatcher_list(worker_slots(config), socket, calls, node=config.node.id)
        lines += [f"# node {config.node.id} ({node.source})", *rows.splitlines()[1:]]
    return "\n".join(lines) + "\n"


def _repeated_ids(nodes: Sequence[ClusterNode]) -> list[str]:
    """Node ids name the MQTT topics and the events: two nodes with one id would mix theirs."""
    seen: dict[str, str] = {}
    problems = []
    for node in nodes:
        node_id = node.config.node.id
        if node_id in seen:
            problems.append(
                f"{node.source}: node.id {node_id!r} is also {seen[node_id]}'s; each node "
                "behind the front needs its own"
            )
        seen.setdefault(node_id, node.source)
    return problems


def _shared_worker_addresses(nodes: Sequence[ClusterNode]) -> list[str]:
    seen: dict[str, str] = {}
    problems = []
    for node in nodes:
        for slot in worker_slots(node.config):
            where = hostport(slot.sip_host, slot.sip_port)
            if where in seen and seen[where] != node.source:
                problems.append(
                    f"{node.source}: worker {slot.index} listens on {where}, as a worker of "
                    f"{seen[where]} does; give each node its own sip.front.worker_host or "
                    "worker_ports_start"
                )
            seen.setdefault(where, node.source)
    return problems


def _first_difference(ours: str, theirs: str) -> tuple[int, str, str] | None:
    """(line number, our line, their line) of the first line two texts differ in."""
    pairs = zip_longest(ours.splitlines(), theirs.splitlines(), fillvalue="")
    for number, (a, b) in enumerate(pairs, start=1):
        if a != b:
            return number, a.strip(), b.strip()
    return None
