"""Inbound digest authentication at the front (a trunk's inbound_auth): a PBX that sends
authenticated INVITEs or REGISTERs. The password reaches Kamailio only through its
environment; wrong credentials get 403, and an unknown user gets the very answers a known
one gets."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.node import NodeProcess, workers_config
from tests.integration.rawsip import Dialog, RawUac, SipMessage, digest_authorization
from tests.integration.test_front import wait_answered
from tests.integration.test_robustness import call_row

pytestmark = pytest.mark.integration

PBX = "127.0.0.7"
PASSWORD = "pbx-Secret-42"
ENV = {"PBX_PASSWORD": PASSWORD}


def auth_config(tmp: Path) -> dict[str, Any]:
    config = workers_config(tmp, 1)
    config["trunks"] = [
        {"id": "office-pbx", "allowed_ips": [f"{PBX}/32"],
         "inbound_auth": {"username": "office", "password": "${PBX_PASSWORD}"}},
        {"id": "carrier", "allowed_ips": ["127.0.0.8/32"]},
    ]  # fmt: skip
    return config


def front_pid(node: NodeProcess) -> int:
    found = re.search(r"event=front_started pid=(\d+)", node.log())
    assert found is not None
    return int(found.group(1))


def invite_with(uac: RawUac, challenge: str | None, user: str, password: str) -> Dialog:
    headers = ""
    if challenge is not None:
        uri = f"sip:+15550100@127.0.0.1:{uac.node[1]}"
        value = digest_authorization(challenge, "INVITE", uri, user, password)
        headers = f"Proxy-Authorization: {value}\r\n"
    return uac.invite(headers=headers)


def final(uac: RawUac, dialog: Dialog) -> SipMessage:
    answer = uac.wait_final(dialog)
    if answer.status >= 300:
        uac.ack(dialog, answer)
    return answer


def shape(message: SipMessage) -> tuple[str, list[str], str]:
    """What a reply tells apart from another one: status line, header names in order, and
    every header value that does not echo the request or carry a fresh nonce/tag."""
    head = message.text.split("\r\n\r\n", 1)[0].split("\r\n")
    names = [line.split(":", 1)[0].lower() for line in head[1:]]
    echoed = {"via", "from", "to", "call-id", "cseq", "content-length"}
    values = [re.sub(r'nonce="[^"]*"', 'nonce=""', line)
              for line in head[1:] if line.split(":", 1)[0].lower() not in echoed]  # fmt: skip
    return head[0], names, "\n".join(values)


def test_a_pbx_calls_in_only_with_its_digest_credentials(tmp_path: Path) -> None:
    config = auth_config(tmp_path)
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config, env=ENV) as node, RawUac(node.sip_port, host=PBX) as pbx:
        challenge = final(pbx, invite_with(pbx, None, "", ""))
        assert challenge.status == 407
        realm = challenge.header("proxy-authenticate")
        assert realm.startswith('Digest realm="sipedge"'), realm
        dialog = invite_with(pbx, realm, "office", PASSWORD)
        answer = pbx.wait_final(dialog)
        assert answer.status == 200, answer.first_line
        pbx.ack(dialog, answer)
        wait_answered(db, dialog.call_id)
        pbx.bye(dialog, answer)
        assert pbx.wait_final(dialog).status == 200
        assert call_row(db, dialog.call_id)["trunk"] == "office-pbx"

        wrong = invite_with(pbx, realm, "office", "not-the-password")
        assert final(pbx, wrong).status == 403
        node.wait_log(f"event=front_refused sip_call_id={wrong.call_id} source={PBX} code=403 "
                      "reason=auth_failed")  # fmt: skip
        # Another trunk's source needs no digest: its calls go on as before.
        with RawUac(node.sip_port, host="127.0.0.8") as carrier:
            dialog, answer = carrier.call()
            carrier.bye(dialog, answer)
        # Kamailio has the password in its environment, not in any file it runs from.
        front = front_pid(node)
        rendered = Path(Path(f"/proc/{front}/cmdline").read_bytes().split(b"\0")[4].decode())
        assert "$env(SIPEDGE_AUTH_OFFICE_PBX)" in rendered.read_text()
        files = [f for f in rendered.parent.iterdir() if f.is_file()]
        assert files and all(PASSWORD not in f.read_text() for f in files)
        environ = Path(f"/proc/{front}/environ").read_bytes().split(b"\0")
        assert f"SIPEDGE_AUTH_OFFICE_PBX={PASSWORD}".encode() in environ
    assert PASSWORD not in node.log()


def test_an_unknown_user_gets_exactly_the_answers_a_known_user_gets(tmp_path: Path) -> None:
    with (
        NodeProcess(tmp_path, auth_config(tmp_path), env=ENV) as node,
        RawUac(node.sip_port, host=PBX) as pbx,
    ):
        challenges = [final(pbx, invite_with(pbx, None, "", "")) for _ in range(2)]
        assert shape(challenges[0]) == shape(challenges[1])
        realm = challenges[0].header("proxy-authenticate")
        answers = {
            user: final(pbx, invite_with(pbx, realm, user, password))
            for user, password in [("office", "wrong"), ("admin", PASSWORD), ("1000", "1000")]
        }
        assert {a.status for a in answers.values()} == {403}
        shapes = {user: shape(answer) for user, answer in answers.items()}
        assert shapes["office"] == shapes["admin"] == shapes["1000"], shapes


def register(uac: RawUac, user: str, authorization: str = "", contact: bool = True) -> SipMessage:
    """One REGISTER for sip:`user`@front from `uac`; its final answer."""
    call_id, branch = uuid.uuid4().hex, "z9hG4bK" + uuid.uuid4().hex[:16]
    where = f"127.0.0.1:{uac.node[1]}"
    binding = f"Contact: <sip:{user}@{uac.host}:{uac.port}>\r\nExpires: 600\r\n" if contact else ""
    auth = f"Authorization: {authorization}\r\n" if authorization else ""
    uac.send(
        f"REGISTER sip:{where} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {uac.host}:{uac.port};branch={branch};rport\r\n"
        f"From: <sip:{user}@{where}>;tag={uuid.uuid4().hex[:8]}\r\nTo: <sip:{user}@{where}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\n{binding}{auth}Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    message = uac._next(lambda m: m.is_response and m.header("call-id") == call_id
                        and m.status >= 200, 5)  # fmt: skip
    assert message is not None, f"no answer to REGISTER {call_id}"
    return message


def test_a_pbx_registers_with_digest_and_its_binding_is_kept(tmp_path: Path) -> None:
    with (
        NodeProcess(tmp_path, auth_config(tmp_path), env=ENV) as node,
        RawUac(node.sip_port, host=PBX) as pbx,
    ):
        uri = f"sip:127.0.0.1:{node.sip_port}"
        challenge = register(pbx, "office")
        assert challenge.status == 401
        www = challenge.header("www-authenticate")
        assert www.startswith('Digest realm="sipedge"'), www
        ok = register(pbx, "office", digest_authorization(www, "REGISTER", uri, "office", PASSWORD))
        assert ok.status == 200, ok.first_line
        assert f"sip:office@{PBX}:{pbx.port}" in ok.header("contact")
        # A REGISTER without Contact asks for the bindings: the front kept ours.
        query = register(pbx, "office", contact=False,
                         authorization=digest_authorization(www, "REGISTER", uri, "office",
                                                            PASSWORD))  # fmt: skip
        assert query.status == 200 and f"sip:office@{PBX}:{pbx.port}" in query.header("contact")

        for user, password in [("office", "wrong"), ("admin", PASSWORD)]:
            refused = register(pbx, user, digest_authorization(www, "REGISTER", uri, user,
                                                               password))  # fmt: skip
            assert refused.status == 403, (user, refused.first_line)
        # The same credentials registering another AOR: refused too.
        other = register(pbx, "admin", digest_authorization(www, "REGISTER", uri, "office",
                                                            PASSWORD))  # fmt: skip
        assert other.status == 403
        # A source whose trunk takes no REGISTER gets what it got before: 405.
        with RawUac(node.sip_port, host="127.0.0.8") as carrier:
            assert register(carrier, "office").status == 405
    assert PASSWORD not in node.log()
