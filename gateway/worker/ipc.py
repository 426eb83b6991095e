"""The supervisor <-> SIP worker boundary: length-prefixed JSON frames over a Unix socket pair.

A frame is a 4-byte big-endian length, then that many bytes of UTF-8 JSON (one object).
Requests `{"kind": "request", "id", "op", "args"}` get exactly one
`{"kind": "reply", "id", "ok", "result" | "error": {"code", "message"}}`.
The worker also sends `{"kind": "event", "type", "call_id", "data", "ts"}` and
`{"kind": "ready", "status"}` once its engine is up.

Framing by length (not by newline) means no message size breaks the reader's buffer. A frame
above MAX_FRAME, or one that is not a JSON object, is a protocol error: read_message skips it
(discarding an oversized body in chunks, never holding it) and raises IpcError, and the stream
stays in step, so the reader logs it and reads on; no call depends on the bad frame.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

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
