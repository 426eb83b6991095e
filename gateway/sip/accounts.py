"""pjsua2 accounts: the node's local identity and one per trunk, with our own registration
retry policy (pjsua's retry gives up on 401/403; ours backs off and keeps trying)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import pjsua2 as pj

from gateway.backoff import Backoff
from gateway.calls.events import TrunkStateChanged
from gateway.config import (
    SessionTimers,
    SipSettings,
    Trunk,
    front_worker_side,
    hostport,
    rtp_advertised_host,
    sip_advertised_host,
)
from gateway.sip.sdp import SUITES

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.sip.executor import Timer

log = logging.getLogger("sipedge.sip.trunk")


@dataclass
class TrunkState:
    """What is known of a trunk's registration; plain data, safe to hand to any thread."""

    trunk: str
    registers: bool
    state: str = "static"  # static | registering | registered | failed | unregistered
    sip_code: int | None = None
    reason: str | None = None
    expires: int | None = None
    next_retry_at: float | None = None
    registered_at: float | None = None
    active_calls: int = 0
    max_concurrent_calls: int = 0
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_event(self) -> TrunkStateChanged:
        """This state as the worker reports it (every field the event has, by name)."""
        names = (f.name for f in fields(TrunkStateChanged) if f.name != "call_id")
        return TrunkStateChanged(**{name: getattr(self, name) for name in names})


def _media_config(cfg: pj.AccountConfig, sip: SipSettings) -> None:
    tp = cfg.mediaConfig.transportConfig
    tp.port = sip.rtp_ports.start
    tp.portRange = sip.rtp_ports.end - sip.rtp_ports.start
    tp.boundAddress = sip.rtp_listen or sip.listen
    advertised = rtp_advertised_host(sip)
    if advertised:
        tp.publicAddress = advertised
    cfg.natConfig.iceEnabled = False
    cfg.natConfig.sipStunUse = pj.PJSUA_STUN_USE_DISABLED
    cfg.natConfig.mediaStunUse = pj.PJSUA_STUN_USE_DISABLED


_TIMER_USE = {
    "off": pj.PJSUA_SIP_TIMER_INACTIVE,
    "optional": pj.PJSUA_SIP_TIMER_OPTIONAL,
    "required": pj.PJSUA_SIP_TIMER_REQUIRED,
    "always": pj.PJSUA_SIP_TIMER_ALWAYS,
}


def _session_timers(cfg: pj.AccountConfig, timers: SessionTimers) -> None:
    call = cfg.callConfig
    call.timerUse = _TIMER_USE[timers.mode]
    call.timerSessExpiresSec = timers.expires
    call.timerMinSESec = timers.min_se


_SRTP_USE = {
    "off": pj.PJMEDIA_SRTP_DISABLED,
    "optional": pj.PJMEDIA_SRTP_OPTIONAL,
    "required": pj.PJMEDIA_SRTP_MANDATORY,
}


def _srtp(cfg: pj.AccountConfig, mode: str) -> None:
    """SDES keys only (no DTLS), with the suites the media plane speaks, strongest first;
    over any signalling transport (keys in SDP over UDP are the operator's choice: pair
    srtp with transport tls)."""
    media = cfg.mediaConfig
    media.srtpUse = _SRTP_USE[mode]
    media.srtpSecureSignaling = 0
    if mode == "off":
        return
    media.srtpOpt.keyings.clear()
    media.srtpOpt.keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
    media.srtpOpt.cryptos.clear()
    for suite in SUITES:
        crypto = pj.SrtpCrypto()
        crypto.name = suite
        media.srtpOpt.cryptos.append(crypto)


def outbound_proxies(config: Config, trunk: Trunk) -> list[str]:
    """The Route set of a trunk's requests: the SIP front first when there is one (carriers
    then see the front's address, never a worker's), then the trunk's proxy when it registers
    with a registrar elsewhere (requests go to the registrar's domain by way of the proxy)."""
    proxies = []
    if config.sip.front.mode != "none":
        proxies.append(f"sip:{hostport(*front_worker_side(config))};transport=udp;lr")
    if trunk.proxy and trunk.registrar:
        proxies.append(f"{trunk.proxy};transport={trunk.transport};lr")
    return proxies


def host_of(uri: str) -> str:
    return uri.split(":", 1)[1].split(";", 1)[0]


def _registration(trunk: Trunk) -> tuple[object, ...]:
    """What a REGISTER of the trunk depends on."""
    return (trunk.registrar, trunk.username, trunk.password, trunk.auth_username, trunk.realm,
            trunk.domain, trunk.transport, trunk.expires, trunk.proxy)  # fmt: skip


class AccountHooks(Protocol):
    """What the accounts call back into (the SIP engine), so this module needs no import of
    the engine (that import was a circle)."""

    @property
    def config(self) -> Config: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def schedule(self) -> Callable[[float, Callable[[], None]], Timer]: ...

    def on_incoming(self, account: pj.Account, prm: Any) -> None: ...

    def on_trunk_state(self, state: TrunkState) -> None: ...


class LocalAccount(pj.Account):  # type: ignore[misc]
    """The node itself: receives INVITEs that no trunk account claims."""

    def __init__(self, engine: AccountHooks) -> None:
        super().__init__()
        self.engine = engine
        self.create(self._config(), True)

    def _config(self) -> pj.AccountConfig:
        cfg = pj.AccountConfig()
        sip = self.engine.config.sip
        host = sip_advertised_host(sip) or sip.listen
        cfg.idUri = f"sip:sipedge@{host}:{sip.port}"
        _media_config(cfg, sip)
        _session_timers(cfg, sip.session_timers)
        # Inbound calls land here: SRTP is taken when a trunk may use it; which trunk may,
        # and which must, the engine decides per call (SipEngine.on_incoming).
        trunks = self.engine.config.trunks
        _srtp(cfg, "optional" if any(t.srtp != "off" for t in trunks) else "off")
        return cfg

    def reconfigure(self) -> None:
        """A reload: the engine's config changed (SRTP of its trunks)."""
        self.modify(self._config())

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self.engine.on_incoming(self, prm)


class TrunkAccount(pj.Account):  # type: ignore[misc]
    """One trunk in one worker. Every worker loads every trunk (inbound calls and dial-out),
    but a registering trunk is registered by one worker of the node only (`register`; the
    node picks it, and moves it with `start_registering` if that worker is lost)."""

    def __init__(self, engine: AccountHooks, trunk: Trunk, register: bool = True) -> None:
        super().__init__()
        self.engine = engine
        self.trunk = trunk
        self.state = TrunkState(
            trunk.id, trunk.registers, max_concurrent_calls=trunk.max_concurrent_calls
        )
        self.backoff = Backoff(trunk.retry_min, trunk.retry_max)
        self.registering = False  # this worker sends the trunk's REGISTERs
        self.unregistering = False
        self.retry_timer: object | None = None
        self.caller_user = self._default_user()
        self.create(self._config(self.caller_user), False)
        if trunk.registers:
            if register:
                self.start_registering()
            else:
                self.state.state = "unregistered"  # by this worker: another one registers it

    def start_registering(self) -> None:
        """Register the trunk from this worker from now on (no-op if it does already)."""
        if not self.trunk.registers or self.registering or self.unregistering:
            return
        self.registering = True
        self._set("registering")
        try:
            self.setRegistration(True)
        except pj.Error as exc:  # retried with backoff, like a refused REGISTER
            self.onRegState(_Failure(503, exc.reason))

    def reconfigure(self, trunk: Trunk) -> None:
        """A reload changed this trunk: calls up go on as they are; new calls, and the next
        REGISTER, use the new settings. A trunk registered from this worker registers again
        at once when what it registers with changed."""
        old, self.trunk = self.trunk, trunk
        self.backoff = Backoff(trunk.retry_min, trunk.retry_max)
        self.state.max_concurrent_calls = trunk.max_concurrent_calls
        self.caller_user = self._default_user()
        self.modify(self._config(self.caller_user))
        if not self.registering:
            return
        if not trunk.registers:
            self.registering = False
            self.unregister()
            self.unregistering = False
            return
        if _registration(old) != _registration(trunk):
            try:
                self.setRegistration(True)
            except pj.Error as exc:
                self.onRegState(_Failure(503, exc.reason))

    def _default_user(self) -> str:
        if self.trunk.registers and self.trunk.username:
            return self.trunk.username
        return self.trunk.caller_id or "sipedge"

    def _config(self, user: str) -> pj.AccountConfig:
        trunk, sip = self.trunk, self.engine.config.sip
        cfg = pj.AccountConfig()
        target = trunk.registrar or trunk.proxy
        domain = trunk.domain or (host_of(target) if target else sip.listen)
        cfg.idUri = f"sip:{user}@{domain}"
        transport = f";transport={trunk.transport}"
        if trunk.registers and trunk.registrar:
            cfg.regConfig.registrarUri = trunk.registrar + transport
            cfg.regConfig.timeoutSec = trunk.expires
            cfg.regConfig.retryIntervalSec = 0  # our Backoff decides
            cfg.regConfig.registerOnAdd = False
        for proxy in outbound_proxies(self.engine.config, trunk):
            cfg.sipConfig.proxies.append(proxy)
        if trunk.username and trunk.password is not None:
            cfg.sipConfig.authCreds.append(
                pj.AuthCredInfo(
                    "digest",
                    trunk.realm,
                    trunk.auth_username or trunk.username,
                    0,
                    trunk.password.get_secret_value(),
                )
            )
        _media_config(cfg, sip)
        _session_timers(cfg, trunk.session_timers or sip.session_timers)
        _srtp(cfg, trunk.srtp)
        return cfg

    @property
    def domain(self) -> str:
        """The trunk's SIP domain: configured, else the registrar's (or proxy's) host."""
        trunk = self.trunk
        return trunk.domain or host_of(trunk.registrar or trunk.proxy or "")

    def target_uri(self, number: str) -> str:
        return f"sip:{number}@{self.domain};transport={self.trunk.transport}"

    def use_caller_id(self, caller_id: str | None) -> None:
        """Static trunks put the caller id in From; registered trunks keep their AOR."""
        user = caller_id or self._default_user()
        if self.trunk.registers or user == self.caller_user:
            return
        self.modify(self._config(user))
        self.caller_user = user

    def onIncomingCall(self, prm: Any) -> None:  # noqa: N802
        self.engine.on_incoming(self, prm)

    def onRegState(self, prm: Any) -> None:  # noqa: N802
        code, reason, expires = int(prm.code), str(prm.reason), int(prm.expiration)
        self.state.sip_code, self.state.reason = code, reason
        if self.unregistering:
            self._set("unregistered")
            return
        if 200 <= code < 300 and expires > 0:
            self.backoff.reset()
            self.state.expires = expires
            self.state.next_retry_at = None
            self.state.registered_at = time.time()
            self._set("registered", force_event=True)
            return
        delay = self.backoff.next_delay()
        self.state.attempts = self.backoff.attempts
        self.state.next_retry_at = time.time() + delay
        self.state.expires = None
        self._set("failed", force_event=True)
        self.engine.schedule(delay, self._retry)

    def _retry(self) -> None:
        if self.unregistering or self.engine.stopping:
            return
        self._set("registering")
        try:
            self.setRegistration(True)
        except pj.Error as exc:
            self.onRegState(_Failure(503, exc.reason))

    def unregister(self) -> bool:
        """Send REGISTER Expires: 0 if registered; True when a response is awaited."""
        was_registered = self.state.state == "registered"
        self.unregistering = True
        if was_registered:
            try:
                self.setRegistration(False)
                return True
            except pj.Error as exc:
                log.warning("event=unregister_failed trunk=%s error=%s", self.trunk.id, exc.reason)
        return False

    def _set(self, new: str, force_event: bool = False) -> None:
        old = self.state.state
        if old == new and not force_event:
            return
        self.state.state = new
        log.info(
            "event=trunk_state trunk=%s state=%s previous=%s sip_code=%s reason=%r "
            "next_retry_in=%s",
            self.trunk.id,
            new,
            old,
            self.state.sip_code,
            self.state.reason,
            None
            if self.state.next_retry_at is None
            else round(self.state.next_retry_at - time.time(), 1),
        )
        self.engine.on_trunk_state(self.state)


@dataclass
class _Failure:
    code: int
    reason: str
    expiration: int = 0
