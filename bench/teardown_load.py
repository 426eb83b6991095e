#!/usr/bin/env python3
"""Call teardown under load: do SIP workers survive many short calls ending together?

Starts `--nodes` real sipedge nodes side by side on loopback (one SIP worker each, the
integration tests' `base_config`: echo agent on +15550100, embedded mosquitto, each node its
own RTP range), and one SIPp per node running `sipp_scenarios/uac_pcap.xml` (INVITE, 3.0 s
of PCMU, `--hold-ms` more, BYE) at `--rate` calls/s, `--limit` in flight, `--calls` in total.
A worker holds 4 calls and answers 503 beyond: with the default limit of 6, calls end while
new ones start and the rest are refused, the churn that used to crash workers at teardown.

It prints, per node and in total, from each node's log (tests/integration/faults.py):
  * worker deaths (non-zero exits: a signal is negative) and worker starts (PIDs);
  * interpreter errors: 'Fatal Python error', 'Traceback', 'Immortal interned string died',
    'Exception ignored in' (the worker enables faulthandler, so a crash leaves its stacks);
  * calls answered, calls that began and never ended (a call lost by the engine), and SIPp's
    successes, 503s and other failures.
Deaths, errors and unended calls must all be 0. `--json` prints one JSON object instead.

    python bench/teardown_load.py                                # 3 nodes x 300 calls, 30/s
    python bench/teardown_load.py --nodes 3 --calls 900 --rate 30
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.faults import worker_faults  # noqa: E402
from tests.integration.node import NodeProcess, base_config  # noqa: E402
from tests.integration.peers import HOST, Sipp, SippResult  # noqa: E402

NUMBER = "+15550100"


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="sipedge-teardown-"))
    nodes: list[NodeProcess] = []
    for i in range(args.nodes):
        tmp = root / f"node{i}"
        tmp.mkdir()
        config = base_config(tmp, limits={"max_concurrent_calls": 10})
        start = 33000 + i * 200
        config["sip"]["rtp_ports"] = {"start": start, "end": start + 199}
        nodes.append(NodeProcess(tmp, config, log_level="INFO"))
    results: list[SippResult | None] = [None] * args.nodes
    t0 = time.monotonic()
    try:
        for node in nodes:
            node.start()

        def drive(i: int) -> None:
            results[i] = Sipp(
                "uac_pcap.xml",
                remote=(HOST, nodes[i].sip_port),
                service=NUMBER,
                calls=args.calls,
                rate=args.rate,
                limit=args.limit,
                duration_ms=args.hold_ms,
                workdir=nodes[i].tmp / "sipp",
            ).run(timeout=args.calls * (3.5 + args.hold_ms / 1000) + 600)

        threads = [threading.Thread(target=drive, args=(i,)) for i in range(args.nodes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        time.sleep(1.5)  # the last BYEs and log lines land
    finally:
        for node in nodes:
            node.stop()
    per_node = []
    for node, res in zip(nodes, results, strict=True):
        assert res is not None
        faults = worker_faults(node.log())
        got_503 = res.errors.count("SIP/2.0 503")
        per_node.append(
            {
                "worker_deaths": faults.deaths,
                "worker_pids": faults.worker_pids,
                "interpreter_errors": faults.interpreter_errors,
                "answered": faults.answered_calls,
                "unended_calls": len(faults.unended_calls),
                "sipp_successful": res.successful,
                "sipp_503": got_503,
                "sipp_other_failures": res.failed - got_503,
                "other_failure_codes": sorted(
                    set(re.findall(r"SIP/2\.0 (\d{3})", res.errors)) - {"503"}
                ),
                "log": str(node.log_path),
                "faults": asdict(faults),
            }
        )
    total = {
        key: sum(n[key] for n in per_node)
        for key in (
            "worker_deaths",
            "answered",
            "unended_calls",
            "sipp_successful",
            "sipp_503",
            "sipp_other_failures",
        )
    }
    total["interpreter_errors"] = sum(sum(n["interpreter_errors"].values()) for n in per_node)
    total["worker_restarts"] = sum(len(n["worker_pids"]) - 1 for n in per_node)
    return {
        "nodes": args.nodes,
        "calls_per_node": args.calls,
        "rate": args.rate,
        "limit": args.limit,
        "hold_ms": args.hold_ms,
        "wall_s": round(wall, 1),
        "total": total,
        "per_node": per_node,
        "artifacts": str(root),
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"sipedge teardown load: {r['nodes']} nodes x {r['calls_per_node']} calls, "
        f"rate {r['rate']}/s, {r['limit']} in flight, hold {r['hold_ms']} ms "
        f"(uac_pcap.xml: 3.0 s RTP + hold); wall {r['wall_s']} s"
    )
    for i, n in enumerate(r["per_node"]):
        errors = ", ".join(f"{k!r} x{v}" for k, v in n["interpreter_errors"].items()) or "none"
        print(
            f"  node {i}: worker deaths {n['worker_deaths']} (pids {n['worker_pids']}), "
            f"interpreter errors {errors}; answered {n['answered']}, unended "
            f"{n['unended_calls']}; SIPp ok {n['sipp_successful']}, 503 {n['sipp_503']}, "
            f"other failures {n['sipp_other_failures']} {n['other_failure_codes'] or ''}"
        )
    t = r["total"]
    print(
        f"total: worker deaths {t['worker_deaths']}, worker restarts {t['worker_restarts']}, "
        f"interpreter errors {t['interpreter_errors']}, unended calls {t['unended_calls']} "
        f"(all must be 0); answered {t['answered']}, SIPp ok {t['sipp_successful']}, "
        f"503 {t['sipp_503']}, other failures {t['sipp_other_failures']}"
    )
    print(f"artifacts: {r['artifacts']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3, help="nodes (one SIP worker each)")
    p.add_argument("--calls", type=int, default=300, help="SIPp calls per node (-m)")
    p.add_argument("--rate", type=float, default=30.0, help="calls per second per node (-r)")
    p.add_argument("--limit", type=int, default=6, help="calls in flight per node (-l)")
    p.add_argument("--hold-ms", type=int, default=0, help="extra hold after the 3 s pcap (-d)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    if args.nodes < 1 or args.nodes > 10:
        p.error(f"--nodes must be 1..10 (each node takes 200 RTP ports), got {args.nodes}")
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    bad = result["total"]
    sys.exit(1 if bad["worker_deaths"] or bad["interpreter_errors"] or bad["unended_calls"] else 0)


if __name__ == "__main__":
    main()
