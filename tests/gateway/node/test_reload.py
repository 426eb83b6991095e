"""What a reload may change: pure logic (gateway/node/reload.py), no node."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import Config
from gateway.node.reload import plan_reload

BASE: dict[str, Any] = {
    "sip": {"listen": "127.0.0.1", "port": 5070},
    "trunks": [
        {"id": "a", "proxy": "sip:192.0.2.1", "allowed_ips": ["192.0.2.1/32"]},
        {"id": "b", "proxy": "sip:192.0.2.2", "password": "s3cret-value"},
    ],
    "numbers": [{"number": "+15550100", "agent": "bot"}],
    "agents": [{"id": "bot", "type": "echo"}],
    "mqtt": {"password": "old-mqtt-secret"},
}


def config(**changes: Any) -> Config:
    return Config.model_validate({**BASE, **changes})


def test_the_same_config_changes_nothing() -> None:
    plan = plan_reload("node.yaml", config(), config())
    assert not plan.problems and not plan.changed


def test_trunks_numbers_agents_and_limits_change_live_and_are_named() -> None:
    trunks = [
        {"id": "a", "proxy": "sip:192.0.2.9", "allowed_ips": ["192.0.2.1/32"]},  # changed
        {"id": "c", "proxy": "sip:192.0.2.3"},  # added; b removed
    ]
    new = config(
        trunks=trunks,
        numbers=[*BASE["numbers"], {"number": "+15550101", "agent": "bot"}],
        limits={"max_concurrent_calls": 50},
    )
    plan = plan_reload("node.yaml", config(), new)
    assert plan.problems == []
    assert plan.changed == ["trunks", "numbers", "limits"]
    assert (plan.trunks_added, plan.trunks_removed, plan.trunks_changed) == (["c"], ["b"], ["a"])


def test_a_secret_that_changed_counts_as_a_change() -> None:
    new = config(trunks=[BASE["trunks"][0], {**BASE["trunks"][1], "password": "new-one"}])
    assert plan_reload("node.yaml", config(), new).trunks_changed == ["b"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"sip": {"listen": "127.0.0.1", "port": 5080}}, "sip.port"),
        ({"mqtt": {"password": "new-mqtt-secret"}}, "mqtt.password"),
        ({"node": {"id": "other"}}, "node.id"),
        ({"storage": {"path": "/tmp/other.db"}}, "storage.path"),
    ],
)
def test_what_needs_a_restart_refuses_the_reload_naming_the_key_never_the_value(
    changes: dict[str, Any], key: str
) -> None:
    plan = plan_reload("node.yaml", config(), config(**changes))
    assert len(plan.problems) == 1, plan.problems
    problem = plan.problems[0]
    assert problem.startswith(f"node.yaml: {key}: changed;"), problem
    assert "restart" in problem
    assert "secret" not in problem and "5080" not in problem and "other" not in problem
    assert not plan.changed  # nothing is applied


def test_limits_that_change_the_number_of_auto_workers_need_a_restart() -> None:
    front = {"listen": "127.0.0.1", "port": 5070, "front": {"mode": "embedded"}}
    old = config(sip=front, node={"workers": "auto"}, limits={"max_concurrent_calls": 4})
    new = config(sip=front, node={"workers": "auto"}, limits={"max_concurrent_calls": 40})
    (problem,) = plan_reload("node.yaml", old, new).problems
    assert problem.startswith("node.yaml: node.workers: auto now gives"), problem


def test_webhooks_change_live_a_new_secret_included() -> None:
    hook = {"id": "cp", "url": "https://cp/h", "secret": "0123456789abcdef"}
    old = config(webhooks=[hook])
    for new in (config(webhooks=[{**hook, "secret": "fedcba9876543210"}]),
                config(webhooks=[hook, {**hook, "id": "other"}]),
                config(webhooks=[])):  # fmt: skip
        plan = plan_reload("node.yaml", old, new)
        assert (plan.problems, plan.changed) == ([], ["webhooks"])
    plan = plan_reload("node.yaml", old, config(webhooks=[hook], webhooks_max_failures=5))
    assert (plan.problems, plan.changed) == ([], ["webhooks_max_failures"])
