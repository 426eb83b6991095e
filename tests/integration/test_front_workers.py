"""The embedded front in front of three real workers, every call through the front: the
node's 12 slots all usable and the 13th call refused by the front, every kind of in-dialog
request reaching the worker that owns the dialog, a flood from one source while another's
calls are answered, and a worker killed with -9 ending only its own calls.

The tests share one node (starting three workers and a front costs seconds); each leaves it
with no call up. The flood runs last: the calls it got answered and never ACKed hold their
slots for 32 s (pjsip's wait for the ACK), which the front counts."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, trunk_to, workers_config
from tests.integration.peers import HOST, Sipp, free_port
from tests.integration.rawsip import RawUac
from tests.integration.test_front import blast, worker_saw
from tests.integration.test_worker_pool import answered, call_workers, ended, worker_pids

pytestmark = pytest.mark.integration

# One echo number per scenario, so a test tells its calls apart by the number dialled.
PCAP, REINVITE, INFO, WAIT_BYE = "+15550100", "+15550102", "+15550103", "+15550104"
FLOODER = "127.0.0.7"  # the legitimate callers are SIPp on 127.0.0.1
KEY = "sk-front-3b9d"


@dataclass
class Stand:
    node: NodeProcess
    api: httpx.Client
    uas: Sipp  # the far end of the trunk (uas_refer.xml: accepts a REFER, sends NOTIFY)
    tmp: Path
    callers: list[Sipp] = field(default_factory=list)  # this test's, stopped when it ends

    @property
    def port(self) -> int:
        return self.node.sip_port

    def sipp(self, scenario: str, number: str, name: str, **options: Any) -> Sipp:
        """SIPp calling `number` through the front (not started yet)."""
        caller = Sipp(scenario, remote=(HOST, self.port), service=number,
                      workdir=self.tmp / name, **options)  # fmt: skip
        self.callers.append(caller)
        return caller

    def active_calls(self) -> list[int]:
        return [w["active_calls"] for w in self.api.get("/health").json()["workers"]]


@pytest.fixture(scope="module")
def stand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stand]:
    tmp = tmp_path_factory.mktemp("front-workers")
    api_port = free_port("tcp")
    with contextlib.ExitStack() as stack:
        uas = stack.enter_context(Sipp("uas_refer.xml", calls=None, workdir=tmp / "uas"))
        config = workers_config(
            tmp, 3,
            trunks=trunk_to(uas.port, max_concurrent_calls=12),
            numbers=[{"number": n, "agent": "echo"} for n in (PCAP, REINVITE, INFO, WAIT_BYE)],
            api={"enabled": True, "listen": HOST, "port": api_port, "api_keys": ["${API_KEY}"]},
            limits={"max_concurrent_calls": 12, "ring_timeout": 30},
        )  # fmt: skip
        node = stack.enter_context(NodeProcess(tmp, config, env={"API_KEY": KEY}))
        api = stack.enter_context(httpx.Client(
            base_url=f"http://{HOST}:{api_port}", headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        ))  # fmt: skip
        yield Stand(node, api, uas, tmp)


@pytest.fixture
def mq(stand: Stand) -> Iterator[MqttWatch]:
    """The node's events, from now; the test ends with its callers stopped and no call up on
    any worker."""
    with MqttWatch(stand.node.mqtt_port) as watch:
        yield watch
        for caller in stand.callers:
            caller.stop()
        stand.callers.clear()
        watch.wait(lambda: stand.active_calls() == [0, 0, 0], timeout=20, what="no call up")


def incoming(mq: MqttWatch, number: str) -> list[str]:
    """Call ids of the calls to `number` seen so far."""
    return [e["call_id"] for e in mq.events()
            if e["type"] == "call.incoming" and e["data"]["to"] == number]  # fmt: skip


def test_every_slot_takes_a_call_with_rtp_and_the_13th_gets_503_from_the_front(
    stand: Stand, mq: MqttWatch
) -> None:
    # 12 calls, 3 s of RTP each and 2.5 s more: all up at once, 4 on each worker.
    calls = stand.sipp("uac_pcap.xml", PCAP, "twelve", calls=12, rate=10, limit=12,
                       duration_ms=2500).start()  # fmt: skip
    held = answered(mq, 12)
    assert Counter(call_workers(stand.node)[c] for c in held) == {1: 4, 2: 4, 3: 4}
    assert stand.active_calls() == [4, 4, 4]
    with RawUac(stand.port) as uac:
        late = uac.invite()
        refused = uac.wait_final(late)
        uac.ack(late, refused)
    assert (refused.status, refused.header("retry-after")) == (503, "5")
    stand.node.wait_log(f"event=front_refused sip_call_id={late.call_id} source={HOST} "
                        "code=503 reason=workers_full")  # fmt: skip
    assert not worker_saw(stand.node, late.call_id)  # the front knew every worker was full
    result = calls.wait(30)
    assert (result.successful, result.failed) == (12, 0), result.errors
    for call_id in held:
        done = ended(mq, call_id)["data"]
        assert (done["reason"], done["hangup_by"]) == ("normal", "caller")


def test_in_dialog_requests_through_the_front_reach_the_worker_that_owns_the_dialog(
    stand: Stand, mq: MqttWatch
) -> None:
    """re-INVITE hold and resume, INFO DTMF and the caller's BYE come in from SIPp, which
    sends everything to the front (the Route set says which worker); the gateway's BYE and
    REFER go out, and the NOTIFY comes back, through it too."""
    callers = {
        "reinvite": stand.sipp("uac_reinvite.xml", REINVITE, "reinvite").start(),
        "info": stand.sipp("uac_dtmf_info.xml", INFO, "info").start(),
        "wait_bye": stand.sipp("uac_wait_bye.xml", WAIT_BYE, "wait-bye").start(),
    }
    placed = stand.api.post("/v1/calls", json={"to": "+15551230000", "agent": "echo"})
    assert placed.status_code == 202, placed.text
    outbound = placed.json()["data"]["id"]
    mq.wait_event("call.answered", outbound)
    waiting = mq.wait(lambda: incoming(mq, WAIT_BYE), what="the call waiting for our BYE")[0]
    mq.wait_event("call.answered", waiting)

    transfer = stand.api.post(f"/v1/calls/{outbound}/transfer", json={"target": "+15557654321"})
    assert transfer.status_code == 202, transfer.text
    hangup = stand.api.post(f"/v1/calls/{waiting}/hangup")
    assert hangup.status_code == 202, hangup.text

    for name, caller in callers.items():
        result = caller.wait(30)
        assert (result.successful, result.failed) == (1, 0), (name, result.errors)
    mq.wait_event("call.transfer", outbound, status="completed", sip_code=200)
    assert ended(mq, outbound)["data"]["reason"] == "transferred"
    assert ended(mq, waiting)["data"]["hangup_by"] == "control_plane"
    for number in (REINVITE, INFO):
        [call_id] = incoming(mq, number)
        done = ended(mq, call_id)["data"]
        assert (done["reason"], done["hangup_by"]) == ("normal", "caller")
    [info] = incoming(mq, INFO)
    digits = [e["data"] for e in mq.events(info) if e["type"] == "call.dtmf"]
    assert ["".join(d["digit"] for d in digits), {d["method"] for d in digits}] == [
        "5*9", {"sip_info"},
    ]  # fmt: skip


def test_a_killed_worker_ends_only_its_calls_and_the_front_keeps_answering(
    stand: Stand, mq: MqttWatch
) -> None:
    # Six calls of 3 s of RTP and 2 s more, two on each worker; then worker 2 is killed.
    calls = stand.sipp("uac_pcap.xml", PCAP, "six", calls=6, rate=10, limit=6,
                       duration_ms=2000).start()  # fmt: skip
    held = answered(mq, 6)
    owners = call_workers(stand.node)
    assert Counter(owners[c] for c in held) == {1: 2, 2: 2, 3: 2}
    pids = worker_pids(stand.node)
    os.kill(pids[2], signal.SIGKILL)
    stand.node.wait_log("event=worker_died worker=2 calls_closed=2")

    later = stand.sipp("uac_pcap.xml", PCAP, "later", calls=3, rate=10, limit=3).run(30)
    assert (later.successful, later.failed) == (3, 0), later.errors
    result = calls.wait(30)
    # The killed worker's callers' BYEs find no dialog: 481 from the worker restarted there.
    assert (result.successful, result.failed) == (4, 2), result.errors
    for call_id in held:
        done = ended(mq, call_id)["data"]
        if owners[call_id] == 2:
            assert (done["reason"], done["hangup_by"]) == ("worker_lost", "gateway")
        else:
            assert (done["reason"], done["hangup_by"]) == ("normal", "caller")
    stand.node.wait_log("event=worker_ready worker=2", count=2)  # the node restarted it
    again = worker_pids(stand.node)
    assert (again[1], again[3]) == (pids[1], pids[3]) and again[2] != pids[2]


@pytest.mark.slow
def test_a_flood_from_one_source_leaves_the_workers_up_and_anothers_calls_answered(
    stand: Stand, mq: MqttWatch
) -> None:
    pids = worker_pids(stand.node)
    died = stand.node.log().count("event=worker_died")
    flood: dict[str, tuple[int, Counter[int]]] = {}
    flooding = threading.Thread(
        target=lambda: flood.update(result=blast(FLOODER, stand.port, 300, 20.0))
    )
    flooding.start()
    # Calls of 3.2 s at 1.5/s: about 5 up at once, beside the 4 or 5 the flood had answered
    # (limits.max_unconfirmed_per_source) before pike dropped it, which hold their worker's
    # slot until pjsip gives up on their ACK (32 s, whatever limits.ack_timeout says).
    legit = stand.sipp("uac_pcap.xml", PCAP, "legit", calls=30, rate=1.5, limit=12).start()
    result = legit.wait(60)
    flooding.join()
    sent, finals = flood["result"]
    assert sent >= 5000
    assert sum(finals.values()) < sent / 4, finals  # most of the flood was dropped unanswered
    assert result.successful + result.failed == 30
    assert result.successful >= 0.99 * 30, result.errors
    assert worker_pids(stand.node) == pids
    assert stand.node.log().count("event=worker_died") == died
