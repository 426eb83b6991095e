"""Recordings on a real store with real WAV files: metadata from the header, deletion (file,
record, event) and the retention sweep."""

from __future__ import annotations

import logging
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.errors import CommandError
from gateway.store.recordings import (
    delete_recording,
    recording_view,
    sweep_recordings,
    wav_format,
)  # fmt: skip
from gateway.store.sqlite import CallFilter, Store, StoredCall

NODE = "node-r"
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(str(tmp_path / "sipedge.db"))


def wav(path: Path, seconds: float = 0.5, rate: int = 8000) -> int:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x01\x00" * 2 * int(rate * seconds))
    return path.stat().st_size


def recorded(store: Store, tmp: Path, n: int, made: datetime, **fields: object) -> str:
    call_id = f"call_{n:024x}"
    path = tmp / f"{call_id}.wav"
    size = wav(path)
    store.create_call(StoredCall(id=call_id, direction="inbound", status="completed",  # type: ignore[arg-type]
                                 created_at=made, **fields))  # fmt: skip
    store.update_call(call_id, {"recording_path": str(path), "recording_duration": 0.5,
                                "recording_bytes": size, "recording_at": made})  # fmt: skip
    return call_id


def test_metadata_comes_from_the_record_and_the_wav_header(store: Store, tmp_path: Path) -> None:
    call_id = recorded(store, tmp_path, 1, NOW, trunk="t", variables={"campaign_id": "cmp_1"})
    record = store.get_call(call_id)
    assert record is not None
    view = recording_view(record)
    assert view == {
        "call_id": call_id, "created_at": "2026-03-10T12:00:00.000Z", "duration": 0.5,
        "bytes": 16044, "channels": 2, "sample_rate": 8000, "bits_per_sample": 16,
        "format": "wav/pcm_s16le", "available": True, "url": f"/v1/recordings/{call_id}/audio",
        "direction": "inbound", "trunk": "t", "agent": None, "campaign_id": "cmp_1",
        "deleted_at": None,
    }  # fmt: skip
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really")
    assert wav_format(tmp_path / "junk.wav") is None
    assert wav_format(tmp_path / "absent.wav") is None


def test_delete_removes_the_file_updates_the_record_and_events_it(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    call_id = recorded(store, tmp_path, 1, NOW, trunk="carrier")
    path = tmp_path / f"{call_id}.wav"
    with caplog.at_level(logging.INFO, logger="sipedge.recordings"):
        view = delete_recording(store, NODE, call_id)
    assert not path.exists()
    assert view["available"] is False and view["deleted_at"] is not None
    record = store.get_call(call_id)
    assert record is not None and record.recording_path is None
    assert record.recording_deleted_at is not None
    [event] = [e for e in store.call_events(call_id) if e.type == "call.recording.deleted"]
    assert event.data == {"path": str(path), "bytes": 16044, "reason": "request"}
    assert store.backlog() == 1  # in the outbox, to be published
    assert f"event=recording_deleted call_id={call_id} trunk=carrier reason=request" in caplog.text
    with pytest.raises(CommandError) as again:
        delete_recording(store, NODE, call_id)
    assert again.value.code == "resource_not_found"
    assert store.list_recordings(CallFilter()) == ([], 0)


def test_a_file_already_gone_still_closes_the_record(store: Store, tmp_path: Path) -> None:
    call_id = recorded(store, tmp_path, 1, NOW)
    (tmp_path / f"{call_id}.wav").unlink()
    assert recording_view(store.get_call(call_id))["available"] is False  # type: ignore[arg-type]
    delete_recording(store, NODE, call_id)
    assert store.get_call(call_id).recording_path is None  # type: ignore[union-attr]


def test_the_sweep_deletes_only_recordings_past_retention(store: Store, tmp_path: Path) -> None:
    old = [recorded(store, tmp_path, n, NOW - timedelta(days=8, minutes=n)) for n in range(3)]
    young = recorded(store, tmp_path, 9, NOW - timedelta(days=6))
    assert sweep_recordings(store, NODE, retention_days=7, now=NOW) == 3
    for call_id in old:
        assert not (tmp_path / f"{call_id}.wav").exists()
        [event] = [e for e in store.call_events(call_id) if e.type == "call.recording.deleted"]
        assert event.data["reason"] == "retention"
    assert (tmp_path / f"{young}.wav").exists()
    assert sweep_recordings(store, NODE, retention_days=7, now=NOW) == 0


def test_a_recording_that_cannot_be_deleted_is_left_for_the_next_sweep(
    store: Store, tmp_path: Path
) -> None:
    stuck = recorded(store, tmp_path, 1, NOW - timedelta(days=30))
    path = tmp_path / f"{stuck}.wav"
    path.unlink()
    path.mkdir()  # unlink() of a directory fails: an OSError, as a read-only disk would
    other = recorded(store, tmp_path, 2, NOW - timedelta(days=30))
    assert sweep_recordings(store, NODE, retention_days=1, now=NOW) == 1
    assert store.get_call(stuck).recording_path == str(path)  # type: ignore[union-attr]
    assert store.get_call(other).recording_path is None  # type: ignore[union-attr]


def test_list_filters_and_pages_newest_first(store: Store, tmp_path: Path) -> None:
    ids = [recorded(store, tmp_path, n, NOW + timedelta(minutes=n), trunk="ab"[n % 2])
           for n in range(5)]  # fmt: skip
    store.create_call(StoredCall(id="call_none", direction="inbound", status="completed"))
    rows, total = store.list_recordings(CallFilter(), 1, 2)
    assert total == 5 and [r.id for r in rows] == [ids[3], ids[2]]
    rows, total = store.list_recordings(CallFilter(trunk="a"))
    assert total == 3 and [r.id for r in rows] == [ids[4], ids[2], ids[0]]
    assert store.list_recordings(CallFilter(call_id=ids[1]))[1] == 1
