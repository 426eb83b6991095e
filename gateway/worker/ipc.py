"""The supervisor <-> SIP worker boundary: length-prefixed JSON frames over a Unix socket pair.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object).
Requests `{"kind": "request", "id", "op", "args"}` get exactly one
`{"kind": "reply", "id", "ok", "result" | "error": {"code", "message"}}`.
The worker also sends `{"kind": "event", "type", "data", "ts"}`, one typed happening of
gateway/calls/events.py (`type` is its class name, `data` its fields: `event_message` and
`event_from`), and `{"kind": "ready", "status"}` once its engine is up.

Framing by length (not by newline) means no message size breaks the reader's buffer. A frame
above MAX_FRAME, or one that is not a JSON object, is a protocol error: read_message skips it
(discarding an oversized body in chunks, never holding it) and raises IpcError, and the stream
stays in step, so the reader logs it and reads on; no call depends on the bad frame.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
from typing import Any

from gateway.calls.events import EVENT_TYPES, WorkerEvent
from gateway.errors import SipedgeError

MAX_FRAME = 16 * 1024 * 1024
_SKIP_CHUNK = 64 * 1024
_HEADER = struct.Struct("!I")


class IpcError(SipedgeError):
    """The other end broke the framing contract (oversized frame, bad JSON, not an object)."""


def encode(message: dict[str, Any]) -> bytes:
    """One frame; IpcError if the JSON is larger than MAX_FRAME (the caller's bug to report)."""
    body = json.dumps(message, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_FRAME:
        raise IpcError(f"IPC message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def event_message(event: WorkerEvent, ts: float) -> dict[str, Any]:
    return {"kind": "event", "type": type(event).__name__, "data": dataclasses.asdict(event),
            "ts": ts}  # fmt: skip


def event_from(message: dict[str, Any]) -> tuple[WorkerEvent, float]:
    """The happening an event message carries, and when; IpcError if it is not one."""
    cls = EVENT_TYPES.get(str(message.get("type")))
    data = message.get("data")
    if cls is None or not isinstance(data, dict):
        raise IpcError(f"IPC event of unknown type {message.get('type')!r}")
    try:
        return cls(**data), float(message["ts"])
    except (TypeError, KeyError, ValueError) as exc:
        raise IpcError(f"IPC event {cls.__name__} does not fit its type: {exc}") from None


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise IpcError(f"IPC frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise IpcError("IPC message is not an object")
    return message


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, or None at end of stream (also when the stream ends inside a frame)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > MAX_FRAME:
            await _skip(reader, length)
            raise IpcError(f"IPC frame of {length} bytes exceeds the {MAX_FRAME}-byte limit")
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    return decode(body)


async def _skip(reader: asyncio.StreamReader, length: int) -> None:
    while length > 0:
        chunk = await reader.readexactly(min(_SKIP_CHUNK, length))
        length -= len(chunk)
