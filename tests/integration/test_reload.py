"""Live reload, end to end: a running node reads its config file again on SIGHUP (and on the
node.reload command) and changes numbers, agents and trunks with a call up, which goes on
untouched; a broken file, or one that changes what takes a restart, is refused with the
messages check-config prints, and the node goes on with the config it had.

Run once with the node alone and once behind its own Kamailio front (two workers): there the
front's config changes too (a new number) and Kamailio restarts on it under the live call.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config, workers_config
from tests.integration.peers import HOST, Sipp, free_port

pytestmark = pytest.mark.integration


def call(node: NodeProcess, number: str, workdir: Path, hold_ms: int = 0) -> Sipp:
    return Sipp(
        "uac_pcap.xml",
        remote=(HOST, node.sip_port),
        service=number,
        duration_ms=hold_ms or None,
        workdir=workdir,
    )


def rewrite(node: NodeProcess, config: dict[str, Any]) -> None:
    node.path.write_text(yaml.safe_dump(config))


@pytest.mark.parametrize("front", [False, True], ids=["node", "front"])
def test_sighup_applies_a_new_number_and_agent_with_a_call_up_and_refuses_a_bad_file(
    tmp_path: Path, front: bool
) -> None:
    limits = {"max_concurrent_calls": 8, "ring_timeout": 30}
    if front:
        config = workers_config(tmp_path, 2, limits=limits)
    else:
        config = base_config(tmp_path, limits=limits)
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        assert node.proc is not None
        # Before: +15550101 is not routed.
        assert not call(node, "+15550101", tmp_path / "before").run(30).ok

        # A call up across the reload.
        held = call(node, "+15550100", tmp_path / "held", hold_ms=12000).start()
        up = mq.wait_event("call.answered")

        new = {
            **config,
            "numbers": [*config["numbers"], {"number": "+15550101", "agent": "slow-echo"}],
            "agents": [*config["agents"], {"id": "slow-echo", "type": "echo", "delay_ms": 300}],
            "trunks": [{**config["trunks"][0], "max_concurrent_calls": 6}],
        }
        rewrite(node, new)
        node.proc.send_signal(signal.SIGHUP)
        reloaded = mq.wait_node_event("node.config_reloaded")
        assert reloaded["data"]["changed"] == ["trunks", "numbers", "agents"]
        assert reloaded["data"]["trunks_changed"] == ["loopback"]

        # After: the new number takes calls, to its new agent.
        assert call(node, "+15550101", tmp_path / "after").run(30).ok
        routed = mq.wait_event("call.incoming", to="+15550101")
        assert routed["data"]["agent"] == "slow-echo"

        # A broken file is refused, naming file and key, and changes nothing.
        broken = {**new, "numbers": [{"number": "+15550102", "agent": "nobody"}]}
        rewrite(node, broken)
        node.proc.send_signal(signal.SIGHUP)
        rejected = mq.wait_node_event("node.config_rejected")
        (problem,) = rejected["data"]["problems"]
        assert problem.startswith(f"{node.path}: numbers[0].agent:"), problem
        assert "event=config_rejected" in node.wait_log("event=config_rejected")

        # So is a change that takes a restart, by the node.reload command as well.
        moved = {**new, "mqtt": {**new["mqtt"], "prefix": "elsewhere"}}
        rewrite(node, moved)
        reply = mq.command("node.reload", {})
        assert reply["error"]["code"] == "invalid_parameter", reply
        (refusal,) = reply["error"]["details"]
        assert refusal["message"].startswith(f"{node.path}: mqtt.prefix: changed;"), refusal
        mq.wait_node_event("node.config_rejected", count=2)

        # The node still runs on the config it accepted: the new number answers.
        assert call(node, "+15550101", tmp_path / "still").run(30).ok

        # The call that was up all along ends as it would have: the caller hangs up.
        result = held.wait(40)
        assert result.ok, result.errors
        done = mq.wait_event("call.completed", up["call_id"])
        assert (done["data"]["reason"], done["data"]["hangup_by"]) == ("normal", "caller")
        if front:
            assert "event=front_restarted" in node.log()
            assert "reason=config_reloaded" in node.log()
        assert "event=worker_died" not in node.log()
        assert node.stop() == 0


def test_sipedge_reload_prints_what_changed_or_the_check_config_lines(tmp_path: Path) -> None:
    """`sipedge reload` goes through the API; the problems a reload refuses a file for are
    the lines check-config prints for it."""
    key = "reload-test-key-value"
    api_port = free_port("tcp")
    api = {"enabled": True, "listen": HOST, "port": api_port, "api_keys": ["${RELOAD_KEY}"]}
    config = base_config(tmp_path, api=api)
    env = {
        **os.environ,
        "SIPEDGE_API_URL": f"http://{HOST}:{api_port}",
        "SIPEDGE_API_KEY": key,
        "RELOAD_KEY": key,
    }  # check-config resolves the file as the node does

    def sipedge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                              text=True, env=env, timeout=30, check=False)  # fmt: skip

    with NodeProcess(tmp_path, config, env={"RELOAD_KEY": key}) as node:
        more = [*config["numbers"], {"number": "+15550101", "agent": "echo"}]
        rewrite(node, {**config, "numbers": more})
        ok = sipedge("reload")
        assert (ok.returncode, ok.stdout) == (0, "reloaded: changed numbers\n"), ok.stderr

        rewrite(node, {**config, "limits": {"max_concurrent_calls": 0}})
        refused = sipedge("reload")
        check = sipedge("check-config", str(node.path))
        assert (refused.returncode, check.returncode) == (2, 2)
        lines = refused.stderr.splitlines()
        assert lines[:-1] == check.stderr.splitlines() and lines[:-1], refused.stderr
        assert lines[-1] == "sipedge: the node refused the config and runs on the one it had"
        assert key not in ok.stdout + ok.stderr + refused.stdout + refused.stderr
        assert node.stop() == 0
