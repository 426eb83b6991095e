"""Reading the few header values the engine needs from a received SIP message's text."""

from __future__ import annotations

import re

_COMPACT = {"t": "to", "f": "from", "i": "call-id", "m": "contact", "v": "via"}


def header(message: str, name: str) -> str:
    """First value of header `name` (long or compact form), '' when absent."""
    wanted = name.lower()
    head = message.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    for line in head.splitlines()[1:]:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if _COMPACT.get(key, key) == wanted:
            return value.strip()
    return ""


def request_uri(message: str) -> str:
    first = message.split("\n", 1)[0].strip()
    parts = first.split(" ")
    return parts[1] if len(parts) >= 3 else ""


def source_ip(src_address: str) -> str:
    """'127.0.0.1:5060' or '[::1]:5060' -> the address alone."""
    match = re.match(r"^\[([^\]]+)\](?::\d+)?$", src_address)
    if match:
        return match.group(1)
    return src_address.rsplit(":", 1)[0] if src_address.count(":") == 1 else src_address
