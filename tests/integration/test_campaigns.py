"""Outbound campaigns, end to end: a real node dials a SIPp callee population (busy, no
answer, answered by the number's last digit) through MQTT commands. Checked: every contact
ends with its true result after its retries; the calls placed never exceed the campaign's
max_concurrent and calls_per_second (measured on the attempts, when the runner placed them,
and on the call records); each call is a normal call carrying the campaign id and the
contact's variables; campaign.started / campaign.completed are published; and a node killed
-9 mid-campaign resumes it on restart without placing any attempt twice.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config
from tests.integration.peers import Sipp

pytestmark = pytest.mark.integration

ANSWERED = [f"+1555000{n:02d}0" for n in range(6)]  # last digit 0: answered
BUSY = ["+155500091", "+155500081"]  # 1: busy
SILENT = ["+155500072"]  # 2: rings, never answered


def campaign_config(tmp_path: Path, uas: Sipp) -> dict[str, Any]:
    trunk = {"id": "loopback", "proxy": f"sip:{uas.uri_host}", "allowed_destinations": ["+1555"],
             "max_concurrent_calls": 10}  # fmt: skip
    return base_config(tmp_path, trunks=[trunk])


def spec(numbers: list[str], **overrides: Any) -> dict[str, Any]:
    return {
        "name": "november renewals",
        "agent": "echo",
        "trunks": ["loopback"],
        "contacts": [{"to": n, "variables": {"lead": f"L{i}"}} for i, n in enumerate(numbers)],
        "pacing": {"max_concurrent": 3, "calls_per_second": 4},
        "retries": {"max_attempts": 2, "retry_delay": 0.5, "retry_on": ["busy", "no_answer"]},
        "ring_timeout": 2,
        **overrides,
    }


def rows(db: Path, query: str, *args: Any) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(query, args).fetchall()


def most_in_one_second(times: list[float]) -> int:
    return max((sum(1 for t in times if s <= t < s + 1.0) for s in times), default=0)


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    level = peak = 0
    for _, step in edges:  # an end before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_campaign_dials_its_contacts_paced_retries_and_completes(tmp_path: Path) -> None:
    uas = Sipp("uas_campaign_mix.xml", calls=None, duration_ms=1000, workdir=tmp_path / "uas")
    with uas.start(), NodeProcess(tmp_path, campaign_config(tmp_path, uas)) as node, \
            MqttWatch(node.mqtt_port) as mq:  # fmt: skip
        created = mq.command("campaign.create", spec(ANSWERED + BUSY + SILENT))
        campaign = created["data"]
        assert campaign["status"] == "draft" and campaign["contacts_total"] == 9
        cid = campaign["id"]
        launched = mq.command("campaign.launch", {"campaign_id": cid})
        assert launched["data"]["status"] == "running"
        again = mq.command("campaign.launch", {"campaign_id": cid})
        assert again["error"]["code"] == "conflict"
        mq.wait_campaign_event(cid, "campaign.started")
        done = mq.wait_campaign_event(cid, "campaign.completed", timeout=90)
        assert done["data"]["reason"] == "all contacts done"

        stats = mq.command("campaign.stats", {"campaign_id": cid})["data"]
        assert stats["status"] == "completed"
        assert stats["contacts"] == {"total": 9, "pending": 0, "in_progress": 0, "done": 9}
        calls = stats["calls"]
        assert (calls["answered"], calls["busy"], calls["no_answer"]) == (6, 4, 2), calls
        assert calls["attempted"] == 12 and calls["failed"] == 0
        assert stats["answer_rate"] == 0.5 and stats["average_duration"] > 0.5

        reply = mq.command("campaign.contacts", {"campaign_id": cid, "per_page": 100})
        contacts = reply["data"]["items"]
        assert reply["data"]["meta"]["total"] == 9
        result = {c["to"]: (c["result"], c["attempts"]) for c in contacts}
        assert {result[n] for n in ANSWERED} == {("answered", 1)}
        assert {result[n] for n in BUSY} == {("busy", 2)}
        assert {result[n] for n in SILENT} == {("no_answer", 2)}

        db = Path(node.config["storage"]["path"])
        attempts = rows(db, "SELECT * FROM campaign_attempts WHERE campaign_id=?", cid)
        assert most_in_one_second([ts(a["started_at"]) for a in attempts]) <= 4
        records = rows(db, "SELECT * FROM calls WHERE id IN (SELECT call_id FROM "
                           "campaign_attempts WHERE campaign_id=?)", cid)  # fmt: skip
        assert len(records) == 12
        assert most_at_once([(ts(r["created_at"]), ts(r["ended_at"])) for r in records]) <= 3
        for record in records:  # normal calls, carrying the campaign and the contact
            variables = json.loads(record["variables"])
            assert variables["campaign_id"] == cid and variables["lead"].startswith("L")
        placed = mq.wait_event("call.placed", records[0]["id"])
        assert placed["data"]["variables"]["campaign_id"] == cid
        assert node.stop() == 0
    # every INVITE the callee saw is one attempt: none was placed twice
    assert uas.stop().stats.get("TotalCallCreated") == "12"


def test_a_campaign_killed_mid_way_resumes_without_dialling_an_attempt_twice(
    tmp_path: Path,
) -> None:
    numbers = [f"+1555001{n:02d}0" for n in range(10)]
    uas = Sipp("uas_campaign_mix.xml", calls=None, duration_ms=3000, workdir=tmp_path / "uas")
    config = campaign_config(tmp_path, uas)
    with uas.start():
        node = NodeProcess(tmp_path, config).start()
        with MqttWatch(node.mqtt_port) as mq:
            body = spec(numbers, pacing={"max_concurrent": 2, "calls_per_second": 5},
                        retries={"max_attempts": 2, "retry_delay": 0.2,
                                 "retry_on": ["failed"]})  # fmt: skip
            cid = mq.command("campaign.create", body)["data"]["id"]
            mq.command("campaign.launch", {"campaign_id": cid})
            mq.wait(lambda: sum(e["type"] == "call.answered" for e in mq.events()) >= 2,
                    what="two campaign calls up")  # fmt: skip
        node.kill()  # kill -9 the node with calls up

        node = NodeProcess(tmp_path, config).start()
        with MqttWatch(node.mqtt_port) as mq:
            mq.wait_campaign_event(cid, "campaign.completed", timeout=120)
            stats = mq.command("campaign.stats", {"campaign_id": cid})["data"]
            assert stats["contacts"]["done"] == 10
            db = Path(config["storage"]["path"])
            attempts = rows(db, "SELECT * FROM campaign_attempts WHERE campaign_id=?", cid)
            keys = [(a["contact_id"], a["attempt"]) for a in attempts]
            assert len(keys) == len(set(keys))  # one row per attempt (its primary key too)
            outcomes = [a["outcome"] for a in attempts]
            assert None not in outcomes
            cut = rows(db, "SELECT id FROM calls WHERE end_reason='node_restart'")
            assert len(cut) >= 2  # the kill did cut calls up
            # the calls cut by the kill ended as node_restart (failed or answered), the rest
            # answered; each contact was answered once at most
            answered = [a for a in attempts if a["outcome"] == "answered"]
            assert len({a["contact_id"] for a in answered}) == len(answered)
            assert node.stop() == 0
    dialled = int(uas.stop().stats.get("TotalCallCreated", "0"))
    not_dialled = sum(1 for a in attempts if a["outcome"] == "not_dialed")
    assert dialled == len(attempts) - not_dialled  # no attempt reached the callee twice
