"""The ledger: each worker event, carried as the worker sends it (the IPC codec joined in
memory, no processes), becomes the call's record and its public events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.calls import events as ev
from gateway.metrics import NodeMetrics
from gateway.node.ledger import Ledger
from gateway.store.sqlite import Store
from gateway.worker.ipc import decode, encode, event_from, event_message

T0 = 1_700_000_000.0
C1, C2, UP, RINGING = (f"call_{d * 24}" for d in "12ab")


class Pair:
    """The supervisor's end of a worker, joined in memory: each event crosses the real
    framing (encode -> decode -> event_from) before the ledger and metrics see it."""

    def __init__(self, store: Store) -> None:
        self.ledger = Ledger(store, "node-t")
        self.metrics = NodeMetrics()

    def send(self, event: ev.WorkerEvent, ts: float) -> None:
        frame = encode(event_message(event, ts))
        received, at = event_from(decode(frame[4:]))
        self.ledger.record(received, at)
        self.metrics.observe(received)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "ledger.db"))
    yield s
    s.close()


def offered(call_id: str = C1) -> ev.CallOffered:
    return ev.CallOffered(call_id=call_id, from_number="+15550001", to_number="+15550100",
                          trunk="carrier", agent="bot", variables={"q": "sales"},
                          sip_call_id="abc@host")  # fmt: skip


def test_an_answered_inbound_call_is_recorded_with_its_real_end(store: Store) -> None:
    pair = Pair(store)
    pair.send(offered(), T0)
    assert pair.ledger.active == {C1}
    pair.send(ev.AgentLinkUp(call_id=C1, agent="bot", transport="twilio-ws"), T0 + 0.1)
    pair.send(ev.Answered(call_id=C1, codec="PCMU/8000", answered_at=T0 + 0.2), T0 + 0.2)
    pair.send(ev.SpeechBegan(call_id=C1, party="caller", offset_ms=300), T0 + 0.5)
    pair.send(ev.SpeechEnded(call_id=C1, party="caller", offset_ms=900, duration_ms=600),
              T0 + 1.1)  # fmt: skip
    pair.send(ev.Completed(call_id=C1, duration=4.2, reason="normal", sip_code=200,
                           hangup_by="caller"), T0 + 4.4)  # fmt: skip
    call = store.get_call(C1)
    assert call is not None
    assert (call.status, call.direction, call.route, call.codec) == (
        "completed", "inbound", "+15550100", "PCMU/8000",
    )  # fmt: skip
    assert (call.duration, call.billable_seconds, call.end_reason, call.hangup_by) == (
        4.2, 5, "normal", "caller",
    )  # fmt: skip
    assert call.sip_call_id == "abc@host" and call.variables == {"q": "sales"}
    types = [e.type for e in store.call_events(C1)]
    assert types == ["call.incoming", "call.agent.connected", "call.answered",
                     "call.speech.started", "call.speech.stopped", "call.completed"]  # fmt: skip
    assert "codec" not in store.call_events(C1)[1].data  # WebSocket links have none
    assert pair.ledger.active == set()
    assert pair.metrics.calls == {("inbound", "completed"): 1}


def test_ringing_is_said_once_and_again_only_when_early_media_starts(store: Store) -> None:
    pair = Pair(store)
    pair.send(ev.CallDialed(call_id=C2, from_number="+1555", to_number="+4420",
                            trunk="carrier", agent="bot"), T0)  # fmt: skip
    for event in (ev.Ringing(call_id=C2, sip_code=180), ev.Ringing(call_id=C2),
                  ev.EarlyMedia(call_id=C2), ev.EarlyMedia(call_id=C2)):  # fmt: skip
        pair.send(event, T0 + 1)
    pair.send(ev.Failed(call_id=C2, reason="busy", sip_code=486, hangup_by="callee"), T0 + 2)
    ringing = [e.data for e in store.call_events(C2) if e.type == "call.ringing"]
    assert ringing == [{"early_media": False}, {"early_media": True}]
    call = store.get_call(C2)
    assert call is not None and (call.status, call.end_reason, call.sip_code) == (
        "failed", "busy", 486,
    )  # fmt: skip
    assert pair.metrics.calls == {("outbound", "busy"): 1}


def test_a_bad_event_is_skipped_and_the_next_one_recorded(store: Store) -> None:
    pair = Pair(store)
    pair.send(offered(), T0)
    pair.send(ev.DtmfReceived(call_id=C1, digit="not-a-digit"), T0 + 1)  # fails validation
    pair.send(ev.DtmfReceived(call_id=C1, digit="5", duration_ms=120), T0 + 2)
    dtmf = [e.data for e in store.call_events(C1) if e.type == "call.dtmf"]
    assert dtmf == [{"digit": "5", "method": "rfc4733", "duration_ms": 120}]


def test_trunk_state_is_kept_for_health_and_evented_when_it_changes(store: Store) -> None:
    pair = Pair(store)
    pair.send(ev.TrunkStateChanged(trunk="carrier", registers=True, state="registering"), T0)
    pair.send(ev.TrunkStateChanged(trunk="carrier", registers=True, state="registered",
                                   sip_code=200, expires=300), T0 + 1)  # fmt: skip
    assert pair.ledger.trunks["carrier"]["state"] == "registered"
    assert "call_id" not in pair.ledger.trunks["carrier"]
    [row] = store.undelivered()  # "registering" is no event of its own
    assert row.type == "trunk.registered" and json.loads(row.payload)["data"]["expires"] == 300


def test_orphans_of_a_lost_worker_end_at_the_last_moment_they_were_alive(store: Store) -> None:
    pair = Pair(store)
    pair.send(offered(UP), T0)
    pair.send(ev.Answered(call_id=UP, codec="PCMU/8000", answered_at=T0 + 1), T0 + 1)
    pair.send(offered(RINGING), T0 + 2)
    assert pair.ledger.close_orphans("worker_lost", alive_until=T0 + 10) == 2
    up, ringing = store.get_call(UP), store.get_call(RINGING)
    assert up is not None and ringing is not None
    assert (up.status, up.end_reason, up.duration, up.hangup_by) == (
        "completed", "worker_lost", 9.0, "gateway",
    )  # fmt: skip
    assert (ringing.status, ringing.end_reason) == ("failed", "worker_lost")
    assert pair.ledger.active == set()
