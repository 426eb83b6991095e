"""The README's quick start, run as written against the shipped configs/local.yaml.

Only ports change (to free ones, so the test never meets another program on 5060/1883/8080):
the config's, and the same ports in the README's command lines. Nothing else is started: the
loopback trunk dials the node itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess
from tests.integration.peers import free_port, free_sip_port, free_udp_port_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIPEDGE = str(Path(sys.executable).parent / "sipedge")


def readme_commands() -> list[str]:
    """Every command line in the README's sh blocks, continuation lines joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()  # trailing comments
            if line:
                commands.append(line)
    return commands


def command(start: str) -> list[str]:
    """The README's one command line that starts with `start`, as argv (sipedge: ours)."""
    found = [c for c in readme_commands() if c.startswith(start)]
    assert len(found) == 1, (start, found)
    argv = shlex.split(found[0])
    return [SIPEDGE, *argv[1:]] if argv[0] == "sipedge" else argv


def quickstart_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    sip_port = free_sip_port()
    (trunk,) = config["trunks"]
    assert trunk["proxy"] == f"sip:127.0.0.1:{config['sip']['port']}"  # the node itself
    trunk["proxy"] = f"sip:127.0.0.1:{sip_port}"
    config["sip"]["port"] = sip_port
    rtp = free_udp_port_run(20, step=2)
    config["sip"]["rtp_ports"] = {"start": rtp, "end": rtp + 39}
    config["mqtt"]["port"] = free_port("tcp")
    config["api"]["port"] = free_port("tcp")
    return config


def run(argv: list[str], **kwargs: Any) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False, **kwargs)
    assert done.returncode == 0, (argv, done.stdout, done.stderr)
    return done.stdout


def test_the_readme_quick_start_completes_calls_with_local_yaml_and_nothing_else(
    tmp_path: Path,
) -> None:
    config = quickstart_config()
    mqtt_port, api_port, sip_port = (
        config["mqtt"]["port"],
        config["api"]["port"],
        config["sip"]["port"],
    )
    api_url = f"http://127.0.0.1:{api_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPEDGE_")}
    # `export SIPEDGE_API_KEY=dev-key` as the README says; the URL is the only change.
    cli_env = {**env, "SIPEDGE_API_KEY": "dev-key", "SIPEDGE_API_URL": api_url}
    node = NodeProcess(tmp_path, config, env=env, log_level="INFO", cwd=tmp_path)
    with node, MqttWatch(mqtt_port, node="local") as mq:

        def both_legs_complete(outbound_id: str) -> None:
            mq.wait_event("call.answered", outbound_id)
            inbound = mq.wait(
                lambda: [
                    e
                    for e in mq.events()
                    if e["type"] == "call.incoming" and e["call_id"] not in done_inbound
                ],
                what="the inbound leg",
            )[0]
            done_inbound.add(inbound["call_id"])
            mq.wait_event("call.answered", inbound["call_id"])
            hangup = command("mosquitto_rr -V 5 -t sipedge/local/commands/call.hangup")
            payload = hangup.index("-m") + 1
            hangup[payload] = hangup[payload].replace("call_...", outbound_id)
            reply = json.loads(run([*hangup, "-p", str(mqtt_port)]))
            assert reply == {"data": {"id": outbound_id, "status": "hanging_up"}}
            completed = mq.wait_event("call.completed", outbound_id)
            assert completed["data"]["hangup_by"] == "control_plane"
            mq.wait_event("call.completed", inbound["call_id"], hangup_by="caller")

        done_inbound: set[str] = set()

        # Inbound: SIPp plays 3 s of speech to +15550100 and hangs up.
        sipp = command("sipp -sf sipp_scenarios/uac_pcap.xml")
        sipp[sipp.index("-p") + 1] = str(free_udp_port_run(1))
        sipp[-1] = sipp[-1].replace(":5060", f":{sip_port}")
        run([*sipp, "-timeout", "20", "-timeout_error"], cwd=ROOT)
        sipp_call = mq.wait_event("call.completed", None, hangup_by="caller")
        done_inbound.add(sipp_call["call_id"])

        # Outbound over MQTT: the node calls its own echo number.
        originate = command("mosquitto_rr -V 5 -t sipedge/local/commands/call.originate")
        reply = json.loads(run([*originate, "-p", str(mqtt_port)]))
        assert reply["data"]["status"] == "dialing" and reply["data"]["to"] == "+15550100"
        both_legs_complete(reply["data"]["id"])

        # Outbound over the HTTP API, with curl and with the CLI.
        curl = command("curl -s -X POST http://127.0.0.1:8080/v1/calls")
        curl = [arg.replace("http://127.0.0.1:8080", api_url) for arg in curl]
        both_legs_complete(json.loads(run(curl))["data"]["id"])
        table = run(command("sipedge call --to"), env=cli_env)
        match = re.search(r"^id\s+(call_\w+)$", table, re.MULTILINE)
        assert match, table
        both_legs_complete(match.group(1))

        calls = run(command("sipedge calls --status completed"), env=cli_env)
        assert calls.rstrip().endswith("page 1 of 1, 7 calls"), calls
        assert calls.count(" outbound ") == 3 and calls.count(" inbound ") == 4, calls
    assert node.stop() == 0
    assert (tmp_path / "sipedge.db").exists()  # storage.path ./sipedge.db, beside the node
