"""Real workers behind the node's front: what a worker makes of a request the front relays
(the caller's own source, not the front's), limits that hold for the whole node however many
workers share its calls, and a caller's BYE right behind its ACK."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway.sip.message import SOURCE_HEADER
from tests.integration.node import NodeProcess, workers_config
from tests.integration.rawsip import RawUac
from tests.integration.test_robustness import call_row
from tests.integration.test_worker_pool import call_workers

pytestmark = pytest.mark.integration


def test_a_bye_right_behind_its_ack_ends_an_answered_call(tmp_path: Path) -> None:
    """The front relays the ACK and the BYE in parallel processes, so the BYE may reach the
    worker first: the caller had our 200 (its BYE names our tag), so the call was answered."""
    config = workers_config(tmp_path, 1, limits={"max_concurrent_calls": 4})
    db = config["storage"]["path"]
    with NodeProcess(tmp_path, config) as node, RawUac(node.sip_port) as uac:
        dialogs = []
        for _ in range(40):
            began = time.monotonic()
            dialog, final = uac.call()
            uac.bye(dialog, final)  # at once: no wait for the worker to take the ACK
            assert uac.wait_final(dialog).status == 200
            dialogs.append(dialog)
            # A caller's pace: the sockets of ended calls rejoin pjlib's free list only later.
            time.sleep(max(0.0, began + 0.1 - time.monotonic()))
        rows = [call_row(db, d.call_id) for d in dialogs]
        outcomes = {(r["status"], r["end_reason"], r["hangup_by"]) for r in rows}
        assert outcomes == {("completed", "normal", "caller")}, [dict(r) for r in rows]
        assert all(r["answered_at"] is not None for r in rows)


def two_carriers(tmp_path: Path, workers: int = 2, **overrides: Any) -> dict[str, Any]:
    """Two inbound trunks told apart by their source address alone (numbers bound to none)."""
    trunks = [
        {"id": "carrier-a", "allowed_ips": ["127.0.0.5/32"]},
        {"id": "carrier-b", "allowed_ips": ["127.0.0.6/32"]},
    ]
    return workers_config(tmp_path, workers, trunks=trunks, **overrides)


def test_each_call_through_the_front_is_on_the_trunk_of_its_own_source(tmp_path: Path) -> None:
    config = two_carriers(tmp_path)
    db = config["storage"]["path"]
    spoof = f"{SOURCE_HEADER}: 127.0.0.5:5060;transport=udp\r\n"
    with NodeProcess(tmp_path, config) as node:
        trunks = {}
        for host in ("127.0.0.5", "127.0.0.6", "127.0.0.5", "127.0.0.6"):
            with RawUac(node.sip_port, host=host) as carrier:
                dialog, final = carrier.call()
                carrier.bye(dialog, final)
                trunks[dialog.call_id] = host
        for call_id, host in trunks.items():
            row = call_row(db, call_id)
            assert row["trunk"] == {"127.0.0.5": "carrier-a", "127.0.0.6": "carrier-b"}[host]
            assert f"source={host}" in node.wait_log(f"event=call_incoming call_id={row['id']} ")
        # Carrier b naming carrier a's address: the front strips it and names b's own.
        with RawUac(node.sip_port, host="127.0.0.6") as liar:
            dialog = liar.invite(headers=spoof)
            final = liar.wait_final(dialog)
            assert final.status == 200, final.first_line
            liar.ack(dialog, final)
            liar.bye(dialog, final)
        assert call_row(db, dialog.call_id)["trunk"] == "carrier-b"
        # Straight to a worker, not by way of the front: the header counts for nothing, and
        # the sender (127.0.0.1) is no trunk's.
        with RawUac(node.worker_port(1)) as bypass:
            refused = bypass.invite(headers=spoof)
            answer = bypass.wait_final(refused)
            bypass.ack(refused, answer)
        assert answer.status == 403
        node.wait_log(f"sip_call_id={refused.call_id} source=127.0.0.1 code=403")


def test_the_nodes_limits_hold_over_all_its_workers(tmp_path: Path) -> None:
    """3 workers of 4 calls each, but the node takes 5 calls at once and carrier a 2."""
    config = two_carriers(tmp_path, 3, limits={"max_concurrent_calls": 5})
    config["trunks"][0]["max_concurrent_calls"] = 2
    with (
        NodeProcess(tmp_path, config) as node,
        RawUac(node.sip_port, host="127.0.0.5") as a,
        RawUac(node.sip_port, host="127.0.0.6") as b,
    ):
        held = [(a, *a.call()) for _ in range(2)]
        assert refused(a) == (503, "5")  # carrier a's third: its trunk is full
        held += [(b, *b.call()) for _ in range(3)]
        assert refused(b) == (503, "5")  # the node's sixth
        assert (
            len(set(call_workers(node).values())) > 1
        )  # no one worker holds them all: the limits are the node's
        uac, dialog, final = held.pop(0)  # one of carrier a's calls ends...
        uac.bye(dialog, final)
        assert uac.wait_final(dialog).status == 200
        held.append((a, *a.call()))  # ...and carrier a has room again, the node too
        assert refused(b) == (503, "5")
        for uac, dialog, final in held:
            uac.bye(dialog, final)
            assert uac.wait_final(dialog).status == 200


def refused(uac: RawUac) -> tuple[int, str]:
    """The final answer (status, Retry-After) to a new INVITE that is not taken."""
    dialog = uac.invite()
    answer = uac.wait_final(dialog)
    uac.ack(dialog, answer)
    return answer.status, answer.header("retry-after")
