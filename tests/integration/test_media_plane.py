"""The media plane process (node.media: plane): its life tied to the supervisor's, and what
a call hears of the plane dying."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.mqtt_watch import MqttWatch
from tests.integration.node import NodeProcess, base_config, workers_config
from tests.integration.peers import HOST, Sipp
from tests.integration.rawsip import RawUac
from tests.integration.test_worker_pool import answered, call_workers, ended

pytestmark = pytest.mark.integration


def plane_pids(node: NodeProcess) -> list[int]:
    return [int(p) for p in re.findall(r"event=media_plane_started pid=(\d+)", node.log())]


def wait_gone(pid: int, timeout: float) -> bool:
    """True once `pid` has exited (its pidfd becomes readable), False after `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def test_a_supervisor_killed_takes_its_media_plane_and_broker_with_it(tmp_path: Path) -> None:
    """kill -9 of the supervisor alone (as the OOM killer would): the media plane and the
    embedded broker go with it, so the node starts again on the same ports (the broker,
    in its own process group for Ctrl-C's sake, used to outlive it and hold its port)."""
    config = base_config(tmp_path)
    node = NodeProcess(tmp_path, config).start()
    brokers: list[int] = []
    try:
        (plane,) = plane_pids(node)
        brokers = [int(p) for p in re.findall(
            r"event=broker_started host=\S+ port=\d+ pid=(\d+)", node.log())]  # fmt: skip
        workers = [int(p) for p in re.findall(r"event=worker_ready worker=\d+ pid=(\d+)",
                                              node.log())]  # fmt: skip
        assert node.proc is not None and len(brokers) == 1
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait()
        assert wait_gone(plane, 10), "the media plane outlived its supervisor"
        assert wait_gone(brokers[0], 10), "the embedded broker outlived its supervisor"
        # A worker stops by itself once its supervisor's link closes (hanging up its calls).
        assert all(wait_gone(pid, 20) for pid in workers), "a worker outlived its supervisor"
    finally:
        node.kill()
        for pid in brokers:  # if the test failed: ours, by its PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    again = NodeProcess(tmp_path, config).start()  # the same MQTT and SIP ports
    assert again.stop() == 0


def test_calls_on_a_dead_plane_fail_by_the_gateway_and_the_plane_comes_back(
    tmp_path: Path,
) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        (plane,) = plane_pids(node)
        caller = Sipp("uac_wait_bye.xml", remote=(HOST, node.sip_port), service="+15550100",
                      workdir=tmp_path / "lost").start()  # fmt: skip
        answered = mq.wait_event("call.answered")
        os.kill(plane, signal.SIGKILL)
        done = mq.wait_event("call.completed", answered["call_id"])
        assert done["data"]["reason"] == "failed" and done["data"]["hangup_by"] == "gateway"
        assert caller.wait(20).successful == 1  # the caller got our BYE, not silence
        node.wait_log("event=media_plane_started", count=2)
        again = Sipp("uac_pcap.xml", remote=(HOST, node.sip_port), service="+15550100",
                     workdir=tmp_path / "again").run(30)  # fmt: skip
        assert again.successful == 1, again.errors
        assert "event=media_plane_died" in node.log()


def test_two_planes_each_carry_their_workers_calls_and_one_dying_ends_only_its_own(
    tmp_path: Path,
) -> None:
    """node.media_planes: 2 with 2 workers: worker 1's calls on plane 1, worker 2's on plane
    2; kill -9 of plane 2 ends worker 2's calls (failed, by the gateway) while worker 1's
    go on to their callers' BYE, and plane 2 is started again."""
    config = workers_config(tmp_path, 2, node={"media_planes": 2},
                            limits={"max_concurrent_calls": 8})  # fmt: skip
    with NodeProcess(tmp_path, config) as node, MqttWatch(node.mqtt_port) as mq:
        started = dict(re.findall(r"event=media_plane_started pid=(\d+) plane=(\d+)", node.log()))
        planes = {int(index): int(pid) for pid, index in started.items()}
        assert sorted(planes) == [1, 2]
        # 3 s of RTP and 3 s more each, two calls on each worker (the front balances load)
        calls = Sipp("uac_pcap.xml", remote=(HOST, node.sip_port), service="+15550100",
                     calls=4, rate=10, limit=4, duration_ms=3000,
                     workdir=tmp_path / "callers").start()  # fmt: skip
        held = answered(mq, 4)
        owners = call_workers(node)
        assert Counter(owners[c] for c in held) == {1: 2, 2: 2}
        for call_id in held:  # each call's media and agent session on its worker's plane
            node.wait_log(f"plane={owners[call_id]} event=call_opened call_id={call_id}")
        os.kill(planes[2], signal.SIGKILL)
        for call_id in held:
            done = ended(mq, call_id)["data"]
            if owners[call_id] == 2:
                assert (done["reason"], done["hangup_by"]) == ("failed", "gateway")
            else:
                assert (done["reason"], done["hangup_by"]) == ("normal", "caller"), done
        result = calls.wait(30)
        assert (result.successful, result.failed) == (2, 2), result.errors
        node.wait_log("event=media_plane_started", count=3)
        assert "event=media_plane_died plane=2" in node.log()
        assert "event=media_plane_died plane=1" not in node.log()


def test_a_call_ends_with_its_quality_from_the_rtp_the_plane_received(tmp_path: Path) -> None:
    with NodeProcess(tmp_path, base_config(tmp_path)) as node, MqttWatch(node.mqtt_port) as mq:
        result = Sipp("uac_pcap.xml", remote=(HOST, node.sip_port), service="+15550100",
                      workdir=tmp_path / "caller").run(30)  # fmt: skip
        assert result.ok, result.errors
        done = mq.wait_event("call.completed")
        quality = mq.wait_event("call.quality", done["call_id"], final=True)["data"]
        # the pcap is 3.0 s: 150 packets, sent on loopback without loss
        assert 140 <= quality["packets_received"] <= 151, quality
        assert (quality["packets_lost"], quality["packet_loss_pct"]) == (0, 0.0)
        assert quality["jitter_ms"] < 20 and quality["mos"] > 4.0
        assert quality["rtt_ms"] is None  # the plane sends no RTCP to measure it with
        types = [e["type"] for e in mq.events(done["call_id"])]
        assert types.index("call.quality") < types.index("call.completed")
        assert node.stop() == 0


def test_a_worker_answers_its_254th_call_and_beyond(tmp_path: Path) -> None:
    """pjsua adds each call's (unused) stream to its conference bridge, which removes a port
    only on a clock tick; with no clock in plane mode every ended call kept its port, and a
    worker's 254th call (the bridge's size, PJSUA_MAX_CONF_PORTS) was answered 488 "Unable
    to create media session", as was every call after it."""
    config = base_config(tmp_path, limits={"invites_per_second_per_source": 1000,
                                           "invite_burst_per_source": 1000})  # fmt: skip
    with NodeProcess(tmp_path, config) as node, RawUac(node.sip_port) as uac:
        finals: Counter[int] = Counter()
        started = time.monotonic()
        while finals[200] < 270 and sum(finals.values()) < 400:
            # 25 calls/s: a closed call's sockets rejoin pjlib's free list 0.5 s later, and
            # faster churn is answered 503 by the worker's socket gate (test_robustness).
            time.sleep(max(0.0, started + sum(finals.values()) / 25 - time.monotonic()))
            finals[uac.short_call(wait_bye=True)] += 1  # one call at a time
        assert finals == Counter({200: 270}), finals
