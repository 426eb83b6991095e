"""SIP over TLS through the node's front (Kamailio's tls module): a carrier calls in over TLS
and is called out to and registered with over TLS; a certificate that is expired, or signed
by a CA the other side does not trust, is refused, logged and counted."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, workers_config
from tests.integration.peers import free_port
from tests.integration.rawsip import TlsServer, TlsUac, sdp
from tests.integration.test_front import wait_answered
from tests.integration.test_robustness import call_row
from tests.integration.tlscerts import CertAuthority, Pem

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@pytest.fixture
def ca(tmp_path: Path) -> CertAuthority:
    return CertAuthority(tmp_path / "pki")


def tls_config(tmp: Path, ca: CertAuthority, front: Pem, **overrides: Any) -> dict[str, Any]:
    config = workers_config(tmp, 1, **overrides)
    config["sip"]["tls"] = {
        "port": free_port("tcp"),
        "certificate": str(front.certificate),
        "private_key": str(front.key),
        "ca_file": str(ca.ca_file),
    }
    return config


def client_context(ca: CertAuthority, own: Pem | None = None) -> ssl.SSLContext:
    """A carrier's client side: it checks the front against `ca`, presents `own` if given."""
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if own is not None:
        context.load_cert_chain(own.certificate, own.key)
    return context


def server_context(own: Pem) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(own.certificate, own.key)
    return context


def tls_port(config: dict[str, Any]) -> int:
    return int(config["sip"]["tls"]["port"])


def with_metrics(config: dict[str, Any]) -> int:
    """Turn the node's HTTP API on (for /metrics); its port."""
    port = free_port("tcp")
    config["api"] = {"enabled": True, "listen": HOST, "port": port, "api_keys": []}
    return port


def metric(api_port: int, sample: str) -> int:
    """The value of one /metrics sample, e.g. 'sipedge_front_tls_refused_total{direction="in"}'."""
    text = httpx.get(f"http://{HOST}:{api_port}/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(sample)} (\d+)$", text, re.M)
    assert found is not None, text
    return int(found.group(1))


def bad_certificate(tmp: Path, ca: CertAuthority, which: str, stem: str) -> Pem:
    """A certificate the front must refuse: expired (by its own CA), or by a CA it does not
    trust."""
    if which == "expired":
        return ca.issue(stem, expired=True)
    return CertAuthority(tmp / "other-pki", "someone else").issue(stem)


def test_a_carrier_calls_in_over_tls_and_both_hang_ups_pass_the_front(
    tmp_path: Path, ca: CertAuthority
) -> None:
    """The front's key has a passphrase here: the node opens it for Kamailio."""
    front = ca.issue("front", passphrase="front-key-passphrase")
    limits = {"max_concurrent_calls": 4, "media_timeout": 2.0}
    config = tls_config(tmp_path, ca, front, limits=limits)
    config["sip"]["tls"]["private_key_password"] = "${FRONT_KEY_PASSPHRASE}"
    env = {"FRONT_KEY_PASSPHRASE": "front-key-passphrase"}
    db = config["storage"]["path"]
    with (
        NodeProcess(tmp_path, config, env=env) as node,
        TlsUac(tls_port(config), client_context(ca)) as carrier,
    ):
        assert carrier.sock.version() in ("TLSv1.2", "TLSv1.3")
        dialog, final = carrier.call()
        assert any("transport=tls" in entry for entry in dialog.route_set), dialog.route_set
        wait_answered(db, dialog.call_id)
        carrier.bye(dialog, final)
        assert carrier.wait_final(dialog).status == 200
        assert call_row(db, dialog.call_id)["end_reason"] == "normal"

        # The worker hangs up (no RTP): its BYE reaches the carrier on its TLS connection.
        dialog, final = carrier.call()
        bye = carrier.wait_request("BYE", dialog, timeout=20)
        carrier.answer(bye)
        assert bye.header("via").startswith(f"SIP/2.0/TLS {HOST}:{tls_port(config)};")
        assert call_row(db, dialog.call_id)["end_reason"] == "media_timeout"
    assert "front-key-passphrase" not in node.log()


def tls_trunk(port: int, **extra: Any) -> dict[str, Any]:
    """A trunk that registers with, and calls out to, a TLS carrier on 127.0.0.1:`port`."""
    return {
        "id": "carrier",
        "transport": "tls",
        "register": True,
        "registrar": f"sip:127.0.0.1:{port}",
        "username": "edge",
        "password": "${CARRIER_PASSWORD}",
        "allowed_ips": ["127.0.0.0/8"],
        "allowed_destinations": ["+1555"],
        "retry_min": 1,
        "retry_max": 2,
        **extra,
    }


def answer_register(carrier: TlsServer) -> str:
    """Challenge the node's REGISTER, take the authenticated one; its Contact."""
    first = carrier.wait_method("REGISTER")
    challenge = 'WWW-Authenticate: Digest realm="carrier", nonce="abc123"\r\n'
    carrier.answer(first, 401, "Unauthorized", to_tag="reg", headers=challenge)
    second = carrier.wait_method("REGISTER")
    assert 'username="edge"' in second.header("authorization")
    assert second.header("user-agent") == "sipedge"  # no version (test_front_scanner.py)
    contact = second.header("contact")
    carrier.answer(second, 200, "OK", to_tag="reg", headers=f"Contact: {contact};expires=300\r\n")
    return contact


def test_a_tls_trunk_registers_and_calls_out_over_tls(tmp_path: Path, ca: CertAuthority) -> None:
    with TlsServer(server_context(ca.issue("carrier"))) as carrier:
        config = tls_config(tmp_path, ca, ca.issue("front"), trunks=[tls_trunk(carrier.port)])
        env = {"CARRIER_PASSWORD": "carrier-secret"}
        with NodeProcess(tmp_path, config, env=env) as node, MqttWatch(node.mqtt_port) as mq:
            contact = answer_register(carrier)
            # Calls for the AOR come to the front's TLS socket.
            assert f"@{HOST}:{tls_port(config)};transport=tls" in contact, contact
            mq.wait(lambda: (mq.retained("trunks/carrier/state") or {}).get("state")
                    == "registered", what="carrier registered")  # fmt: skip

            reply = mq.command("call.originate", {"to": "+15551230000", "agent": "echo"})
            call_id = reply["data"]["id"]
            invite = carrier.wait_method("INVITE")
            assert invite.first_line.startswith("INVITE sip:+15551230000@127.0.0.1")
            assert invite.header("via").startswith(f"SIP/2.0/TLS {HOST}:{tls_port(config)};")
            carrier.answer(invite, 200, "OK", to_tag="callee",
                           headers=f"Contact: <sip:callee@{HOST}:{carrier.port};transport=tls>\r\n",
                           body=sdp(free_port()))  # fmt: skip
            mq.wait_event("call.answered", call_id)
            carrier.wait_method("ACK")
            mq.command("call.hangup", {"call_id": call_id})
            bye = carrier.wait_method("BYE")
            carrier.answer(bye)
            mq.wait_event("call.completed", call_id)
        assert "carrier-secret" not in node.log()


# What the peer's side of the handshake hears when the front refuses its certificate.
ALERT = {"expired": "CERTIFICATE_EXPIRED", "untrusted": "UNKNOWN_CA"}


@pytest.mark.parametrize("which", ["expired", "untrusted"])
def test_a_carrier_whose_certificate_is_expired_or_untrusted_is_never_sent_a_request(
    tmp_path: Path, ca: CertAuthority, which: str
) -> None:
    with TlsServer(server_context(bad_certificate(tmp_path, ca, which, "carrier"))) as carrier:
        config = tls_config(tmp_path, ca, ca.issue("front"), trunks=[tls_trunk(carrier.port)])
        api_port = with_metrics(config)
        env = {"CARRIER_PASSWORD": "carrier-secret"}
        with NodeProcess(tmp_path, config, env=env) as node, MqttWatch(node.mqtt_port) as mq:
            assert ALERT[which] in carrier.handshake_errors.get(timeout=10)
            node.wait_log(f"event=front_tls_refused direction=out peer={HOST}:{carrier.port} "
                          'trunk=carrier reason="certificate verify failed"')  # fmt: skip
            assert metric(api_port, 'sipedge_front_tls_refused_total{direction="out"}') >= 1
            # The REGISTER never left: the trunk fails (the front gives up on the hop) and
            # retries with backoff; no request reached the carrier.
            mq.wait(lambda: any(t.endswith("/trunks/carrier/events")
                                and p.get("type") == "trunk.registration_failed"
                                for t, p in mq.messages), what="registration_failed")  # fmt: skip
            assert carrier.recv(timeout=0) is None


@pytest.mark.parametrize("which", ["expired", "untrusted"])
def test_a_caller_whose_client_certificate_is_expired_or_untrusted_is_refused(
    tmp_path: Path, ca: CertAuthority, which: str
) -> None:
    config = tls_config(tmp_path, ca, ca.issue("front"))
    config["trunks"][0]["tls_client_certificate"] = True
    api_port = with_metrics(config)
    with NodeProcess(tmp_path, config) as node:
        context = client_context(ca, bad_certificate(tmp_path, ca, which, "pbx"))
        # TLS 1.3: the front's verdict on our certificate arrives after our side of the
        # handshake, as an alert instead of the answer.
        with (
            pytest.raises(ssl.SSLError, match=ALERT[which]),
            TlsUac(tls_port(config), context) as pbx,
        ):
            pbx.invite()
            pbx.recv(timeout=5)
        node.wait_log("event=front_tls_refused direction=in peer=127.0.0.1:")
        assert 'reason="certificate verify failed"' in node.log()
        assert metric(api_port, 'sipedge_front_tls_refused_total{direction="in"}') == 1


def test_a_trunk_that_requires_a_client_certificate_takes_calls_only_with_a_valid_one(
    tmp_path: Path, ca: CertAuthority
) -> None:
    config = tls_config(tmp_path, ca, ca.issue("front"))
    config["trunks"][0]["tls_client_certificate"] = True
    api_port = with_metrics(config)
    with NodeProcess(tmp_path, config) as node:
        with TlsUac(tls_port(config), client_context(ca)) as anonymous:  # no certificate
            refused = anonymous.invite()
            assert anonymous.wait_final(refused).status == 403
        node.wait_log(f"event=front_refused sip_call_id={refused.call_id} source=127.0.0.1 "
                      "code=403 reason=certificate_required")  # fmt: skip
        sample = 'sipedge_front_invites_refused_total{reason="certificate_required"}'
        assert metric(api_port, sample) == 1
        with TlsUac(tls_port(config), client_context(ca, ca.issue("pbx"))) as pbx:
            dialog, final = pbx.call()
            pbx.bye(dialog, final)
            assert pbx.wait_final(dialog).status == 200


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_a_caller_offering_less_than_tls_1_2_is_refused(tmp_path: Path, ca: CertAuthority) -> None:
    config = tls_config(tmp_path, ca, ca.issue("front"))
    with NodeProcess(tmp_path, config) as node:
        old = client_context(ca)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL 3 offer TLS 1.1 at all
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            TlsUac(tls_port(config), old).close()
        node.wait_log('reason="unsupported protocol"')
        assert "event=front_tls_refused direction=in peer=127.0.0.1:" in node.log()
        with TlsUac(tls_port(config), client_context(ca)) as current:
            assert current.sock.version() in ("TLSv1.2", "TLSv1.3")
            dialog, final = current.call()
            current.bye(dialog, final)
