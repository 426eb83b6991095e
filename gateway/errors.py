"""The sipedge exception family: every error a user can act on derives from SipedgeError.

It also holds the one error vocabulary of the HTTP API and the MQTT commands: each code's
HTTP status, the worker's refusal reasons as codes, and the single shape of `details` (a list
of `{"location", "field", "message", "type", "limit"}`), so both transports say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal


class SipedgeError(Exception):
    """Base of every sipedge error. Each one has a `code` of the shared vocabulary (below),
    and through it the HTTP status the API answers with, the SIP status a SIP request gets
    for the same reason, and whether trying again later may succeed."""

    code: str = "internal_error"

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    @property
    def sip_status(self) -> int:
        return sip_status(self.code)

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class ConfigError(SipedgeError):
    """The configuration file is invalid; `problems` holds one line per problem."""

    code = "invalid_parameter"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SipEngineError(SipedgeError):
    """The SIP engine could not do what was asked."""


ErrorCode = Literal[
    "invalid_json", "unauthorized", "resource_not_found", "method_not_allowed", "conflict",
    "payload_too_large", "range_not_satisfiable", "invalid_parameter", "rate_limit_exceeded",
    "internal_error", "capacity_exceeded",
]  # fmt: skip
HTTP_STATUS: Mapping[str, int] = {
    "invalid_json": 400, "unauthorized": 401, "resource_not_found": 404,
    "method_not_allowed": 405, "conflict": 409, "payload_too_large": 413,
    "range_not_satisfiable": 416, "invalid_parameter": 422, "rate_limit_exceeded": 429,
    "internal_error": 500, "capacity_exceeded": 503,
}  # fmt: skip
# The same reasons as SIP answers (RFC 3261 21.x): what a SIP request refused for that reason
# gets, e.g. a call the edge cannot take is 503 either way; a missing dialog is 481.
SIP_STATUS: Mapping[str, int] = {
    "invalid_json": 400, "unauthorized": 403, "resource_not_found": 481,
    "method_not_allowed": 405, "conflict": 491, "payload_too_large": 513,
    "range_not_satisfiable": 416, "invalid_parameter": 400, "rate_limit_exceeded": 503,
    "internal_error": 500, "capacity_exceeded": 503,
}  # fmt: skip
# Codes for which the same request may succeed later (HTTP and SIP answer with Retry-After).
RETRYABLE = frozenset({"rate_limit_exceeded", "capacity_exceeded"})

# Why the SIP worker refused an operation (CallRefused.reason) -> the API's code.
_REFUSALS: Mapping[str, str] = {
    "call_not_found": "resource_not_found",
    "unknown_trunk": "invalid_parameter",
    "unknown_agent": "invalid_parameter",
    "destination_not_allowed": "invalid_parameter",
    "capacity_exceeded": "capacity_exceeded",
    "draining": "capacity_exceeded",
    "conflict": "conflict",
}

Location = Literal["body", "query", "path", "header"]


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def sip_status(code: str) -> int:
    return SIP_STATUS.get(code, 500)


def refusal_code(reason: str) -> str:
    """The API code for a worker refusal reason; an unknown reason is a conflict with the
    call's state (an internal error if the worker gave none)."""
    if reason in ("", "internal_error"):
        return "internal_error"
    return _REFUSALS.get(reason, "conflict")


def detail(
    message: str,
    *,
    field: str | None = None,
    location: Location | None = None,
    type: str = "invalid",
    limit: int | None = None,
) -> dict[str, Any]:
    """One entry of `details`: what is wrong, where, and the limit when one was passed."""
    return {"location": location, "field": field, "message": message, "type": type,
            "limit": limit}  # fmt: skip


class CommandError(SipedgeError):
    """An operation could not be carried out; `code` is one of ErrorCode, `details` a list of
    detail() entries. The same error answers an HTTP request and an MQTT command."""

    def __init__(
        self, code: str, message: str, details: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # Entries missing a key get its default, so every reply has the one shape.
        self.details = [{**detail(message), **d} for d in details or ()]

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class CallRefused(SipedgeError):
    """The worker refused an operation (an outbound call before any INVITE was sent, a
    command on a call); `reason` says why in the worker's words, `code` in the API's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = refusal_code(reason)


# --- validation errors (pydantic / FastAPI) as details ------------------------------------

_LIMIT_KEYS = ("max_length", "min_length", "le", "lt", "ge", "gt", "limit")


def _limit(ctx: Mapping[str, Any]) -> int | None:
    for key in _LIMIT_KEYS:
        value = ctx.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _message(kind: str, field: str, location: str, error: Mapping[str, Any],
             hints: Mapping[str, str]) -> str:  # fmt: skip
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    msg = str(error.get("msg", "invalid"))
    if kind == "extra_forbidden":
        what = "query parameter" if location == "query" else "field"
        return f"unknown {what} {field!r}"
    if kind == "missing":
        return f"{field or location} is required"
    if kind == "json_invalid":
        reason = ctx.get("error")
        at = f" at byte {field}" if field.isdigit() else ""
        return "request body is not valid JSON" + (f": {reason}{at}" if reason else "")
    if kind == "model_attributes_type" or (not field and kind.endswith("_type")):
        return "request body must be a JSON object" if location == "body" else msg
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in hints:
        msg = hints[str(ctx["pattern"])]
    elif kind == "string_too_long":
        msg = f"at most {ctx.get('max_length')} characters"
    elif kind == "string_too_short":
        least = ctx.get("min_length")
        msg = "must not be empty" if least == 1 else f"at least {least} characters"
    elif kind in ("less_than_equal", "greater_than_equal", "less_than", "greater_than"):
        words = {"less_than_equal": "at most", "greater_than_equal": "at least",
                 "less_than": "less than", "greater_than": "more than"}[kind]  # fmt: skip
        msg = f"{words} {_limit(ctx)}"
    elif kind == "too_long":
        msg = f"at most {ctx.get('max_length')} entries"
    elif kind in ("int_type", "bool_type", "string_type", "dict_type", "int_from_float"):
        msg = {"int_type": "must be an integer", "bool_type": "must be true or false",
               "string_type": "must be a string", "dict_type": "must be an object",
               "int_from_float": "must be an integer"}[kind]  # fmt: skip
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{field}: {msg}" if field else msg


def validation_details(
    errors: Sequence[Mapping[str, Any]],
    default_location: Location = "body",
    hints: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """pydantic/FastAPI errors as detail() entries, each naming its field in words; `hints`
    maps a regex pattern to what a user should read instead of the regex."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        location: Location = default_location
        if loc and loc[0] in ("body", "query", "path", "header"):
            location = loc.pop(0)  # type: ignore[assignment]
        kind = str(error.get("type", "value_error"))
        field = ".".join(loc)
        message = _message(kind, field, location, error, hints or {})
        if kind == "json_invalid":
            field = ""  # FastAPI puts the byte offset there, not a field
        limit = _limit(error.get("ctx") or {})
        out.append(detail(message, field=field or None, location=location, type=kind,
                          limit=limit))  # fmt: skip
    return out
