"""A call's recording as the log keeps it: metadata (the record's figures and the WAV header),
and deletion (the file, then the record and a `call.recording.deleted` event in one
transaction), by a request or by the retention sweep.

The file goes first: a crash between the two leaves a record whose file is missing, which the
next delete or sweep finishes; the other order would leave a file nothing points to.
"""

from __future__ import annotations

import logging
import wave
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from gateway.errors import CommandError, detail
from gateway.events.schema import Event, RecordingDeleted, iso_z, utc_now
from gateway.store.sqlite import Store, StoredCall

log = logging.getLogger("sipedge.recordings")

SWEEP_BATCH = 100
Reason = Literal["request", "retention"]


def wav_format(path: Path) -> dict[str, Any] | None:
    """channels, sample_rate, bits_per_sample and format of a WAV, or None if it is missing
    or not a readable PCM WAV."""
    try:
        with wave.open(str(path), "rb") as w:
            return {
                "channels": w.getnchannels(),
                "sample_rate": w.getframerate(),
                "bits_per_sample": w.getsampwidth() * 8,
                "format": f"wav/pcm_s{w.getsampwidth() * 8}le",
            }
    except (OSError, EOFError, wave.Error):
        return None


def recording_view(record: StoredCall) -> dict[str, Any]:
    """GET /v1/recordings/{call_id} and `recording.get`: what the recording is and where."""
    path = Path(record.recording_path) if record.recording_path else None
    header = wav_format(path) if path is not None else None
    size = path.stat().st_size if header is not None and path is not None else None
    return {
        "call_id": record.id,
        "created_at": None if record.recording_at is None else iso_z(record.recording_at),
        "duration": record.recording_duration,
        "bytes": size if size is not None else record.recording_bytes,
        "channels": None if header is None else header["channels"],
        "sample_rate": None if header is None else header["sample_rate"],
        "bits_per_sample": None if header is None else header["bits_per_sample"],
        "format": None if header is None else header["format"],
        "available": header is not None,
        "url": f"/v1/recordings/{record.id}/audio" if header is not None else None,
        "direction": record.direction,
        "trunk": record.trunk,
        "agent": record.agent,
        "campaign_id": record.campaign_id,
        "deleted_at": None
        if record.recording_deleted_at is None
        else iso_z(record.recording_deleted_at),
    }


def no_recording(call_id: str) -> CommandError:
    message = f"call {call_id} has no recording"
    return CommandError(
        "resource_not_found", message, [detail(message, field="call_id", type="not_found")]
    )


def recorded_call(store: Store, call_id: str) -> StoredCall:
    """The call, if it has a recording (deleted ones have none); CommandError 404 if not."""
    record = store.get_call(call_id)
    if record is None or record.recording_path is None:
        raise no_recording(call_id)
    return record


def delete_recording(
    store: Store, node: str, call_id: str, reason: Reason = "request"
) -> dict[str, Any]:
    """Delete the call's WAV and record that, with its event; the recording's view after."""
    record = recorded_call(store, call_id)
    path = Path(str(record.recording_path))
    try:
        path.unlink()
    except FileNotFoundError:
        log.warning("event=recording_already_gone call_id=%s path=%s", call_id, path)
    except OSError as exc:
        log.error("event=recording_delete_failed call_id=%s path=%s error=%s", call_id, path, exc)
        message = f"the recording of call {call_id} could not be deleted: {exc.strerror}"
        raise CommandError("internal_error", message) from exc
    data = RecordingDeleted(path=str(path), bytes=record.recording_bytes, reason=reason)
    event = Event.of(data, node=node, call_id=call_id)
    now = utc_now()
    store.update_call(call_id, {"recording_path": None, "recording_deleted_at": now}, event)
    log.info(
        "event=recording_deleted call_id=%s trunk=%s reason=%s bytes=%s",
        call_id, record.trunk, reason, record.recording_bytes,
    )  # fmt: skip
    updated = store.get_call(call_id)
    return recording_view(updated if updated is not None else record)


def sweep_recordings(
    store: Store, node: str, retention_days: int, now: datetime | None = None
) -> int:
    """Delete every recording made more than `retention_days` ago; returns how many went.
    One that cannot be deleted is logged and left for the next sweep."""
    before = (now or utc_now()) - timedelta(days=retention_days)
    deleted, failed = 0, set[str]()
    while True:  # each round deletes some or fails some, so it ends
        found = store.recordings_before(before, SWEEP_BATCH + len(failed))
        batch = [record for record in found if record.id not in failed]
        if not batch:
            break
        for record in batch:
            try:
                delete_recording(store, node, record.id, "retention")
                deleted += 1
            except CommandError:  # logged by delete_recording; tried again next sweep
                failed.add(record.id)
    if deleted or failed:
        log.info("event=recordings_swept deleted=%d failed=%d retention_days=%d",
                 deleted, len(failed), retention_days)  # fmt: skip
    return deleted
