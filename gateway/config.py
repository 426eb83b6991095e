"""The node's configuration: pydantic models of the YAML file, ${ENV} expansion, check-config.

Secrets are `SecretStr` and must come from `${VAR}` references; their values are never printed.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError

E164 = r"^\+[1-9][0-9]{1,14}$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
Codec = Literal["PCMU", "PCMA", "G722"]
Transport = Literal["udp", "tcp"]
TrunkTransport = Literal["udp", "tcp", "tls"]  # tls: through the front's TLS socket (sip.tls)
ALL_CODECS: tuple[Codec, ...] = ("PCMU", "PCMA", "G722")
PLANE_CODECS: tuple[Codec, ...] = ("PCMU", "PCMA")  # what the media plane encodes
ALL_TRANSPORTS: tuple[Transport, ...] = ("udp", "tcp")


MAX_WORKERS = 64
MAX_PLANES = 16
# PJSUA_MAX_CALLS of the only pjsua2 wheel (pjsua2-python 2.15.1.post1): one SIP worker, one
# pjsua2 endpoint, holds this many calls at once. The engine measures it again at start.
CALLS_PER_WORKER = 4


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RtpPorts(Model):
    start: int = Field(20000, ge=1024, le=65535)
    end: int = Field(20999, ge=1024, le=65535)

    @model_validator(mode="after")
    def _ordered(self) -> RtpPorts:
        if self.end <= self.start:
            raise ValueError("rtp_ports.end must be greater than rtp_ports.start")
        return self


class FrontSettings(Model):
    """The SIP front (Kamailio) that faces the network for the node's workers."""

    mode: Literal["none", "embedded", "external"] = Field(
        "none",
        description="none: the worker faces the network itself (one worker only); embedded: "
        "sipedge renders and runs Kamailio; external: Kamailio is run by the operator "
        "(`sipedge front-config` prints its config)",
    )
    worker_host: str = Field("127.0.0.1", description="address the workers' SIP listens on")
    worker_ports_start: int = Field(
        0,
        ge=0,
        le=65535,
        description="first worker's SIP port (0: sip.port + 100); the front's own socket for "
        "the workers is the port below it",
    )
    worker_invites_per_second: float = Field(
        20.0, gt=0, description="new INVITEs the front sends one worker per second at most"
    )
    host: str | None = Field(
        None,
        description="address of the front's own socket for the workers (default worker_host); "
        "in a cluster the front's address, the same in every node's config",
    )
    port: int = Field(
        0, ge=0, le=65535, description="port of that socket (0: the port below the first worker's)"
    )

    @field_validator("host")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value


class SessionTimers(Model):
    """RFC 4028 session timers: a dialog refreshed every `expires` seconds, and ended (BYE,
    reason session_expired) when a refresh does not come, so a far end that vanished without
    a BYE does not hold a call for ever."""

    mode: Literal["off", "optional", "required", "always"] = Field(
        "optional",
        description="off: never; optional: when the far end asks or supports it; required: "
        "calls need the far end to support it (420 otherwise); always: ask even if the far end "
        "does not say it supports it",
    )
    expires: int = Field(1800, ge=90, le=86400, description="session interval asked, seconds")
    min_se: int = Field(90, ge=90, le=86400, description="smallest interval accepted, seconds")

    @model_validator(mode="after")
    def _ordered(self) -> SessionTimers:
        if self.expires < self.min_se:
            raise ValueError(f"expires ({self.expires}) must be >= min_se ({self.min_se})")
        return self


class TlsSettings(Model):
    """SIP over TLS on the front's public address (Kamailio's tls module, system OpenSSL)."""

    port: int = Field(5061, ge=1, le=65535, description="TLS port on sip.listen")
    certificate: str = Field(description="PEM file: the front's certificate (and its chain)")
    private_key: str = Field(description="PEM file: its private key")
    private_key_password: SecretStr | None = Field(
        None, description="passphrase of an encrypted private_key (an ${ENV} reference)"
    )
    ca_file: str = Field(
        "/etc/ssl/certs/ca-certificates.crt",
        description="PEM file of the CAs carriers' certificates must chain to (server "
        "certificates when the front connects; client certificates when a trunk requires one)",
    )
    # Kamailio 5.6's tls.cfg has no TLS 1.3-only method: 1.2 is the one floor it can set.
    min_version: Literal["1.2"] = Field("1.2", description="oldest TLS version taken")

    @field_validator("certificate", "private_key", "ca_file")
    @classmethod
    def _readable(cls, value: str) -> str:
        try:
            with open(value, "rb") as f:
                head = f.read(65536)
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror}") from None
        if b"-----BEGIN " not in head:
            raise ValueError(f"{value} is not a PEM file (no -----BEGIN line)")
        return value

    @model_validator(mode="after")
    def _key_opens(self) -> TlsSettings:
        """An encrypted key needs its passphrase (Kamailio would ask for it on a terminal)."""
        with open(self.private_key, "rb") as f:
            pem = f.read()
        if self.private_key_password is None:
            if b"ENCRYPTED" in pem:
                raise ValueError(
                    f"private_key {self.private_key} is encrypted; set "
                    "private_key_password to an ${ENV} reference holding its passphrase"
                )
            return self
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            load_pem_private_key(pem, self.private_key_password.get_secret_value().encode())
        except (ValueError, TypeError):
            raise ValueError(
                f"private_key_password does not open {self.private_key} (wrong "
                "passphrase, or not a private key)"
            ) from None
        return self


class SipSettings(Model):
    listen: str = Field("0.0.0.0", description="IP address to bind SIP and RTP on")
    rtp_listen: str | None = Field(None, description="IP address to bind RTP on (default: listen)")
    port: int = Field(5060, ge=1, le=65535)
    transports: list[Transport] = Field(default_factory=lambda: list(ALL_TRANSPORTS))
    public_address: str | None = Field(None, description="address advertised in Contact/SDP")
    rtp_public_address: str | None = Field(
        None,
        description="address SDP advertises for RTP (default public_address); in a cluster each "
        "node's own, while public_address is the front's",
    )
    rtp_ports: RtpPorts = Field(default_factory=RtpPorts)
    codecs: list[Codec] = Field(
        default_factory=lambda: list(PLANE_CODECS),
        description="offered in this order; G722 needs node.media: worker",
    )
    user_agent: str = "sipedge"
    log_level: int = Field(1, ge=0, le=6, description="pjsip log level (0-6)")
    session_timers: SessionTimers = Field(
        default_factory=SessionTimers, description="for inbound calls, and trunks without their own"
    )
    front: FrontSettings = Field(default_factory=FrontSettings)
    tls: TlsSettings | None = Field(None, description="SIP over TLS on the front")

    @field_validator("listen", "public_address", "rtp_public_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)
        return value

    @field_validator("transports", "codecs")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one entry")
        if len(set(value)) != len(value):
            raise ValueError("entries must not repeat")
        return value


class InboundAuth(Model):
    """Digest credentials the front demands of a trunk's INVITEs and REGISTERs (a PBX)."""

    username: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._+-]+$")
    password: SecretStr
    realm: str = Field("sipedge", pattern=r"^[A-Za-z0-9._-]+$")


class Trunk(Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    registers: bool = Field(False, alias="register", description="REGISTER with the registrar")
    registrar: str | None = Field(None, description="sip:host[:port] the trunk registers with")
    proxy: str | None = Field(None, description="sip:host[:port] outbound calls are sent to")
    username: str | None = None
    password: SecretStr | None = None
    auth_username: str | None = None
    realm: str = "*"
    domain: str | None = None
    transport: TrunkTransport = "udp"
    tls_client_certificate: bool = Field(
        False, description="inbound calls need a client certificate verified by sip.tls.ca_file"
    )
    inbound_auth: InboundAuth | None = Field(None, description="digest the front demands")
    expires: int = Field(300, ge=10, le=86400)
    retry_min: float = Field(5.0, gt=0)
    retry_max: float = Field(300.0, gt=0)
    caller_id: str | None = Field(None, pattern=E164)
    allowed_ips: list[str] = Field(default_factory=list)
    allowed_destinations: list[str] = Field(
        default_factory=lambda: ["+"], description="E.164 prefixes outbound calls may dial"
    )
    max_concurrent_calls: int = Field(100, ge=1)
    codecs: list[Codec] | None = None
    session_timers: SessionTimers | None = Field(
        None, description="for calls placed over this trunk (default: sip.session_timers)"
    )
    headers_to_variables: list[str] = Field(
        default_factory=list,
        description="INVITE headers of inbound calls passed to the agent as call variables "
        "(names, `*` wildcards: X-*, Diversion, P-Asserted-Identity)",
    )
    srtp: Literal["off", "optional", "required"] = Field(
        "off",
        description="SRTP with SDES keys (RFC 4568): off; optional (offered, and taken when the "
        "far end offers it); required (offered as RTP/SAVP; an inbound offer without keys is "
        "refused 488)",
    )

    @field_validator("registrar", "proxy")
    @classmethod
    def _sip_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^sips?:[^\s@]+$", value):
            raise ValueError("expected a SIP URI like sip:sip.example.com:5060")
        return value

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)
        return value

    @field_validator("allowed_destinations")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for entry in value:
            if not re.match(r"^\+[0-9]*$", entry):
                raise ValueError(f"{entry!r} is not an E.164 prefix like +1 or +44")
        return value

    @model_validator(mode="after")
    def _registration(self) -> Trunk:
        if self.registers:
            missing = [k for k in ("registrar", "username", "password") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"register: true needs {', '.join(missing)}")
        if self.retry_max < self.retry_min:
            raise ValueError("retry_max must be >= retry_min")
        return self

    @property
    def outbound_uri(self) -> str | None:
        return self.proxy or self.registrar

    def allow_ips_match(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False  # a source we cannot parse is allowed by no trunk
        return any(address in ipaddress.ip_network(n, strict=False) for n in self.allowed_ips)


class NumberRoute(Model):
    number: str = Field(pattern=E164)
    agent: str
    trunk: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    headers_to_variables: list[str] | None = Field(
        None,
        description="INVITE headers passed to the agent as variables (names, `*` wildcards: "
        "X-*, Diversion); default: the trunk's",
    )
    answer_delay_ms: int = Field(
        0, ge=0, le=60000, description="ring this long (180) before answering with 200"
    )
    answer_after_agent: bool = Field(
        True,
        description="streaming agents: connect the agent while ringing and answer only once it "
        "is connected; an agent that cannot connect gets the INVITE refused with 480",
    )


class IceServer(Model):
    """A STUN or TURN server for webrtc agents (RTCIceServer); TURN needs the credentials."""

    urls: list[str] = Field(min_length=1)
    username: str | None = None
    credential: SecretStr | None = None

    @field_validator("urls", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("urls")
    @classmethod
    def _ice_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not re.match(r"^(stuns?|turns?):[^\s]+$", url):
                raise ValueError(
                    f"expected a STUN/TURN URL like stun:stun.example.com:3478 (got {url!r})"
                )
        return value

    @model_validator(mode="after")
    def _turn_credentials(self) -> IceServer:
        turn = any(url.startswith("turn") for url in self.urls)
        if turn and (self.username is None or self.credential is None):
            raise ValueError("a TURN server needs username and credential")
        return self


def _check_wav(path: str) -> None:
    """An agent's filler: a WAV file we can play (mono, 16-bit PCM)."""
    import wave

    try:
        with wave.open(path, "rb") as wav:
            if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
                raise ValueError(f"filler: {path} must be mono 16-bit PCM WAV")
    except (OSError, EOFError, wave.Error) as exc:
        raise ValueError(f"filler: expected comfort_noise or a WAV file; {path}: {exc}") from None


class Agent(Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    type: Literal["echo", "twilio-ws", "pcm-ws", "webrtc"]
    url: str | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    connect_timeout: float = Field(5.0, gt=0)
    on_agent_failure: Literal["hangup", "keep"] = "hangup"
    reconnect_timeout: float = Field(
        0.0,
        ge=0,
        le=600,
        description="an agent link that drops mid-call is connected again (url, then "
        "backup_url, in turn, with backoff) for this many seconds before on_agent_failure "
        "applies; 0: never",
    )
    backup_url: str | None = Field(None, description="tried in turn with url on a reconnect")
    filler: str | None = Field(
        None,
        description="what the caller hears while the agent is reconnecting: comfort_noise, or "
        "a mono 16-bit WAV file (looped); default: silence",
    )
    sample_rate: Literal[8000, 16000, 24000] = 8000
    delay_ms: int = Field(200, ge=0, le=5000, description="echo agent: delay before playback")
    barge_in: bool | None = Field(
        None,
        description="caller speech drops the agent's queued audio; null: vad.barge_in, else the "
        "agent type's default (twilio-ws off, as on Twilio; pcm-ws and webrtc on)",
    )
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="webrtc: STUN/TURN servers (none: host candidates only)"
    )
    ice_addresses: list[str] = Field(
        default_factory=list,
        description="webrtc: local IPs offered as host candidates (default: every interface "
        "but loopback)",
    )

    @field_validator("ice_addresses")
    @classmethod
    def _ice_ips(cls, value: list[str]) -> list[str]:
        for entry in value:
            ipaddress.ip_address(entry)
        return value

    @model_validator(mode="after")
    def _url(self) -> Agent:
        if self.type != "echo" and not self.url:
            raise ValueError(f"agent type {self.type} needs a url")
        if self.type != "webrtc" and (self.ice_servers or self.ice_addresses):
            raise ValueError("ice_servers and ice_addresses apply to webrtc agents only")
        if self.type == "webrtc" and not re.match(r"^https?://", self.url or ""):
            raise ValueError("a webrtc agent's url is its WHIP endpoint: http:// or https://")
        if self.backup_url is not None and self.type in ("echo", "webrtc"):
            raise ValueError("backup_url applies to twilio-ws and pcm-ws agents")
        if self.backup_url is not None and not re.match(r"^wss?://", self.backup_url):
            raise ValueError("backup_url: expected a ws:// or wss:// URL")
        if self.filler not in (None, "comfort_noise"):
            _check_wav(self.filler)
        return self


class MqttTls(Model):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class MqttSettings(Model):
    embedded: bool = False
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    prefix: str = "sipedge"
    client_id: str | None = None
    keepalive: int = Field(30, ge=5)
    tls: MqttTls | None = None
    max_backlog: int = Field(100_000, ge=100)


class ApiSettings(Model):
    enabled: bool = True
    listen: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    rate_limit_per_minute: int = Field(100, ge=1)


class StorageSettings(Model):
    path: str = "sipedge.db"
    recordings_dir: str = "recordings"


class RecordingSettings(Model):
    enabled: bool = False
    retention_days: int | None = Field(
        None, ge=1, description="recordings older than this are deleted (evented); null: kept"
    )


class VadSettings(Model):
    aggressiveness: int = Field(2, ge=0, le=3)
    frame_ms: Literal[10, 20, 30] = 20
    min_speech_ms: int = Field(100, ge=0)
    hangover_ms: int = Field(300, ge=0)
    barge_in: bool | None = Field(
        None, description="every agent's barge-in unless it sets its own; null: per agent type"
    )


class Limits(Model):
    max_concurrent_calls: int = Field(100, ge=1)
    max_call_duration: int = Field(3600, ge=1, description="seconds; longer calls are ended")
    ring_timeout: int = Field(30, ge=1, le=600)
    retry_after: int = Field(5, ge=1, description="Retry-After seconds sent with 503")
    invites_per_second_per_source: float = Field(
        20.0, gt=0, description="new INVITEs one source IP may send per second (503 beyond)"
    )
    invite_burst_per_source: int = Field(
        40, ge=1, description="INVITEs one source may send at once before the rate applies"
    )
    max_unconfirmed_per_source: int = Field(
        4, ge=1, description="calls from one source IP that may await their ACK at once"
    )
    ack_timeout: float = Field(
        5.0, gt=0, le=32, description="seconds to wait for the ACK of our 200 before hanging up"
    )
    media_timeout: float = Field(
        30.0,
        ge=0,
        description="hang up after this many seconds without RTP (0: never; hold excluded)",
    )


class NodeSettings(Model):
    id: str = Field("node-1", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    workers: int | Literal["auto"] = Field(
        1,
        description="SIP worker processes: a number (1-64), or auto (enough 4-call workers for "
        "limits.max_concurrent_calls); more than 1 needs sip.front",
    )
    drain_timeout: float = Field(30.0, ge=0)
    media: Literal["plane", "worker"] = Field(
        "plane",
        description="plane: one media process serves every call's RTP and agent (G.711); "
        "worker: each SIP worker runs its calls' media in pjmedia (needed for G722)",
    )
    media_planes: int | Literal["auto"] = Field(
        1,
        description="media plane processes (node.media: plane): a number (1-16), or auto (one "
        "per CPU, at most one per worker); worker i uses plane (i - 1) mod N, so each plane's "
        "20 ms clock carries its share of the calls on a core of its own",
    )
    media_nice: int = Field(
        -10,
        ge=-20,
        le=19,
        description="scheduling niceness of the media plane: below 0 its 20 ms clock goes "
        "first on a busy host (needs root or CAP_SYS_NICE; otherwise it runs at 0 and says so)",
    )


WEBHOOK_EVENT_PATTERN = r"^(\*|[a-z_]+(\.[a-z_]+)*(\.\*)?)$"


class Webhook(Model):
    """A webhook subscription of the config file: every event whose type matches one of
    `events` is POSTed to `url`, signed with `secret` (gateway/webhooks/)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    url: str = Field(description="http:// or https:// URL the events are POSTed to")
    events: list[str] = Field(
        default_factory=lambda: ["*"],
        description="event types, or patterns like call.* (a prefix) or * (every event)",
    )
    secret: SecretStr = Field(description="HMAC-SHA256 key of the signature (an ${ENV} reference)")
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        expected = "expected an http:// or https:// URL like https://cp.example.com/hooks"
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError:
            raise ValueError(expected) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(expected)
        return value

    @field_validator("events")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must list at least one event type or pattern (* for every event)")
        for entry in value:
            if not re.match(WEBHOOK_EVENT_PATTERN, entry):
                raise ValueError(
                    f"{entry!r} is not an event type or pattern like call.completed, call.* or *"
                )
        return value

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters long")
        return value


class Config(Model):
    node: NodeSettings = Field(default_factory=NodeSettings)
    sip: SipSettings = Field(default_factory=SipSettings)
    trunks: list[Trunk] = Field(default_factory=list)
    numbers: list[NumberRoute] = Field(default_factory=list)
    agents: list[Agent] = Field(default_factory=list)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    vad: VadSettings = Field(default_factory=VadSettings)
    limits: Limits = Field(default_factory=Limits)
    webhooks: list[Webhook] = Field(default_factory=list)
    webhooks_max_failures: int = Field(
        20, ge=1, description="consecutive failed deliveries that disable a webhook"
    )

    @model_validator(mode="after")
    def _references(self) -> Config:
        _unique("trunks", [t.id for t in self.trunks])
        _unique("webhooks", [w.id for w in self.webhooks])
        _unique("agents", [a.id for a in self.agents])
        _unique("numbers", [n.number for n in self.numbers])
        trunk_ids = {t.id for t in self.trunks}
        agent_ids = {a.id for a in self.agents}
        for i, route in enumerate(self.numbers):
            if route.agent not in agent_ids:
                raise ValueError(
                    f"numbers[{i}].agent: {route.agent!r} is not one of the agents "
                    f"({', '.join(sorted(agent_ids)) or 'none defined'})"
                )
            if route.trunk is not None and route.trunk not in trunk_ids:
                raise ValueError(f"numbers[{i}].trunk: {route.trunk!r} is not a defined trunk")
        return self

    @model_validator(mode="after")
    def _workers(self) -> Config:
        workers = self.node.workers
        if isinstance(workers, int) and not 1 <= workers <= MAX_WORKERS:
            raise ValueError(f"node.workers: {workers} is not between 1 and {MAX_WORKERS}")
        if workers != 1 and self.sip.front.mode == "none":
            raise ValueError(
                f"node.workers: {workers} workers need a SIP front in front of them; "
                "set sip.front.mode to embedded or external, or node.workers to 1"
            )
        calls = self.limits.max_concurrent_calls
        if worker_count(self) > calls:
            raise ValueError(
                f"node.workers: {workers} workers share limits.max_concurrent_calls ({calls}) "
                f"and each takes at least one call; set node.workers to at most {calls}, "
                "or to auto"
            )
        planes = self.node.media_planes
        if isinstance(planes, int) and not 1 <= planes <= MAX_PLANES:
            raise ValueError(f"node.media_planes: {planes} is not between 1 and {MAX_PLANES}")
        if planes not in (1, "auto") and self.node.media != "plane":
            raise ValueError(
                f"node.media_planes: {planes} planes need node.media: plane "
                f"(node.media is {self.node.media})"
            )
        if isinstance(planes, int) and planes > worker_count(self):
            raise ValueError(
                f"node.media_planes: {planes} planes for {worker_count(self)} workers; each "
                "plane serves whole workers, so set it to at most node.workers, or to auto"
            )
        sip = self.sip
        if sip.front.mode != "none" and is_wildcard(sip.listen) and sip.public_address is None:
            raise ValueError(
                f"sip.front: the front names its address in Record-Route and REGISTER "
                f"Contacts; set sip.public_address, or sip.listen to an address other than "
                f"{sip.listen}"
            )
        if self.node.media == "plane":
            wide = set(sip.codecs).union(*(t.codecs or () for t in self.trunks)) - set(PLANE_CODECS)
            if wide:
                raise ValueError(
                    f"sip.codecs: {', '.join(sorted(wide))} needs node.media: worker (the media "
                    f"plane speaks {' and '.join(PLANE_CODECS)})"
                )
        rtp = self.sip.rtp_ports
        per_worker = (rtp.end - rtp.start + 1) // worker_count(self)
        if per_worker < 2 * 2 * CALLS_PER_WORKER:
            raise ValueError(
                f"sip.rtp_ports: {rtp.start}-{rtp.end} gives each of the {worker_count(self)} "
                f"workers {per_worker} ports; each needs at least {4 * CALLS_PER_WORKER} "
                "(RTP and RTCP for its calls, and room for sockets still closing)"
            )
        return self

    @model_validator(mode="after")
    def _front_security(self) -> Config:
        """TLS, client certificates and inbound digest are the front's work."""
        sip = self.sip
        if sip.tls is not None and sip.front.mode == "none":
            raise ValueError(
                "sip.tls: SIP over TLS is served by the SIP front; set sip.front.mode to "
                "embedded or external"
            )
        for i, trunk in enumerate(self.trunks):
            if sip.tls is None and (trunk.transport == "tls" or trunk.tls_client_certificate):
                key = "transport" if trunk.transport == "tls" else "tls_client_certificate"
                value = "tls" if key == "transport" else "true"
                raise ValueError(f"trunks[{i}].{key}: {value} needs sip.tls (the front's "
                                 "certificate and private key)")  # fmt: skip
            if trunk.inbound_auth is not None:
                where = f"trunks[{i}].inbound_auth"
                if sip.front.mode == "none":
                    raise ValueError(f"{where}: digest is checked by the SIP front; set "
                                     "sip.front.mode to embedded or external")  # fmt: skip
                if not trunk.allowed_ips:
                    raise ValueError(f"{where}: needs allowed_ips (the sources that may call "
                                     "or register as this trunk; 0.0.0.0/0 for any, with "
                                     "digest alone)")  # fmt: skip
        return self

    @model_validator(mode="after")
    def _ports(self) -> Config:
        clash = port_clash(listeners(self))
        if clash is not None:
            raise ValueError(clash)
        return self

    def trunk(self, trunk_id: str) -> Trunk | None:
        return next((t for t in self.trunks if t.id == trunk_id), None)

    def agent(self, agent_id: str) -> Agent | None:
        return next((a for a in self.agents if a.id == agent_id), None)


@dataclass(frozen=True)
class Listener:
    """A socket the node binds: `key` is the config key a user would change."""

    key: str
    protocol: Literal["tcp", "udp"]
    host: str
    first: int
    last: int

    @property
    def ports(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@dataclass(frozen=True)
class WorkerSlot:
    """Where one SIP worker listens: its SIP address (behind the front, on worker_host) and
    its slice of sip.rtp_ports (RTP goes straight to the far end on sip.listen); and its
    share of the node's calls."""

    index: int  # 1-based, as in logs and metrics
    sip_host: str
    sip_port: int
    rtp_host: str
    rtp_start: int
    rtp_end: int
    calls: int = CALLS_PER_WORKER  # its share of limits.max_concurrent_calls


def share(total: int, parts: int, index: int) -> int:
    """Part `index` (1-based) of `total` split over `parts` as evenly as whole numbers go,
    the first parts taking one more: the parts add up to `total`."""
    return total // parts + (1 if index <= total % parts else 0)


def worker_count(config: Config) -> int:
    workers = config.node.workers
    if workers == "auto":
        return min(MAX_WORKERS, -(-config.limits.max_concurrent_calls // CALLS_PER_WORKER))
    return workers


def plane_count(config: Config) -> int:
    """Media plane processes the node runs (0 with node.media: worker)."""
    if config.node.media != "plane":
        return 0
    planes = config.node.media_planes
    if planes == "auto":
        return max(1, min(MAX_PLANES, os.cpu_count() or 1, worker_count(config)))
    return planes


def worker_slots(config: Config) -> list[WorkerSlot]:
    """One slot per worker. Without a front the single worker faces the network on sip.listen
    and sip.port; with one, worker i listens on front.worker_host, port start + i - 1, and
    the RTP range and limits.max_concurrent_calls are split evenly between the workers."""
    sip = config.sip
    rtp_host = sip.rtp_listen or sip.listen
    calls = config.limits.max_concurrent_calls
    if sip.front.mode == "none":
        return [WorkerSlot(1, sip.listen, sip.port, rtp_host, sip.rtp_ports.start,
                           sip.rtp_ports.end, calls)]  # fmt: skip
    count = worker_count(config)
    first_port = sip.front.worker_ports_start or sip.port + 100
    span = (sip.rtp_ports.end - sip.rtp_ports.start + 1) // count
    span -= span % 2  # RTP on even ports, RTCP on the odd one after it
    return [
        WorkerSlot(
            index=i + 1,
            sip_host=sip.front.worker_host,
            sip_port=first_port + i,
            rtp_host=rtp_host,
            rtp_start=sip.rtp_ports.start + i * span,
            rtp_end=sip.rtp_ports.start + (i + 1) * span - 1,
            calls=share(calls, count, i + 1),
        )
        for i in range(count)
    ]


def front_worker_side(config: Config) -> tuple[str, int]:
    """Where the workers reach the front (its outbound proxy for them, and the address it
    dispatches and probes from): front.host and front.port, by default front.worker_host on
    the port below the first worker's (a front on the node's own machine)."""
    front = config.sip.front
    first = front.worker_ports_start or config.sip.port + 100
    return front.host or front.worker_host, front.port or first - 1


def sip_advertised_host(sip: SipSettings) -> str | None:
    """What a worker's own SIP transport advertises in Via and Contact: sip.public_address
    when it faces the network itself; behind a front nothing but its own address, which the
    front forwards in-dialog requests to (SDP still advertises sip.public_address: RTP goes
    straight between the worker and the far end)."""
    return sip.public_address if sip.front.mode == "none" else None


def rtp_advertised_host(sip: SipSettings) -> str | None:
    """What SDP advertises for RTP: rtp_public_address, else public_address (none: the
    address RTP is bound to)."""
    return sip.rtp_public_address or sip.public_address


def hostport(host: str, port: int) -> str:
    """host:port as a SIP URI writes it ([v6]:port)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def front_public_host(config: Config) -> str:
    """The address the front advertises to carriers (Record-Route, REGISTER Contacts)."""
    return config.sip.public_address or config.sip.listen


def slot_config(config: Config, slot: WorkerSlot) -> Config:
    """The config one worker runs with: the node's, bound to the slot's addresses.

    Behind a front every request reaches the worker from the front's worker-side address,
    which names the caller's own (gateway/sip/message.py caller_source), so the trunks'
    allowed_ips apply as written. The front has applied the limits per source by then, and
    sends each worker only part of a source's INVITEs: the worker's per-source limits widen
    to at least the front's per-worker cap, a backstop that never refuses what the front
    let through.

    The node's call limits hold over all its workers, each of which counts only its own
    calls (both ways): each worker takes its share of limits.max_concurrent_calls
    (`slot.calls`) and of each trunk's max_concurrent_calls, and answers 503 beyond it, and
    the front then tries the next worker. A trunk allowed as many calls as the node is not
    split: the node's limit holds it. See `trunk_shares` for what a split costs."""
    sip = config.sip
    update: dict[str, Any] = {
        "listen": slot.sip_host,
        "port": slot.sip_port,
        "rtp_listen": slot.rtp_host,
        "rtp_ports": RtpPorts(start=slot.rtp_start, end=slot.rtp_end),
    }
    if sip.front.mode != "none":
        # Pinned: derived from sip.port they would move with the worker's own port.
        front_host, front_port = front_worker_side(config)
        first = sip.front.worker_ports_start or sip.port + 100
        update["front"] = sip.front.model_copy(
            update={"worker_ports_start": first, "host": front_host, "port": front_port}
        )
    changes: dict[str, Any] = {"sip": sip.model_copy(update=update)}
    if sip.front.mode != "none":
        cap = sip.front.worker_invites_per_second
        limits = config.limits
        changes["limits"] = limits.model_copy(
            update={
                "invites_per_second_per_source": max(limits.invites_per_second_per_source,
                                                     2 * cap),
                "invite_burst_per_source": max(limits.invite_burst_per_source,
                                               math.ceil(4 * cap)),
                "max_unconfirmed_per_source": CALLS_PER_WORKER,
                "max_concurrent_calls": slot.calls,
            }
        )  # fmt: skip
        changes["trunks"] = trunk_shares(config, slot)
    return config.model_copy(update=changes)


def trunk_shares(config: Config, slot: WorkerSlot) -> list[Trunk]:
    """The trunks as worker `slot` takes them: a trunk limited below the node's
    max_concurrent_calls gets the worker's share of its limit (0 for some workers when it
    is smaller than the worker count: those refuse the trunk's calls, the others take them).

    Shares are exact for each limit alone: every call the limit allows finds a worker with
    room, since the front tries them all. When a trunk's limit and the node's both bind, a
    call may be refused below both: the workers holding the trunk's free share may be full
    of other calls (e.g. 5 calls over 3 workers as 2+2+1, a trunk's 3 as 1+1+1: with the
    third worker holding another trunk's call and the trunk's two calls on the first two,
    its third call finds no worker, at 3 calls of the node's 5)."""
    workers = worker_count(config)
    node_limit = config.limits.max_concurrent_calls
    return [
        t.model_copy(update={"max_concurrent_calls": share(t.max_concurrent_calls, workers,
                                                           slot.index)})
        if t.max_concurrent_calls < node_limit
        else t
        for t in config.trunks
    ]  # fmt: skip


def listeners(config: Config) -> list[Listener]:
    """Every port this node binds, by the key that sets it."""
    sip = config.sip
    out = [Listener("sip.port", t, sip.listen, sip.port, sip.port) for t in sip.transports]
    if sip.tls is not None:
        out.append(Listener("sip.tls.port", "tcp", sip.listen, sip.tls.port, sip.tls.port))
    if sip.front.mode != "none":
        slots = worker_slots(config)
        front_host, front_port = front_worker_side(config)
        out += [Listener("sip.front.port", "udp", front_host, front_port, front_port)]
        out += [Listener("sip.front.worker_ports_start", t, sip.front.worker_host,
                         slots[0].sip_port, slots[-1].sip_port)
                for t in sip.transports]  # fmt: skip
    rtp = sip.rtp_ports
    out.append(Listener("sip.rtp_ports", "udp", sip.rtp_listen or sip.listen, rtp.start, rtp.end))
    if config.api.enabled:
        out.append(Listener("api.port", "tcp", config.api.listen, config.api.port, config.api.port))
    if config.mqtt.embedded:
        mqtt = config.mqtt
        out.append(Listener("mqtt.port", "tcp", mqtt.host, mqtt.port, mqtt.port))
    return out


def port_clash(bound: list[Listener]) -> str | None:
    """Two listeners on one protocol, one port and overlapping addresses cannot both bind."""
    for i, a in enumerate(bound):
        for b in bound[i + 1 :]:
            if (
                a.protocol == b.protocol
                and a.first <= b.last
                and b.first <= a.last
                and _overlapping(a.host, b.host)
            ):
                where = a.host if a.host == b.host else f"{a.host} and {b.host}"
                return (
                    f"{b.key}: {b.ports} is also {a.key} ({a.ports}) and both listen on "
                    f"{a.protocol.upper()} at {where}: give each its own port"
                )
    return None


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def _overlapping(a: str, b: str) -> bool:
    def norm(host: str) -> str:
        return "127.0.0.1" if host == "localhost" else host

    return is_wildcard(a) or is_wildcard(b) or norm(a) == norm(b)


def _unique(section: str, keys: list[str]) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key in seen:
            raise ValueError(f"{section}[{i}]: {key!r} is defined twice")
        seen.add(key)


# Keys whose values are secrets: they must be ${ENV} references, never literal text.
SECRET_KEYS = {"password", "api_keys", "headers", "credential", "private_key_password", "secret"}


def expand_env(
    node: Any,
    env: dict[str, str],
    path: str,
    problems: list[str],
    secret: bool = False,
    expanded: dict[str, str] | None = None,
    secret_values: set[str] | None = None,
) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; collect missing variables.

    `expanded` collects path -> original text for every value taken from the environment, and
    `secret_values` the values put into secret keys, so errors can avoid printing them.
    """
    if isinstance(node, dict):
        return {
            k: expand_env(
                v,
                env,
                _join(path, str(k)),
                problems,
                secret or k in SECRET_KEYS,
                expanded,
                secret_values,
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [
            expand_env(v, env, f"{path}[{i}]", problems, secret, expanded, secret_values)
            for i, v in enumerate(node)
        ]
    if not isinstance(node, str):
        return node
    if secret and node and not _ENV_REF.search(node):
        problems.append(f"{path}: secrets must be an ${{ENV}} reference, not literal text")
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            if secret and secret_values is not None and env[name]:
                secret_values.add(env[name])
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    result = _ENV_REF.sub(substitute, node)
    if expanded is not None and result != node:
        expanded[path] = node
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "literal[")) and "[" not in part:
            out = _join(out, part)
    return out or "(top level)"


def _describe(error: Any, expanded: dict[str, str] | None = None) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key (not part of the sipedge config)"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern")
        if pattern == E164:
            msg = "expected an E.164 number like +15551234567"
        elif pattern is not None and "a-z0-9" in pattern:
            msg = "expected an id of lower-case letters, digits, '-' and '_'"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if "input" in error and not isinstance(error["input"], (dict, list, SecretStr)):
        loc = _loc(error["loc"])
        if expanded and loc in expanded:
            # The value came from the environment and may be a secret: name the reference.
            return f"{msg} (got the value of {expanded[loc]!r}, not shown)"
        if not any(s in loc for s in SECRET_KEYS):
            return f"{msg} (got {error['input']!r})"
    return str(msg)


def parse_config(text: str, source: str, env: dict[str, str] | None = None) -> Config:
    """Parse YAML text into a Config or raise ConfigError with one line per problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError([f"{source}{where}: invalid YAML: {problem}"]) from None
    if raw is None:
        raise ConfigError(
            [
                f"{source}: the file is empty: expected a sipedge config, a YAML mapping of "
                "sections such as sip, trunks, numbers and agents (see configs/local.yaml)"
            ]
        )
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: (top level): expected a mapping of sections"])
    problems: list[str] = []
    from_env: dict[str, str] = {}
    secret_values: set[str] = set()
    expanded = expand_env(
        raw, dict(os.environ if env is None else env), "", problems, False, from_env, secret_values
    )
    lines = [f"{source}: {p}" for p in problems]
    env_paths = {p.split(":", 1)[0] for p in problems}
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        for error in exc.errors():
            loc = _loc(tuple(error["loc"]))
            if loc in env_paths and error["type"] != "extra_forbidden":
                continue  # already reported as a missing variable or a literal secret
            msg = _describe(error, from_env)
            # Cross-reference errors carry their own key path in the message.
            if loc == "(top level)" and re.match(r"^[a-z_]+(\[\d+\]|\.[a-z_]+)", msg):
                lines.append(f"{source}: {msg}")
            else:
                lines.append(f"{source}: {loc}: {msg}")
    if lines:
        raise ConfigError([_redact(line, secret_values) for line in lines])
    return config


def _redact(line: str, secret_values: set[str]) -> str:
    # Validators may quote a value in their message (ipaddress does); never let a secret through.
    for value in sorted(secret_values, key=len, reverse=True):
        if len(value) >= 4:
            line = line.replace(value, "**********")
    return line


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read file: {exc.strerror}"]) from None
    return parse_config(text, str(path), env)


def engine_capacity(config: Config) -> int:
    """Calls the node's SIP workers can hold at once."""
    return worker_count(config) * CALLS_PER_WORKER


def capacity_warning(config: Config, capacity: int | None = None) -> str | None:
    """Say so when `limits.max_concurrent_calls` was set above what the engine holds: the
    node then takes `capacity` calls (default: the engine's) and answers the rest 503."""
    limits = config.limits
    most = engine_capacity(config) if capacity is None else capacity
    if "max_concurrent_calls" not in limits.model_fields_set or limits.max_concurrent_calls <= most:
        return None
    workers = worker_count(config)
    return (
        f"limits.max_concurrent_calls: {limits.max_concurrent_calls} is more than this node "
        f"holds: {workers} SIP worker{'s' if workers > 1 else ''} x {CALLS_PER_WORKER} calls "
        f"(PJSUA_MAX_CALLS of the pjsua2 build); it takes at most {most} calls at once and "
        "answers more with 503"
    )


def warnings(config: Config) -> list[str]:
    """What a valid config will not do as written (check-config prints these)."""
    return [w for w in (capacity_warning(config),) if w is not None]


def public_url(url: str | None) -> str | None:
    """The URL without user:password or query string (tokens often travel there)."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def summary(config: Config) -> str:
    """One screen describing a valid config, with no secret values."""
    sip = config.sip
    lines = [
        f"node {config.node.id}: SIP {'/'.join(sip.transports)} on {sip.listen}:{sip.port}, "
        f"RTP {sip.rtp_ports.start}-{sip.rtp_ports.end}, codecs {', '.join(sip.codecs)}",
        f"trunks ({len(config.trunks)}):",
    ]
    for t in config.trunks:
        mode = f"registers with {t.registrar} as {t.username}" if t.registers else "static"
        ips = ", ".join(t.allowed_ips) or "no inbound"
        lines.append(
            f"  {t.id}: {mode}; inbound from {ips}; max {t.max_concurrent_calls} calls; "
            f"dials {', '.join(t.allowed_destinations)}"
        )
    lines.append(f"numbers ({len(config.numbers)}):")
    lines += [f"  {n.number} -> agent {n.agent}" for n in config.numbers]
    lines.append(f"agents ({len(config.agents)}):")
    lines += [f"  {a.id}: {a.type}{' ' + (public_url(a.url) or '') if a.url else ''}"
              for a in config.agents]  # fmt: skip
    mqtt = config.mqtt
    broker = "embedded mosquitto" if mqtt.embedded else f"{mqtt.host}:{mqtt.port}"
    lines.append(f"mqtt: {broker}, topics {mqtt.prefix}/{config.node.id}/...")
    api = config.api
    lines.append(
        f"api: {f'http://{api.listen}:{api.port}' if api.enabled else 'disabled'}"
        f" ({len(api.api_keys)} keys)"
    )
    lines.append(
        f"storage: {config.storage.path}; recording {'on' if config.recording.enabled else 'off'}"
    )
    if config.webhooks:
        lines.append(f"webhooks ({len(config.webhooks)}):")
        lines += [f"  {w.id}: {public_url(w.url)} <- {', '.join(w.events)}"
                  f"{'' if w.enabled else ' (disabled)'}" for w in config.webhooks]  # fmt: skip
    lim = config.limits
    calls = min(lim.max_concurrent_calls, engine_capacity(config))
    lines.append(
        f"limits: {calls} calls at once, {lim.max_call_duration}s max duration, "
        f"drain {config.node.drain_timeout:g}s"
    )
    return "\n".join(lines)
