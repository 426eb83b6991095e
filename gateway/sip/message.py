"""Reading the few header values the engine needs from a received SIP message's text."""

from __future__ import annotations

import re

# RFC 3261 section 7.3.3 compact forms, plus the common extension ones (o, r, u, b, x).
_COMPACT = {
    "t": "to",
    "f": "from",
    "i": "call-id",
    "m": "contact",
    "v": "via",
    "c": "content-type",
    "e": "content-encoding",
    "l": "content-length",
    "k": "supported",
    "s": "subject",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "b": "referred-by",
    "x": "session-expires",
}


def _header_lines(message: str) -> list[str]:
    """Header lines up to the blank line before the body, with folded lines joined."""
    head = message.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    lines: list[str] = []
    for line in head.splitlines()[1:]:
        if line[:1] in (" ", "\t") and lines:
            # A line starting with whitespace continues the previous header (RFC 3261 7.3.1).
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return lines


def header(message: str, name: str) -> str:
    """First value of header `name` (long or compact form), '' when absent."""
    wanted = name.lower()
    for line in _header_lines(message):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if _COMPACT.get(key, key) == wanted:
            return value.strip()
    return ""


def request_uri(message: str) -> str:
    """The Request-URI of a request; '' for a response or a malformed first line."""
    first = message.split("\n", 1)[0].strip()
    parts = first.split(" ")
    if len(parts) < 3 or parts[0].upper().startswith("SIP/"):
        return ""
    return parts[1]


def source_ip(src_address: str) -> str:
    """'127.0.0.1:5060' or '[::1]:5060' -> the address alone."""
    match = re.match(r"^\[([^\]]+)\](?::\d+)?$", src_address)
    if match:
        return match.group(1)
    return src_address.rsplit(":", 1)[0] if src_address.count(":") == 1 else src_address
