from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.events.schema import (
    CallAnswered,
    CallDtmf,
    CallIncoming,
    CallRinging,
    Event,
    TrunkRegistered,
    new_call_id,
)
from gateway.store.sqlite import CallNotFound, Store, StoredCall, StoreError

NODE = "node-a"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "sipedge.db"))


def incoming(store: Store, **record: object) -> str:
    call_id = new_call_id()
    rec = StoredCall(id=call_id, direction="inbound", status="incoming",  # type: ignore[arg-type]
                     from_number="+15550001", to_number="+15550002", **record)  # fmt: skip
    store.create_call(rec, Event.of(CallIncoming(from_="+15550001", to="+15550002"),
                                    node=NODE, call_id=call_id))  # fmt: skip
    return call_id


def ringing(call_id: str) -> Event:
    return Event.of(CallRinging(), node=NODE, call_id=call_id)


def test_create_call_writes_record_and_first_event_with_seq_1(store: Store) -> None:
    call_id = incoming(store, variables={"lang": "de"})
    record = store.get_call(call_id)
    assert record is not None
    assert (record.status, record.variables) == ("incoming", {"lang": "de"})
    [event] = store.call_events(call_id)
    assert (event.type, event.seq) == ("call.incoming", 1)
    assert store.backlog() == 1


def test_seq_is_monotonic_per_call_and_independent_across_calls(store: Store) -> None:
    a, b = incoming(store), incoming(store)
    store.update_call(a, {"status": "ringing"}, ringing(a))
    stored = store.update_call(
        a,
        {"status": "answered", "answered_at": datetime.now(UTC), "codec": "PCMU"},
        [Event.of(CallAnswered(codec="PCMU", answered_at=datetime.now(UTC)), node=NODE,
                  call_id=a),
         Event.of(CallDtmf(digit="5"), node=NODE, call_id=a)],
    )  # fmt: skip
    store.add_event(Event.of(CallDtmf(digit="1"), node=NODE, call_id=b))
    assert [e.seq for e in stored] == [3, 4]
    assert [e.seq for e in store.call_events(a)] == [1, 2, 3, 4]
    assert [e.seq for e in store.call_events(b)] == [1, 2]
    assert store.get_call(a).codec == "PCMU"  # type: ignore[union-attr]


def test_update_of_unknown_call_writes_nothing(store: Store) -> None:
    ghost = new_call_id()
    with pytest.raises(CallNotFound):
        store.update_call(ghost, {"status": "ringing"}, ringing(ghost))
    assert store.backlog() == 0


def test_record_change_is_rolled_back_when_its_event_is_refused(store: Store) -> None:
    call_id = incoming(store)
    other = new_call_id()
    with pytest.raises(StoreError):
        store.update_call(call_id, {"status": "ringing"}, ringing(other))
    assert store.get_call(call_id).status == "incoming"  # type: ignore[union-attr]
    assert [e.type for e in store.call_events(call_id)] == ["call.incoming"]


def test_unknown_columns_and_duplicate_event_ids_are_refused(store: Store) -> None:
    call_id = incoming(store)
    with pytest.raises(StoreError, match="nonsense"):
        store.update_call(call_id, {"nonsense": 1})
    with pytest.raises(StoreError):
        store.update_call(call_id, {"id": "call_other"})
    event = ringing(call_id)
    store.add_event(event)
    with pytest.raises(StoreError, match="already stored"):
        store.add_event(event)


def test_outbox_is_read_in_rowid_order_and_drains_when_marked(store: Store) -> None:
    a, b = incoming(store), incoming(store)
    store.add_event([ringing(b), ringing(a)])
    store.add_event(Event.of(TrunkRegistered(trunk="t1", state="registered", expires=300),
                             node=NODE))  # fmt: skip
    rows = store.undelivered(limit=10)
    assert [(r.call_id, r.seq) for r in rows] == [(a, 1), (b, 1), (b, 2), (a, 2), (None, 1)]
    assert rows == sorted(rows, key=lambda r: r.rowid)
    assert rows[0].topic == f"sipedge/{NODE}/calls/{a}/events"
    assert rows[-1].topic == f"sipedge/{NODE}/trunks/t1/events"
    assert json.loads(rows[2].payload)["seq"] == 2
    assert store.undelivered(limit=2, after_rowid=rows[1].rowid) == rows[2:4]
    store.mark_delivered(r.rowid for r in rows[:3])
    assert store.backlog() == 2
    assert store.undelivered() == rows[3:]


def test_concurrent_writers_get_distinct_consecutive_seqs(store: Store) -> None:
    call_id = incoming(store)

    def write() -> None:
        for _ in range(25):
            store.add_event(Event.of(CallDtmf(digit="1"), node=NODE, call_id=call_id))

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in store.call_events(call_id)] == list(range(1, 102))


def test_list_calls_filters_pages_and_sorts(tmp_path: Path) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    clock = iter(start + timedelta(minutes=i) for i in range(100))
    store = Store(str(tmp_path / "s.db"))
    ids = []
    for i in range(5):
        call_id = new_call_id()
        ids.append(call_id)
        store.create_call(StoredCall(id=call_id, direction="outbound" if i % 2 else "inbound",
                                     status="completed", trunk="t1",
                                     created_at=next(clock)))  # fmt: skip
    rows, total = store.list_calls({"direction": "inbound"}, page=1, per_page=2)
    assert total == 3
    assert [r.id for r in rows] == [ids[4], ids[2]]
    rows, total = store.list_calls(None, page=3, per_page=2, sort="created_at")
    assert (total, [r.id for r in rows]) == (5, [ids[4]])
    rows, _ = store.list_calls({"created_after": start + timedelta(minutes=3)}, sort="created_at")
    assert [r.id for r in rows] == ids[3:]
    with pytest.raises(StoreError):
        store.list_calls(sort="from_number; DROP TABLE calls")


def test_idempotency_key_is_claimed_once_and_expires_after_24_hours(tmp_path: Path) -> None:
    now = [datetime(2025, 1, 1, tzinfo=UTC)]
    store = Store(str(tmp_path / "s.db"), clock=lambda: now[0])
    first, created = store.put_idempotency("key-1", "hash-a", "call_aaa")
    assert created
    again, created = store.put_idempotency("key-1", "hash-b", "call_bbb")
    assert not created
    assert (again.request_hash, again.call_id) == ("hash-a", "call_aaa")
    now[0] += timedelta(hours=23, minutes=59)
    assert store.get_idempotency("key-1") == first
    now[0] += timedelta(minutes=2)
    assert store.get_idempotency("key-1") is None
    fresh, created = store.put_idempotency("key-1", "hash-c", "call_ccc")
    assert created and fresh.call_id == "call_ccc"
    now[0] += timedelta(days=2)
    assert store.purge_idempotency() == 1


_CRASHER = textwrap.dedent(
    """
    import os, signal, sys
    from gateway.events.schema import CallDtmf, CallIncoming, Event, new_call_id
    from gateway.store.sqlite import StoredCall, Store

    store = Store(sys.argv[1])
    call_id = new_call_id()
    store.create_call(
        StoredCall(id=call_id, direction="inbound", status="incoming"),
        Event.of(CallIncoming(from_="+1", to="+2"), node="n", call_id=call_id),
    )
    for _ in range(49):
        store.add_event(Event.of(CallDtmf(digit="9"), node="n", call_id=call_id))
    store.update_call(call_id, {"status": "ringing"})
    print(call_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_committed_writes_survive_kill_9_of_the_process(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(path)],
        check=False, capture_output=True, text=True, cwd=REPO, timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    call_id = proc.stdout.strip()
    store = Store(str(path))
    assert store.get_call(call_id).status == "ringing"  # type: ignore[union-attr]
    assert [e.seq for e in store.call_events(call_id)] == list(range(1, 51))
    assert store.backlog() == 50
