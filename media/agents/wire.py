"""JSON text messages as the agent protocols exchange them: compact out, objects only in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from media.errors import ProtocolError


def dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def loads(text: str) -> dict[str, Any]:
    """Parse one text message; anything but a JSON object is a ProtocolError."""
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    return message
