"""Reading the few header values the engine needs from a received SIP message's text, and the
headers a trunk or number passes to the agent as call variables."""

from __future__ import annotations

import fnmatch
import ipaddress
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

# Set by the SIP front on each new INVITE it dispatches to a worker: the address it came from
# (`198.51.100.7:5060;transport=udp`, `[2001:db8::7]:5060;transport=tcp`). The front strips
# any such header that arrives from outside (gateway/front/kamailio.cfg.tmpl).
SOURCE_HEADER = "X-Sipedge-Source"


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
    return source_address(src_address)[0]


def source_address(src_address: str) -> tuple[str, int]:
    """'127.0.0.1:5060' or '[::1]:5060' -> (address, port); port 0 when none is given."""
    match = re.match(r"^\[([^\]]+)\](?::(\d+))?$", src_address)
    if match:
        return match.group(1), int(match.group(2) or 0)
    if src_address.count(":") == 1:
        host, port = src_address.rsplit(":", 1)
        return host, int(port) if port.isdigit() else 0
    return src_address, 0


def caller_source(message: str, sender: tuple[str, int], front: tuple[str, int] | None) -> str:
    """The IP a request's caller sent it from. Behind a SIP front (`front`: the front's
    worker-side address and port) the transport sender of a dispatched INVITE is the front
    itself; what the front saw is in its SOURCE_HEADER, believed only when the front sent the
    request (anyone else may write the header). Otherwise the sender's IP."""
    ip = sender[0]
    if front is None or not _same_address(sender, front):
        return ip
    named = source_ip(header(message, SOURCE_HEADER.lower()).split(";", 1)[0].strip())
    try:
        return str(ipaddress.ip_address(named))
    except ValueError:
        return ip  # a front that sent none (or an older one): the sender is all we know


def _same_address(a: tuple[str, int], b: tuple[str, int]) -> bool:
    try:
        return a[1] == b[1] and ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])
    except ValueError:
        return False


MAX_HEADER_VARIABLE = 1024  # characters of one header value passed as a variable
INTERNAL_HEADERS = frozenset({SOURCE_HEADER.lower()})  # ours (the front's), never passed on


def headers_matching(message: str, patterns: list[str]) -> dict[str, str]:
    """The headers whose names match `patterns` (case-insensitive, `*` a wildcard: `X-*`,
    `Diversion`), as {name as first written: value}; several of one name joined by ", ";
    values cut to MAX_HEADER_VARIABLE characters."""
    if not patterns:
        return {}
    wanted = [p.lower() for p in patterns]
    found: dict[str, str] = {}
    names: dict[str, str] = {}  # lower -> as written first
    for line in _header_lines(message):
        key, sep, value = line.partition(":")
        if not sep:
            continue
        name = key.strip()
        lower = _COMPACT.get(name.lower(), name.lower())
        if lower in INTERNAL_HEADERS or not any(fnmatch.fnmatchcase(lower, p) for p in wanted):
            continue
        shown = names.setdefault(lower, name)
        value = value.strip()
        found[shown] = f"{found[shown]}, {value}" if shown in found else value
    return {k: v[:MAX_HEADER_VARIABLE] for k, v in found.items()}
