"""The front's Kamailio files from the sipedge config: pure text, no I/O but reading the
template that ships with the package.

The template (`kamailio.cfg.tmpl`) holds the routing logic; what depends on the config is
filled in here: sockets, limits, the workers (dispatcher.list), the trunks' allowed_ips and
the routed numbers.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
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
from gateway.front.security import (
    SCANNER_USER_AGENTS,
    decrypted_key,
    tls_config,
    tls_module,
    trunk_security,
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

    @property
    def tls_config(self) -> Path:
        return self.directory / "tls.cfg"

    @property
    def tls_key(self) -> Path:
        """The decrypted private key, written only when sip.tls.private_key_password is set
        (Kamailio would prompt on its terminal for the passphrase)."""
        return self.directory / "tls-key.pem"


@dataclass(frozen=True)
class FrontFiles:
    """The rendered files, by name in the run directory. `tls_key` is the decrypted private
    key when the configured one has a passphrase: written with mode 0600, never shown."""

    kamailio_cfg: str
    dispatcher_list: str
    tls_cfg: str | None = None
    tls_key: str | None = field(default=None, repr=False)

    def by_name(self) -> dict[str, str]:
        named = {"kamailio.cfg": self.kamailio_cfg, "dispatcher.list": self.dispatcher_list}
        if self.tls_cfg is not None:
            named["tls.cfg"] = self.tls_cfg
        return named

    def write(self, paths: FrontPaths) -> list[Path]:
        """Write every file into the run directory; the paths written, in order."""
        written = []
        for name, text in self.by_name().items():
            (paths.directory / name).write_text(text)
            written.append(paths.directory / name)
        if self.tls_key is not None:
            fd = os.open(paths.tls_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.tls_key)
            written.append(paths.tls_key)
        return written


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
        "ALLOW": ALLOW,
        "KNOWN_METHODS": "|".join(KNOWN_METHODS),
        "RETRY_AFTER": str(config.limits.retry_after),
        "PUBLIC_SOCKET": _public_socket(config),
        "NUMBERS": "\n".join(_numbers(config)),
        "TRUNK_OF_SOURCE": "\n".join(_trunk_of_source(config)),
        "SOURCE_IN_BOUND_TRUNK": "\n".join(_source_in_bound_trunk(config)),
        "TLS_MODULE": tls_module(config, paths.tls_config),
        "REGISTER_CONTACT": _register_contact(config),
        "SCANNER_USER_AGENTS": SCANNER_USER_AGENTS,
        "TRUNK_SECURITY": "\n".join(trunk_security(config)),
    }
    tls = config.sip.tls
    return FrontFiles(
        kamailio_cfg=fill(template(), values),
        dispatcher_list=dispatcher_list(slots, inner_socket, limits.worker_calls),
        tls_cfg=tls_config(config, paths.tls_key),
        tls_key=decrypted_key(tls) if tls is not None else None,
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
    lines = [f"listen={t}:{hostport(sip.listen, sip.port)}{advertise}" for t in sip.transports]
    if sip.tls is not None:
        port = sip.tls.port
        advertise = f" advertise {hostport(sip.public_address, port)}" if sip.public_address else ""
        lines.append(f"listen=tls:{hostport(sip.listen, port)}{advertise}")
    return lines


def _tcp(config: Config) -> str:
    """The core's TCP settings (TLS runs over them)."""
    if "tcp" not in config.sip.transports and config.sip.tls is None:
        return "disable_tcp=yes"
    tcp = "tcp_children=2\ntcp_connection_lifetime=3605\ntcp_accept_no_cl=no"
    return tcp + "\nenable_tls=yes" if config.sip.tls is not None else tcp


def _public_socket(config: Config) -> str:
    """$fs by the next hop's transport ($var(proto): of $du, else of the Request-URI; sips:
    is tls): tls, tcp, else udp (or the one transport there is)."""
    sip = config.sip
    sockets: dict[str, str] = {t: f"{t}:{hostport(sip.listen, sip.port)}" for t in sip.transports}
    if sip.tls is not None:
        sockets["tls"] = f"tls:{hostport(sip.listen, sip.tls.port)}"
    fallback = sockets.get("udp") or sockets["tcp"]
    lines = [
        '\tif ($du != "") {',
        "\t\t$var(proto) = $(du{uri.transport}{s.tolower});",
        "\t\t$var(scheme) = $(du{uri.scheme}{s.tolower});",
        "\t} else {",
        "\t\t$var(proto) = $(ru{uri.transport}{s.tolower});",
        "\t\t$var(scheme) = $(ru{uri.scheme}{s.tolower});",
        "\t}",
        '\tif ($var(scheme) == "sips") {',
        '\t\t$var(proto) = "tls";',
        "\t}",
    ]
    branches = [(t, sockets[t]) for t in ("tls", "tcp") if t in sockets and sockets[t] != fallback]
    if not branches:
        return "\n".join([*lines, f'\t$fs = "{fallback}";'])
    for i, (transport, socket) in enumerate(branches):
        keyword = "if" if i == 0 else "} else if"
        lines += [f'\t{keyword} ($var(proto) == "{transport}") {{', f'\t\t$fs = "{socket}";']
    return "\n".join([*lines, "\t} else {", f'\t\t$fs = "{fallback}";', "\t}"])


def _register_contact(config: Config) -> str:
    """The front's public address in a relayed REGISTER's Contact (its TLS socket, with
    transport=tls, when the REGISTER leaves over TLS)."""
    public = hostport(front_public_host(config), config.sip.port)
    plain = f'subst_hf("Contact", "/@[^;>]+/@{public}/", "a");'
    tls = config.sip.tls
    if tls is None:
        return f"\t\t{plain}"
    where = hostport(front_public_host(config), tls.port)
    return "\n".join([
        '\t\tif ($var(proto) == "tls") {',
        f'\t\t\tsubst_hf("Contact", "/@[^;>]+/@{where};transport=tls/", "a");',
        "\t\t} else {",
        f"\t\t\t{plain}",
        "\t\t}",
    ])  # fmt: skip


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
