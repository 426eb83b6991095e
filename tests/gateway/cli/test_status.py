"""`sipedge status`: a node's /health as a line about the node and a table of its workers."""

from __future__ import annotations

from gateway.cli.client import status_text

HEALTH = {
    "status": "ok",
    "checks": {"sip_worker": "degraded", "store": "ok", "mqtt": "connected"},
    "reasons": [],
    "active_calls": 3,
    "capacity": 8,
    "workers": [
        {"worker": 1, "state": "running", "pid": 4242, "active_calls": 3, "capacity": 4,
         "free_slots": 1, "restarts": 0, "trunks": ["carrier"]},
        {"worker": 2, "state": "restarting", "pid": None, "active_calls": 0, "capacity": 4,
         "free_slots": 0, "restarts": 2, "trunks": []},
        {"worker": 3, "state": "running", "pid": 4244, "active_calls": 0, "capacity": 4,
         "free_slots": 4, "restarts": 0, "trunks": ["static"]},
    ],
}  # fmt: skip


def test_status_names_the_node_its_checks_and_each_worker() -> None:
    lines = status_text(HEALTH).splitlines()
    assert lines[0] == "node: ok, 3 active calls, capacity 8, 2 of 3 SIP workers running"
    assert lines[1] == "checks: sip_worker=degraded store=ok mqtt=connected"
    assert lines[2].split() == [
        "WORKER", "STATE", "PID", "CALLS", "FREE", "CAPACITY", "RESTARTS", "TRUNKS",
    ]  # fmt: skip
    assert lines[3].split() == ["1", "running", "4242", "3", "1", "4", "0", "carrier"]
    assert lines[4].split() == ["2", "restarting", "-", "0", "0", "4", "2", "-"]
    assert len(lines) == 6


def test_an_unhealthy_node_says_why() -> None:
    down = {**HEALTH, "status": "unhealthy", "reasons": ["all 3 SIP workers are down"]}
    assert "reason: all 3 SIP workers are down" in status_text(down).splitlines()
