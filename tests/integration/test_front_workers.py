"""Real workers behind the node's front: what a worker makes of a request the front relays
(the caller's own source, not the front's), limits that hold for the whole node however many
workers share its calls, and a caller's BYE right behind its ACK."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.node import NodeProcess, workers_config
from tests.integration.rawsip import RawUac
from tests.integration.test_robustness import call_row

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
