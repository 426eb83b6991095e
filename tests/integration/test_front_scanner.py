"""Scanners against the node's front, with sipvicious itself (svmap, svwar): a known scanner
is dropped unanswered and counted; one that hides its User-Agent still learns nothing from
an untrusted source (every extension gets the same answer, for INVITE, REGISTER and
OPTIONS); and nothing the node sends names a version."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sipvicious import svwar
from sipvicious.libs.svhelper import getRange, makeRequest

from tests.integration.node import NodeProcess, workers_config
from tests.integration.peers import free_port
from tests.integration.rawsip import RawUac

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
SCANNER = "127.0.0.9"  # no trunk allows it
TRUSTED = "127.0.0.5"  # the carrier's address
EXTENSIONS = "15550095-15550105"  # 15550100 is routed (+15550100)
BIN = Path(sys.executable).parent


def scanner_config(tmp: Path) -> tuple[dict[str, Any], int]:
    config = workers_config(tmp, 1)
    config["trunks"][0]["allowed_ips"] = [f"{TRUSTED}/32"]
    api_port = free_port("tcp")
    config["api"] = {"enabled": True, "listen": HOST, "port": api_port, "api_keys": []}
    return config, api_port


def scanner_drops(api_port: int) -> int:
    text = httpx.get(f"http://{HOST}:{api_port}/metrics", timeout=5).text
    found = re.search(r"^sipedge_front_scanner_dropped_total (\d+)$", text, re.M)
    assert found is not None, text
    return int(found.group(1))


def war(
    port: int, source: str, method: str, user_agent: str | None, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """svwar's extension scan of the front from `source`: the extensions it believes exist.
    `user_agent` replaces sipvicious's own (friendly-scanner), as a scanner that hides does.
    (svwar's command line drops its -b option, so it runs here as the library it is.)"""
    if user_agent is not None:
        disguised = functools.partial(makeRequest, useragent=user_agent)
        monkeypatch.setattr(svwar, "makeRequest", disguised)
    scan = svwar.TakeASip(
        HOST, port=port, bindingip=source, localport=free_port(host=source), method=method,
        guessmode=1, guessargs=(getRange(EXTENSIONS), 0, None, False), maxlastrecvtime=3,
        socktimeout=1, enableack=method == "INVITE",
    )  # fmt: skip
    scan.start()
    return dict(scan.resultauth)


def test_svmap_and_svwar_as_they_ship_get_no_answer_and_are_counted(tmp_path: Path) -> None:
    config, api_port = scanner_config(tmp_path)
    with NodeProcess(tmp_path, config) as node:
        svmap = subprocess.run(
            [str(BIN / "sipvicious_svmap"), HOST, "-p", str(node.sip_port), "-b", SCANNER,
             "-P", str(free_port(host=SCANNER))],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "found nothing" in svmap.stderr, svmap.stdout + svmap.stderr
        svwar_cli = subprocess.run(
            [str(BIN / "sipvicious_svwar"), "-e", EXTENSIONS, HOST, "-p", str(node.sip_port),
             "-P", str(free_port())],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "found nothing" in svwar_cli.stderr, svwar_cli.stdout + svwar_cli.stderr
        node.wait_log(f"event=front_scanner_dropped source={SCANNER} method=OPTIONS "
                      "user_agent=friendly-scanner")  # fmt: skip
        node.wait_log(f"event=front_scanner_dropped source={HOST} method=REGISTER")
        assert scanner_drops(api_port) >= 2


@pytest.mark.parametrize("method", ["INVITE", "REGISTER", "OPTIONS"])
def test_a_scanner_hiding_its_user_agent_finds_no_extension_from_an_untrusted_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    config, _ = scanner_config(tmp_path)
    with NodeProcess(tmp_path, config) as node:
        assert war(node.sip_port, SCANNER, method, "Zoiper rv2.10", monkeypatch) == {}
        assert "event=front_scanner_dropped" not in node.log()  # answered, identically


def test_the_same_scan_from_the_carriers_address_finds_the_routed_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan above can see a difference when there is one: a trusted source gets 404 for
    a number nobody answers, and a call for the one the node routes."""
    config, _ = scanner_config(tmp_path)
    with NodeProcess(tmp_path, config) as node:
        found = war(node.sip_port, TRUSTED, "INVITE", "Zoiper rv2.10", monkeypatch)
    assert list(found) == ["15550100"], found


def test_no_answer_or_request_from_the_node_names_a_version(tmp_path: Path) -> None:
    config, _ = scanner_config(tmp_path)
    with NodeProcess(tmp_path, config) as node:
        with RawUac(node.sip_port, host=TRUSTED) as carrier:
            dialog, answer = carrier.call()  # the worker's 200, relayed by the front
            carrier.bye(dialog, answer)
            bye_ok = carrier.wait_final(dialog)
        with RawUac(node.sip_port, host=SCANNER) as stranger:
            refused = stranger.invite()  # the front's own 403
            forbidden = stranger.wait_final(refused)
            stranger.ack(refused, forbidden)
    for message in (answer, bye_ok, forbidden):
        for name in ("server", "user-agent"):
            value = message.header(name)
            assert value in ("", "sipedge"), (name, value, message.first_line)
    assert forbidden.header("server") == "sipedge"  # (pjsua's answers carry neither header)
