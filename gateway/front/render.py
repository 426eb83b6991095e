"""The front's Kamailio files from the sipedge config: pure text, no I/O but reading the
template that ships with the package.

The template (`kamailio.cfg.tmpl`) holds the routing logic; what depends on the config is
filled in here: sockets, limits, the workers (dispatcher.list), the trunks' allowed_ips and
the routed numbers.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from gateway.config import (
    CALLS_PER_WORKER,
    Config,
    WorkerSlot,
    front_public_host,
    front_worker_side,
    hostport,
)

TEMPLATE = "kamailio.cfg.tmpl"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, REFER, NOTIFY, UPDATE, PRACK"
KNOWN_METHODS = (
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "REFER", "NOTIFY",
    "UPDATE", "PRACK", "MESSAGE", "SUBSCRIBE", "PUBLISH",
)  # fmt: skip
LOG_INTERVAL_S = 10  # refusals: one NOTICE line per source and reason this often
# Kamailio's `debug` level for the node's log level: DEBUG shows one line per refusal
# (L_INFO), INFO the lines per source per interval (L_NOTICE) and worker changes.
KAMAILIO_DEBUG = {"DEBUG": 2, "INFO": 1, "WARNING": 0, "ERROR": -1, "CRITICAL": -2}
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


@dataclass(frozen=True)
class FrontPaths:
    """Where the rendered files and the control socket live (the node's run directory)."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "kamailio.cfg"

    @property
    def dispatcher_list(self) -> Path:
        return self.directory / "dispatcher.list"

    @property
    def rpc_socket(self) -> Path:
        return self.directory / "rpc.sock"


@dataclass(frozen=True)
class FrontFiles:
    """The rendered files, by name in the run directory."""

    kamailio_cfg: str
    dispatcher_list: str

    def by_name(self) -> dict[str, str]:
        return {"kamailio.cfg": self.kamailio_cfg, "dispatcher.list": self.dispatcher_list}


@dataclass(frozen=True)
class FrontLimits:
    """The numbers the front enforces, derived from `limits` and `sip.front`."""

    rate_window: int  # seconds per pipelimit window
    source_invites: int  # new INVITEs one source may send per window
    worker_invites: int  # new INVITEs the front sends one worker per window
    pike_density: int  # requests one source may send per 2 s before it is dropped
    worker_calls: int  # calls one worker holds at most (dispatcher maxload, within its share)
    setup_expire: int  # seconds an unanswered dispatched call may take
    call_expire: int  # seconds a call's load stays counted without its BYE


def front_limits(config: Config) -> FrontLimits:
    """The token bucket of the workers (rate r, burst b) as fixed windows of b/r seconds
    holding b INVITEs: the same average rate and the same burst."""
    limits = config.limits
    rate, burst = limits.invites_per_second_per_source, limits.invite_burst_per_source
    window = max(1, round(burst / rate))
    ring = max((n.answer_delay_ms for n in config.numbers), default=0) / 1000
    connect = max((a.connect_timeout for a in config.agents), default=0.0)
    return FrontLimits(
        rate_window=window,
        source_invites=max(1, math.ceil(rate * window)),
        worker_invites=max(1, math.ceil(config.sip.front.worker_invites_per_second * window)),
        # Twice what a source at its INVITE rate sends (INVITE, ACK and BYE of each call)
        # over pike's 2 s unit: a flood, not a busy trunk (pike blocks a source somewhere
        # between this and 3 times it, and then drops all it sends until it calms down).
        pike_density=max(30, math.ceil(2 * 3 * 2 * max(rate, burst / 2))),
        worker_calls=min(CALLS_PER_WORKER, limits.max_concurrent_calls),
        setup_expire=math.ceil(ring + connect + limits.ack_timeout + limits.ring_timeout) + 10,
        call_expire=limits.max_call_duration + 60,
    )


def render(
    config: Config, slots: list[WorkerSlot], paths: FrontPaths, log_level: str = "INFO"
) -> FrontFiles:
    """kamailio.cfg and dispatcher.list for a front dispatching over `slots`."""
    sip = config.sip
    inner_host, inner_port = front_worker_side(config)
    inner_socket = f"udp:{hostport(inner_host, inner_port)}"
    limits = front_limits(config)
    values = {
        "DEBUG": str(KAMAILIO_DEBUG.get(log_level.upper(), 1)),
        "CHILDREN": "2",
        "TCP": _tcp(config),
        "SERVER": _quoted(sip.user_agent),
        "PUBLIC_LISTEN": "\n".join(_public_listen(config)),
        "INNER_SOCKET": inner_socket,
        "INNER_HOST": hostport(inner_host, inner_port),
        "PIKE_DENSITY": str(limits.pike_density),
        "RATE_WINDOW": str(limits.rate_window),
        "SOURCE_RATE_LIMIT": str(limits.source_invites),
        "WORKER_RATE_LIMIT": str(limits.worker_invites),
        "MAX_UNCONFIRMED": str(config.limits.max_unconfirmed_per_source),
        "LOG_INTERVAL": str(LOG_INTERVAL_S),
        "LOG_INTERVAL_TWICE": str(2 * LOG_INTERVAL_S),
        "DISPATCHER_LIST": str(paths.dispatcher_list),
        "RPC_SOCKET": str(paths.rpc_socket),
        "CALL_EXPIRE": str(limits.call_expire),
        "SETUP_EXPIRE": str(limits.setup_expire),
        "ADVERTISED": hostport(front_public_host(config), sip.port),
        "ALLOW": ALLOW,
        "KNOWN_METHODS": "|".join(KNOWN_METHODS),
        "RETRY_AFTER": str(config.limits.retry_after),
        "PUBLIC_SOCKET": _public_socket(config),
        "NUMBERS": "\n".join(_numbers(config)),
        "TRUNK_OF_SOURCE": "\n".join(_trunk_of_source(config)),
        "SOURCE_IN_BOUND_TRUNK": "\n".join(_source_in_bound_trunk(config)),
    }
    return FrontFiles(
        kamailio_cfg=fill(template(), values),
        dispatcher_list=dispatcher_list(slots, inner_socket, limits.worker_calls),
    )


def template() -> str:
    return files("gateway.front").joinpath(TEMPLATE).read_text(encoding="utf-8")


def fill(text: str, values: dict[str, str]) -> str:
    """Replace every {{NAME}}; a name without a value is a bug in the renderer."""
    missing = sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - values.keys())
    if missing:
        raise KeyError(f"the front template needs values for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def dispatcher_list(
    slots: list[WorkerSlot], socket: str, calls: int, node: str | None = None
) -> str:
    """Set 1: one line per worker, probed with OPTIONS (flag 8), at most `calls` calls each
    and no more than its share of the node's (maxload, for the call-load algorithm), reached
    from the front's worker-side socket. Behind a front shared by several nodes each worker's
    duid names its node too."""
    lines = ["# setid destination flags priority attributes (rendered by sipedge)"]
    for slot in slots:
        uri = f"sip:{hostport(slot.sip_host, slot.sip_port)}"
        duid = f"{node}/worker-{slot.index}" if node else f"worker-{slot.index}"
        most = min(calls, slot.calls)
        lines.append(f"1 {uri} 8 0 duid={duid};maxload={most};socket={socket}")
    return "\n".join(lines) + "\n"


def worker_uri(slot: WorkerSlot) -> str:
    """How the front names a worker (dispatcher URI, `$du`)."""
    return f"sip:{hostport(slot.sip_host, slot.sip_port)}"


def _public_listen(config: Config) -> list[str]:
    sip = config.sip
    advertise = f" advertise {hostport(sip.public_address, sip.port)}" if sip.public_address else ""
    return [f"listen={t}:{hostport(sip.listen, sip.port)}{advertise}" for t in sip.transports]


def _tcp(config: Config) -> str:
    if "tcp" not in config.sip.transports:
        return "disable_tcp=yes"
    return "tcp_children=2\ntcp_connection_lifetime=3605\ntcp_accept_no_cl=no"


def _public_socket(config: Config) -> str:
    sip = config.sip
    sockets = {t: f"{t}:{hostport(sip.listen, sip.port)}" for t in sip.transports}
    if len(sockets) == 1:
        return f'\t$fs = "{next(iter(sockets.values()))}";'
    return (
        f'\tif ($dP == "tcp") {{\n\t\t$fs = "{sockets["tcp"]}";\n\t}} else {{\n'
        f'\t\t$fs = "{sockets["udp"]}";\n\t}}'
    )


def _numbers(config: Config) -> list[str]:
    """The routed numbers and the trunk each is bound to ("*": any)."""
    return [f'\t$sht(numbers=>{n.number}) = "{n.trunk or "*"}";' for n in config.numbers]


def _networks(entries: list[str]) -> str:
    return ",".join(str(ipaddress.ip_network(e, strict=False)) for e in entries)


def _trunk_of_source(config: Config) -> list[str]:
    """First match wins, in config order, as in the workers' routing. Trunks without
    allowed_ips take no inbound calls."""
    out: list[str] = []
    for trunk in config.trunks:
        if trunk.allowed_ips:
            out += [
                f'\tif (is_in_subnet("$si", "{_networks(trunk.allowed_ips)}")) {{',
                f'\t\t$var(trunk) = "{trunk.id}";',
                "\t\treturn;",
                "\t}",
            ]
    return out


def _source_in_bound_trunk(config: Config) -> list[str]:
    out: list[str] = []
    for trunk in config.trunks:
        if trunk.allowed_ips:
            out += [
                f'\tif ($var(bound) == "{trunk.id}" && '
                f'is_in_subnet("$si", "{_networks(trunk.allowed_ips)}")) {{',
                "\t\t$var(allowed) = 1;",
                "\t}",
            ]
    return out


def _quoted(text: str) -> str:
    """A value inside a Kamailio double-quoted string."""
    return text.replace("\\", "\\\\").replace('"', '\\"')
