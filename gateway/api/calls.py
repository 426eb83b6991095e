"""`/v1/calls`: place calls, read the call log, control a call, its events and its recording.

Every operation goes through `node.command(...)`, the implementation MQTT commands use too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer

from gateway.api.common import (
    SORT_PATTERN,
    ApiNode,
    Pagination,
    QueryDateTime,
    as_utc,
    error_response,
    iso,
    node_of,
    path_error,
    refuse_unknown_query,
)  # fmt: skip
from gateway.api.models import (
    Call,
    CallAction,
    CallCreate,
    CallDtmfRequest,
    CallEvent,
    CallStatus,
    CallTransferRequest,
    Data,
    Direction,
    ErrorEnvelope,
    Page,
)  # fmt: skip
from gateway.errors import detail
from gateway.events.commands import ConfigId, E164Number
from gateway.store.sqlite import CallFilter, StoredCall

CHUNK = 64 * 1024
ENDED = frozenset({"completed", "failed"})

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorEnvelope, "description": "missing or invalid API key"},
    422: {
        "model": ErrorEnvelope,
        "description": "invalid parameter (the field is named), "
        "unknown body field or query parameter",
    },
    429: {"model": ErrorEnvelope, "description": "rate limit exceeded"},
}
# Routes that take a JSON body.
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorEnvelope, "description": "malformed JSON (`invalid_json`)"},
    413: {"model": ErrorEnvelope, "description": "request body over 64 KiB (`payload_too_large`)"},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "no such call"},
}
_ACTION_ERRORS = {
    **_ERRORS,
    **_NOT_FOUND,
    409: {"model": ErrorEnvelope, "description": "the call has already ended"},
}
_ACTION_BODY_ERRORS = {**_ACTION_ERRORS, **_BODY_ERRORS}

router = APIRouter(prefix="/v1/calls", tags=["calls"], responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]


def recording_file(node: ApiNode, record: StoredCall) -> Path | None:
    """The call's WAV, once call.recording.ready has recorded its path, if the file exists."""
    path = record.recording_path
    if path is None or not Path(path).is_file():
        return None
    return Path(path)


def call_out(node: ApiNode, record: StoredCall, **extra: Any) -> Call:
    view: dict[str, Any] = {
        "id": record.id, "status": record.status, "direction": record.direction,
        "from": record.from_number, "to": record.to_number, "trunk": record.trunk,
        "agent": record.agent, "variables": record.variables,
        "created_at": iso(record.created_at), "ringing_at": iso(record.ringing_at),
        "answered_at": iso(record.answered_at), "ended_at": iso(record.ended_at),
        "duration": record.duration, "billable_seconds": record.billable_seconds,
        "end_reason": record.end_reason, "sip_code": record.sip_code,
        "hangup_by": record.hangup_by, "codec": record.codec, "latency": record.latency,
        "recording_url": f"/v1/calls/{record.id}/recording"
        if recording_file(node, record) else None,
        **extra,
    }  # fmt: skip
    return Call.model_validate(view)


def _record(node: ApiNode, call_id: str) -> StoredCall:
    record = node.store.get_call(call_id)
    if record is None:
        message = f"no call {call_id}"
        raise path_error("resource_not_found", message, "call_id")
    return record


def _not_ended(node: ApiNode, call_id: str) -> None:
    """409 for a call that has ended. A call the store does not know yet (its first event may
    still be on the way) goes to the worker, which answers 404 if it has no such call."""
    record = node.store.get_call(call_id)
    if record is not None and record.status in ENDED:
        message = f"call {call_id} has already ended ({record.status})"
        raise path_error("conflict", message, "call_id", "call_ended")


@router.post("", status_code=202, response_model=Data[Call],
             responses={**_BODY_ERRORS,
                        409: {"model": ErrorEnvelope,
                              "description": "Idempotency-Key reused with another body"},
                        503: {"model": ErrorEnvelope, "description": "no capacity; retry later"}},
             summary="Place an outbound call")  # fmt: skip
async def create_call(
    body: CallCreate, node: NodeDep,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=255,
        description="a replay within 24 h returns the original call; another body is 409",
    )] = None,
) -> Response:  # fmt: skip
    args = body.model_dump(by_alias=True, exclude_none=True)
    if idempotency_key:
        args["idempotency_key"] = idempotency_key
    result = await node.command("call.originate", args)
    record = node.store.get_call(result["id"])
    if record is not None:
        replayed = {"replayed": True} if result.get("replayed") else {}
        call = call_out(node, record, **replayed)
        if not replayed:
            call.status = "dialing"  # the state the call was accepted in, as the contract says
    else:
        call = Call.model_validate({**result, "direction": "outbound"})
    headers = {"Location": f"/v1/calls/{call.id}"}
    if call.replayed:
        headers["Idempotent-Replayed"] = "true"
    body_out = Data[Call](data=call).model_dump(mode="json", by_alias=True)
    return JSONResponse(body_out, status_code=202, headers=headers)


@router.get("", response_model=Page[Call], summary="The call log, newest first by default")
async def list_calls(
    node: NodeDep,
    window: Pagination,
    status: CallStatus | None = None,
    direction: Direction | None = None,
    trunk: Annotated[ConfigId | None, Query()] = None,
    agent: Annotated[ConfigId | None, Query()] = None,
    number: Annotated[E164Number | None,
                      Query(description="matches the from or the to number")] = None,
    date_from: Annotated[QueryDateTime | None, Query(description="created at or after")] = None,
    date_to: Annotated[QueryDateTime | None, Query(description="created before")] = None,
    sort: Annotated[str, Query(pattern=SORT_PATTERN,
                               description="field, `-` for descending")] = "-created_at",
) -> Page[Call]:  # fmt: skip
    filters = CallFilter(status=status, direction=direction, trunk=trunk, agent=agent,
                         number=number, created_after=as_utc(date_from),
                         created_before=as_utc(date_to))  # fmt: skip
    rows, total = node.store.list_calls(filters, offset=window.skip, limit=window.limit,
                                        sort=sort)  # fmt: skip
    return Page[Call](data=[call_out(node, r) for r in rows], meta=window.meta(total))


@router.get("/{call_id}", response_model=Data[Call], responses=_NOT_FOUND, summary="One call")
async def get_call(call_id: str, node: NodeDep) -> Data[Call]:
    return Data[Call](data=call_out(node, _record(node, call_id)))


@router.post("/{call_id}/hangup", status_code=202, response_model=Data[CallAction],
             responses=_ACTION_ERRORS, summary="Hang up a call")  # fmt: skip
async def hangup(call_id: str, node: NodeDep) -> Data[CallAction]:
    _not_ended(node, call_id)
    result = await node.command("call.hangup", {"call_id": call_id})
    return Data[CallAction](data=CallAction.model_validate(result))


@router.post("/{call_id}/transfer", status_code=202, response_model=Data[CallAction],
             responses=_ACTION_BODY_ERRORS, summary="Blind transfer (REFER)")  # fmt: skip
async def transfer(call_id: str, body: CallTransferRequest, node: NodeDep) -> Data[CallAction]:
    _not_ended(node, call_id)
    result = await node.command("call.transfer", {"call_id": call_id, "target": body.target})
    return Data[CallAction](data=CallAction.model_validate(result))


@router.post("/{call_id}/dtmf", status_code=202, response_model=Data[CallAction],
             responses=_ACTION_BODY_ERRORS, summary="Send DTMF digits (RFC 4733)")  # fmt: skip
async def send_dtmf(call_id: str, body: CallDtmfRequest, node: NodeDep) -> Data[CallAction]:
    _not_ended(node, call_id)
    result = await node.command("call.send_dtmf", {"call_id": call_id, "digits": body.digits})
    return Data[CallAction](data=CallAction.model_validate(result))


@router.get("/{call_id}/events", response_model=Page[CallEvent], responses=_NOT_FOUND,
            summary="The call's events, in order (seq)")  # fmt: skip
async def call_events(call_id: str, node: NodeDep, window: Pagination) -> Page[CallEvent]:
    _record(node, call_id)
    events = node.store.call_events(call_id)
    items = [CallEvent.model_validate(e.model_dump(mode="json")) for e in window.of(events)]
    return Page[CallEvent](data=items, meta=window.meta(len(events)))


# --- recordings ---------------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of a single `bytes=` range; None to send everything (no or unusable
    header, or several ranges); False when the range cannot be satisfied (416)."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # a malformed Range header is ignored (RFC 9110 14.2)
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return False
    return start, end


def _chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as fh:
        fh.seek(start)
        while length > 0:
            chunk = fh.read(min(CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


@router.get("/{call_id}/recording", response_class=StreamingResponse,
            responses={**_NOT_FOUND,
                       200: {"content": {"audio/wav": {}}, "description": "the stereo WAV"},
                       206: {"content": {"audio/wav": {}}, "description": "the requested range"},
                       416: {"model": ErrorEnvelope,
                             "description": "range not satisfiable (`range_not_satisfiable`)"}},
            summary="Download the call's recording (WAV), with Range support")  # fmt: skip
async def recording(call_id: str, request: Request, node: NodeDep) -> Response:
    path = recording_file(node, _record(node, call_id))
    if path is None:
        message = f"call {call_id} has no recording"
        raise path_error("resource_not_found", message, "call_id")
    size = path.stat().st_size
    wanted = byte_range(request.headers.get("range"), size)
    headers = {"Accept-Ranges": "bytes",
               "Content-Disposition": f'attachment; filename="{call_id}.wav"'}  # fmt: skip
    if wanted is False:
        message = f"range not satisfiable: the recording has {size} bytes"
        return error_response(
            "range_not_satisfiable",
            message,
            [detail(message, field="Range", location="header", type="range_not_satisfiable")],
            {**headers, "Content-Range": f"bytes */{size}"},
        )
    first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
    length = max(0, last - first + 1)
    headers["Content-Length"] = str(length)
    status = 200
    if isinstance(wanted, tuple):
        status = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(_chunks(path, first, length), status_code=status,
                             media_type="audio/wav", headers=headers)  # fmt: skip
