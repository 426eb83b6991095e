#!/usr/bin/env python3
"""Soak: a mix of legitimate and hostile traffic against one real node for --minutes.

Starts a real sipedge node on loopback (the integration tests' `base_config` with the HTTP API
on, a Twilio Media Streams echo agent from bench/media_latency.py, two SIPp UAS as the
outbound trunks' far ends) and runs, until the time is up:

  * three legitimate lanes, ~3 calls at once (a worker holds 4): two inbound lanes rotating
    SIPp calls with RTP to the streaming agent (uac_pcap), RFC 4733 DTMF (uac_dtmf), re-INVITE
    hold/resume (uac_reinvite), an agent that closes its WebSocket mid-call (uac_wait_bye: the
    node must hang up) and a caller that CANCELs while it rings (uac_cancel); one outbound
    lane placing calls over MQTT and over HTTP (the far end hangs up, uas_hangup) and calls
    that are transferred with REFER (uas_refer);
  * every --round seconds, one each of: an INVITE that is never ACKed, a batch of RFC 4475
    torture messages (tests/torture.py), a POST /v1/calls and an MQTT call.originate each
    carrying 70 KB of variables, and two INVITE floods from 127.0.0.2 (--flood-rate INVITE/s
    for --flood-seconds), one to an unknown number and one to a routed number.

Then it lets the node settle and prints: worker deaths (must be 0), legitimate calls answered
(%), calls the node still counts as active (must be 0), whether the worker still takes
calls up to its capacity, RSS growth per 100 calls (worker + supervisor), CPU of the node's
processes, and events in the store against events received on MQTT (must match).

    python bench/soak.py                 # 30 minutes
    python bench/soak.py --minutes 3 --json

Exit status: 0 when every "must" holds, 1 when one does not (the summary is printed either
way), 2 when the node could not be started. Run from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.soak_peers import DroppingEchoBot, EventWatch  # noqa: E402
from bench.soak_probe import NodeProbe  # noqa: E402
from bench.soak_report import Measured, failures, print_text, summary  # noqa: E402
from bench.soak_sip import TORTURE, Flood, never_ack, torture  # noqa: E402
from tests.integration.node import NodeProcess, base_config, trunk_to  # noqa: E402
from tests.integration.peers import HOST, Sipp, free_port  # noqa: E402

BOT, DROP, RINGS, UNKNOWN = "+15550100", "+15550101", "+15550102", "+15559999"
OUTBOUND_TO, TRANSFER_TO = "+15551230000", "+15557654321"
BIG = {"blob": "x" * 70_000}  # 70 KB of variables: more than the worker link's 64 KiB line
INBOUND = [
    ("uac_pcap.xml", BOT),
    ("uac_dtmf.xml", BOT),
    ("uac_reinvite.xml", BOT),
    ("uac_pcap.xml", BOT),
    ("uac_wait_bye.xml", DROP),
    ("uac_cancel.xml", RINGS),
]
KIND = {
    "uac_pcap.xml": "inbound",
    "uac_dtmf.xml": "dtmf",
    "uac_reinvite.xml": "reinvite",
    "uac_wait_bye.xml": "agent_drop",
    "uac_cancel.xml": "cancel",
}


class Soak:
    """One run: the peers, the node, the lanes of traffic, then the measurements."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="sipedge-soak-"))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[str, bool, str]] = []  # (kind, ok, why not)
        self.abuse: dict[str, Counter[str]] = defaultdict(Counter)
        self.ids = itertools.count(1)
        self.api_key = os.urandom(12).hex()

    # -- setup --------------------------------------------------------------------------------

    def config(self, bot: int, uas: int, refer: int) -> dict[str, Any]:
        url = f"ws://{HOST}:{bot}"
        return base_config(
            self.tmp,
            trunks=trunk_to(uas) + [{**trunk_to(refer)[0], "id": "refer"}],
            numbers=[
                {"number": BOT, "agent": "bot"},
                {"number": DROP, "agent": "bot-drop"},
                {"number": RINGS, "agent": "bot", "answer_delay_ms": 3000},
            ],
            agents=[
                {"id": "bot", "type": "twilio-ws", "url": f"{url}/echo"},
                {
                    "id": "bot-drop",
                    "type": "twilio-ws",
                    "url": f"{url}/drop",
                    "on_agent_failure": "hangup",
                },
            ],
            api={
                "enabled": True,
                "listen": HOST,
                "port": free_port("tcp"),
                "api_keys": ["${SOAK_API_KEY}"],
                "rate_limit_per_minute": 100_000,
            },
            vad={"barge_in": False},
        )

    def record(self, kind: str, ok: bool, why: str = "") -> None:
        with self.lock:
            self.results.append((kind, ok, why))

    # -- legitimate lanes ---------------------------------------------------------------------

    def sipp_call(self, scenario: str, number: str) -> None:
        workdir = self.tmp / "sipp" / f"{next(self.ids):05d}-{Path(scenario).stem}"
        sipp = Sipp(
            scenario,
            remote=(HOST, self.node.sip_port),
            service=number,
            workdir=workdir,
            extra=("-timeout", "40s"),
        )
        try:
            res = sipp.run(timeout=50)
        except TimeoutError:
            return self.record(KIND[scenario], False, "timeout")
        if res.ok:
            shutil.rmtree(workdir, ignore_errors=True)
            return self.record(KIND[scenario], True)
        codes = re.findall(r"SIP/2\.0 ([3-6]\d\d)", res.errors)
        self.record(KIND[scenario], False, codes[0] if codes else "failed")

    def paced(self, steps: Any) -> None:
        """Run each step of a lane, one starting every --pace seconds (whatever its outcome,
        so a node that refuses fast is not called faster), until the deadline."""
        for step in steps:
            start = time.monotonic()
            if self.stop.is_set() or start >= self.deadline:
                return
            step()
            self.stop.wait(max(0.3, start + self.args.pace - time.monotonic()))

    def inbound_lane(self, offset: int) -> None:
        calls = itertools.islice(itertools.cycle(INBOUND), offset, None)
        self.paced(lambda c=c: self.sipp_call(*c) for c in calls)

    def outbound_call(self, kind: str) -> None:
        trunk = "refer" if kind == "refer" else "loopback"
        body = {"to": OUTBOUND_TO, "agent": "bot", "trunk": trunk}
        try:
            if kind == "outbound_api":
                r = self.http.post("/v1/calls", json=body)
                reply = r.json() if r.status_code == 202 else {"error": {"code": r.status_code}}
            else:
                reply = self.mq.command("call.originate", body, timeout=10)
        except AssertionError:  # MqttWatch.command: no reply in time
            return self.record(kind, False, "no reply")
        except (httpx.HTTPError, ValueError) as exc:
            return self.record(kind, False, type(exc).__name__)
        if "data" not in reply:
            return self.record(kind, False, str(reply.get("error", {}).get("code")))
        call_id = reply["data"]["id"]
        end = ("call.completed", "call.failed")
        first = self.mq.first(call_id, ("call.answered", *end), 20)
        if first is None or first["type"] != "call.answered":
            return self.record(
                kind, False, first["data"].get("reason", "?") if first else "no event"
            )
        if kind == "refer":
            with contextlib.suppress(AssertionError):
                self.mq.command("call.transfer", {"call_id": call_id, "target": TRANSFER_TO}, 10)
        done = self.mq.first(call_id, end, 30)
        self.record(kind, done is not None, "" if done else "never ended")

    def outbound_lane(self) -> None:
        kinds = itertools.cycle(("outbound_mqtt", "outbound_api", "refer"))
        self.paced(lambda k=k: self.outbound_call(k) for k in kinds)

    # -- hostile traffic, once per round ------------------------------------------------------

    def oversized(self) -> None:
        body = {"to": OUTBOUND_TO, "agent": "bot", "variables": BIG}
        try:
            self.abuse["oversized_api"][
                str(self.http.post("/v1/calls", json=body).status_code)
            ] += 1
        except httpx.HTTPError as exc:
            self.abuse["oversized_api"][type(exc).__name__] += 1
        try:
            reply = self.mq.command("call.originate", body, timeout=10)
            outcome = reply["error"]["code"] if "error" in reply else "accepted"
        except AssertionError:
            outcome = "no reply"
        self.abuse["oversized_mqtt"][outcome] += 1

    def abuse_lane(self) -> None:
        flood = Flood(self.node.sip_port)
        port, args = self.node.sip_port, self.args
        batch = max(1, len(TORTURE) // 5)
        # (fraction of the round, action). The never-ACKed INVITE comes first: on a node that
        # holds such a call for 64 s its slot is free again before the floods.
        actions = [
            (0.02, lambda r: self.abuse["never_ack"].update([str(never_ack(port, BOT))])),
            (
                0.10,
                lambda r: self.abuse["torture"].update(
                    torture(port, TORTURE[(r * batch) % max(1, len(TORTURE)) :][:batch])
                ),
            ),
            (0.30, lambda r: self.oversized()),
            (0.80, lambda r: flood.burst(args.flood_rate, args.flood_seconds, UNKNOWN)),
            (0.90, lambda r: flood.burst(args.flood_rate, args.flood_seconds, BOT)),
        ]
        try:
            for r in itertools.count():
                for fraction, action in actions:
                    at = self.t0 + (r + fraction) * args.round
                    if at >= self.deadline or self.stop.wait(max(0.0, at - time.monotonic())):
                        return
                    action(r)
        finally:
            flood.close()
            self.abuse["flood"].update(flood.codes)

    # -- after the traffic --------------------------------------------------------------------

    def active_calls(self) -> int | None:
        with contextlib.suppress(httpx.HTTPError):
            m = re.search(r"^sipedge_active_calls (\d+)", self.http.get("/metrics").text, re.M)
            return int(m.group(1)) if m else None
        return None

    def settle(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (left := self.active_calls()) != 0 and time.monotonic() < deadline:
            time.sleep(0.5)  # polling the node's own counter: there is no event to await
        return left

    def capacity_probe(self) -> tuple[int, int]:
        """Capacity calls at once after the run: phantom calls in the worker would refuse some."""
        status = self.mq.retained("/status") or {}
        n = int(status.get("capacity") or status.get("engine_call_limit") or 4)
        sipp = Sipp(
            "uac_pcap.xml",
            remote=(HOST, self.node.sip_port),
            service=BOT,
            calls=n,
            rate=50,
            limit=n,
            workdir=self.tmp / "probe",
            extra=("-timeout", "40s"),
        )
        try:
            return sipp.run(timeout=50).successful, n
        except TimeoutError:  # no worker answered at all
            return 0, n

    def events_compared(self, timeout: float = 15.0) -> dict[str, int]:
        db = Path(self.node.config["storage"]["path"])
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.closing(sqlite3.connect(db)) as con:
                stored = {row[0] for row in con.execute("SELECT id FROM events")}
            with self.mq._cond:
                seen = dict(self.mq.event_ids)
            if stored <= seen.keys() or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the outbox drains on its own: poll its result
        return {
            "store": len(stored),
            "mqtt": len(seen),
            "missing_on_mqtt": len(stored - seen.keys()),
            "not_in_store": len(seen.keys() - stored),
            "duplicates_on_mqtt": sum(c - 1 for c in seen.values()),
        }

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        args = self.args
        with contextlib.ExitStack() as stack:
            bot = DroppingEchoBot()
            stack.callback(bot.close)
            uas = Sipp("uas_hangup.xml", calls=None, workdir=self.tmp / "uas").start()
            stack.callback(uas.stop)
            refer = Sipp("uas_refer.xml", calls=None, workdir=self.tmp / "refer").start()
            stack.callback(refer.stop)
            self.node = NodeProcess(
                self.tmp,
                self.config(bot.port, uas.port, refer.port),
                env={"SOAK_API_KEY": self.api_key},
                log_level="INFO",
            )
            self.node.start()
            stack.callback(self.node.stop)
            self.mq = stack.enter_context(EventWatch(self.node.mqtt_port))
            api = self.node.config["api"]
            self.http = stack.enter_context(
                httpx.Client(
                    base_url=f"http://{HOST}:{api['port']}",
                    timeout=10,
                    headers={"Authorization": f"Bearer {self.api_key}"},
                )
            )
            assert self.node.proc is not None
            probe = NodeProbe(self.node.proc.pid, self.mq.finished).start()
            stack.callback(probe.stop)
            self.t0 = time.monotonic()
            self.deadline = self.t0 + args.minutes * 60
            lanes = [threading.Thread(target=self.inbound_lane, args=(i * 3,)) for i in (0, 1)]
            lanes += [
                threading.Thread(target=self.outbound_lane),
                threading.Thread(target=self.abuse_lane),
            ]
            try:
                for lane in lanes:
                    lane.start()
                while any(lane.is_alive() for lane in lanes):
                    for lane in lanes:
                        lane.join(1)
            except KeyboardInterrupt:  # Ctrl-C: end the traffic early, still measure and report
                print("soak: interrupted, stopping the traffic", file=sys.stderr)
            finally:
                self.stop.set()
                for lane in lanes:
                    lane.join(120)  # each step is bounded (SIPp -timeout, waits with timeouts)
            wall = time.monotonic() - self.t0
            calls_left = self.settle(args.settle)
            capacity = self.capacity_probe()
            events = self.events_compared()
            probe.stop()
            log = self.node.log()
            dtmf = sum(e["type"] == "call.dtmf" for ev in self.mq.by_call.values() for e in ev)
        return summary(
            Measured(
                args.minutes,
                wall,
                self.results,
                self.abuse,
                calls_left,
                capacity,
                events,
                probe.samples,
                probe.worker_pids,
                log,
                dtmf,
                str(self.tmp),
            )
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="traffic time (default 30)")
    p.add_argument("--round", type=float, default=90.0, help="seconds per hostile round")
    p.add_argument("--pace", type=float, default=4.5, help="seconds between a lane's calls")
    p.add_argument("--flood-rate", type=int, default=300, help="INVITE/s during a flood")
    p.add_argument("--flood-seconds", type=float, default=1.0, help="length of each flood")
    p.add_argument("--settle", type=float, default=20.0, help="max wait for calls to end (s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the agent's close races stay quiet
    soak = Soak(args)
    try:
        result = soak.run()
    except RuntimeError as exc:  # the node did not start
        print(f"soak: {exc}", file=sys.stderr)
        sys.exit(2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_text(result)
    sys.exit(1 if failures(result) else 0)


if __name__ == "__main__":
    main()
