"""The supervisor <-> SIP worker boundary: JSON lines over a Unix socket pair.

Requests `{"kind": "request", "id", "op", "args"}` get exactly one
`{"kind": "reply", "id", "ok", "result" | "error": {"code", "message"}}`.
The worker also sends `{"kind": "event", "type", "call_id", "data", "ts"}` and
`{"kind": "ready", "status"}` once its engine is up.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_LINE = 1 << 20


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next message, or None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("IPC message is not an object")
    return message
