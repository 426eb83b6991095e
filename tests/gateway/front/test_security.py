"""What the front enforces beyond routing, as rendered: SIP over TLS (listener, tls.cfg,
sockets), inbound digest per trunk (the password only ever as $env), scanner User-Agents;
and the TLS refusals read back from its log."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, worker_slots
from gateway.front.render import FrontFiles, FrontPaths, render
from gateway.front.security import SCANNER_USER_AGENTS, auth_env_name, front_environment
from gateway.front.tlslog import TlsRefusal, TlsRefusals
from tests.gateway.front.test_render import block
from tests.integration.tlscerts import CertAuthority

SECRET = "pbx-secret-value"


@pytest.fixture
def pki(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "pki")


def config(pki: CertAuthority | None = None, **trunk: Any) -> Config:
    sip: dict[str, Any] = {"listen": "192.0.2.10", "port": 5060, "front": {"mode": "embedded"},
                           "public_address": "203.0.113.50"}  # fmt: skip
    if pki is not None:
        front = pki.issue("front")
        sip["tls"] = {"certificate": str(front.certificate), "private_key": str(front.key),
                      "ca_file": str(pki.ca_file), "port": 5071}  # fmt: skip
    return Config.model_validate(
        {
            "sip": sip,
            "trunks": [
                {
                    "id": "carrier",
                    "allowed_ips": ["198.51.100.0/24"],
                    "proxy": "sip:sbc.example",
                    **trunk,
                },
                {
                    "id": "office-pbx",
                    "allowed_ips": ["192.0.2.20/32"],
                    "inbound_auth": {"username": "office", "password": SECRET},
                },
            ],  # fmt: skip
            "numbers": [{"number": "+15550100", "agent": "echo"}],
            "agents": [{"id": "echo", "type": "echo"}],
        }
    )


def files(c: Config, directory: Path = Path("/run/front")) -> FrontFiles:
    return render(c, worker_slots(c), FrontPaths(directory))


def test_without_sip_tls_the_front_has_no_tls_at_all() -> None:
    rendered = files(config())
    assert rendered.tls_cfg is None and "tls.cfg" not in rendered.by_name()
    assert "tls" not in rendered.kamailio_cfg.split("loadmodule", 1)[1].split("\n#", 1)[0]
    assert "listen=tls:" not in rendered.kamailio_cfg and "enable_tls" not in rendered.kamailio_cfg


def test_sip_tls_adds_a_listener_the_module_and_its_tls_cfg(pki: CertAuthority) -> None:
    rendered = files(config(pki))
    text = rendered.kamailio_cfg
    assert "listen=tls:192.0.2.10:5071 advertise 203.0.113.50:5071" in text
    assert "enable_tls=yes" in text and 'loadmodule "tls.so"' in text
    assert 'modparam("tls", "config", "/run/front/tls.cfg")' in text
    tls = rendered.by_name()["tls.cfg"]
    server, client = tls.split("[client:default]")
    assert "method = TLSv1.2+" in server and "method = TLSv1.2+" in client
    assert f"certificate = {pki.directory / 'front.crt'}" in server
    assert f"ca_list = {pki.ca_file}" in server and f"ca_list = {pki.ca_file}" in client
    # Carriers' certificates are checked; callers are not asked for one unless a trunk wants it.
    assert "verify_certificate = yes\nrequire_certificate = yes" in client
    assert "verify_certificate = no" in server


def test_a_trunk_requiring_client_certificates_makes_the_front_ask_and_check(
    pki: CertAuthority,
) -> None:
    rendered = files(config(pki, tls_client_certificate=True))
    assert "verify_certificate = yes" in rendered.tls_cfg.split("[client:default]")[0]
    security = block(rendered.kamailio_cfg, "route[TRUNK_SECURITY]")
    carrier = security.split('if ($var(trunk) == "carrier") {', 1)[1].split("\n\t}", 1)[0]
    assert '$pr == "tls" && $tls_peer_verified == 1' in carrier


def test_requests_leave_from_the_socket_of_their_next_hops_transport(pki: CertAuthority) -> None:
    socket = block(files(config(pki)).kamailio_cfg, "route[PUBLIC_SOCKET]")
    assert "$var(proto) = $(ru{uri.transport}{s.tolower});" in socket  # no $du: the R-URI's
    assert '$var(scheme) == "sips"' in socket
    tls, tcp, udp = socket.index('"tls:192.0.2.10:5071"'), socket.index('"tcp:192.0.2.10:5060"'), \
        socket.index('"udp:192.0.2.10:5060"')  # fmt: skip
    assert tls < tcp < udp


def test_a_register_relayed_over_tls_names_the_fronts_tls_socket(pki: CertAuthority) -> None:
    worker = block(files(config(pki)).kamailio_cfg, "route[FROM_WORKER]")
    assert worker.index("route(PUBLIC_SOCKET);") < worker.index('is_method("REGISTER")')
    assert '"/@[^;>]+/@203.0.113.50:5071;transport=tls/"' in worker
    assert '"/@[^;>]+/@203.0.113.50:5060/"' in worker


def test_a_passphrase_protected_key_is_given_to_the_front_decrypted_and_private(
    tmp_path: Path, pki: CertAuthority
) -> None:
    front = pki.issue("front-enc", passphrase="key-passphrase")
    c = config(pki).model_copy(deep=True)
    raw = c.model_dump(by_alias=True)
    raw["sip"]["tls"].update(private_key=str(front.key), certificate=str(front.certificate),
                             private_key_password="key-passphrase")  # fmt: skip
    rendered = files(Config.model_validate(raw), tmp_path)
    assert "key-passphrase" not in repr(rendered) and "PRIVATE KEY" not in repr(rendered)
    assert f"private_key = {tmp_path / 'tls-key.pem'}" in rendered.tls_cfg
    written = rendered.write(FrontPaths(tmp_path))
    key = tmp_path / "tls-key.pem"
    assert key in written and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "BEGIN PRIVATE KEY" in key.read_text() and "ENCRYPTED" not in key.read_text()


def test_inbound_digest_reads_the_password_from_the_environment_never_the_file() -> None:
    c = config()
    text = files(c).kamailio_cfg
    assert SECRET not in text
    security = block(text, "route[TRUNK_SECURITY]")
    assert '$var(auth_user) = "office";' in security
    assert "$var(auth_password) = $env(SIPEDGE_AUTH_OFFICE_PBX);" in security
    assert front_environment(c) == {"SIPEDGE_AUTH_OFFICE_PBX": SECRET}
    assert auth_env_name(c.trunks[1]) == "SIPEDGE_AUTH_OFFICE_PBX"


def test_the_trunk_is_checked_before_the_number_so_callers_learn_no_numbers() -> None:
    invite = block(files(config()).kamailio_cfg, "route[INBOUND_INVITE]")
    assert invite.index("route(TRUNK_CHECKS);") < invite.index("route(ROUTED_NUMBER);")
    checks = block(files(config()).kamailio_cfg, "route[TRUNK_CHECKS]")
    # A wrong user and a wrong password take the one path to one answer.
    assert "$var(rc) != 1 || $au != $var(auth_user)" in checks
    assert checks.count('$var(reason) = "auth_failed";') == 1


def test_known_scanners_are_dropped_before_anything_else_looks_at_the_request() -> None:
    text = files(config()).kamailio_cfg
    outside = block(text, "request_route").split("} else {", 1)[1]
    assert outside.index("route(SCANNER);") < outside.index("route(FLOOD);")
    scanner = block(text, "route[SCANNER]")
    assert f'$ua =~ "{SCANNER_USER_AGENTS}"' in scanner
    assert "sl_send_reply" not in scanner and "exit;" in scanner
    for agent in ("friendly-scanner", "sipvicious", "sipcli", "VaxSIPUserAgent", "pplsip"):
        assert agent in SCANNER_USER_AGENTS


KAMAILIO_IN = [
    "tls [tls_server.c:1330]: tls_h_read_f(): protocol level error",
    "tls [tls_util.h:50]: tls_err_ret(): TLS accept:error:0A000086:SSL routines::certificate "
    "verify failed (sni: unknown)",
    "tls [tls_server.c:1334]: tls_h_read_f(): src addr: 127.0.0.1:45671",
    "tls [tls_server.c:1337]: tls_h_read_f(): dst addr: 127.0.0.1:59359",
]


def test_a_refused_handshake_is_read_from_the_fronts_log_lines() -> None:
    refusals = TlsRefusals(config())
    seen = [r for line in KAMAILIO_IN if (r := refusals.feed(line)) is not None]
    assert seen == [TlsRefusal("in", "certificate verify failed", "127.0.0.1:45671")]
    assert seen[0].log_line() == ('event=front_tls_refused direction=in peer=127.0.0.1:45671 '
                                  'reason="certificate verify failed"')  # fmt: skip


def test_an_outbound_refusal_names_the_tls_trunk_it_was_for(pki: CertAuthority) -> None:
    c = config(pki, transport="tls", proxy="sip:198.51.100.7:5061")
    refusals = TlsRefusals(c)
    assert refusals.feed("tls_err_ret(): TLS write:error:0A000086:SSL routines::certificate "
                         "verify failed (sni: unknown)") is None  # fmt: skip
    refusal = refusals.feed("tls_h_read_f(): src addr: 198.51.100.7:5061")
    assert refusal == TlsRefusal("out", "certificate verify failed", "198.51.100.7:5061",
                                 "carrier")  # fmt: skip
    assert refusals.feed("tls_h_read_f(): src addr: 198.51.100.7:5061") is None  # no reason
