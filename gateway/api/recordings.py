"""`/v1/recordings`: the calls' WAVs: list, metadata, download and delete (the retention sweep
deletes the same way: gateway/store/recordings.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from fastapi.security import HTTPBearer

from gateway.api.analytics import CampaignId
from gateway.api.calls import _ERRORS
from gateway.api.calls import recording as call_recording
from gateway.api.common import (
    ApiNode,
    Pagination,
    QueryDateTime,
    as_utc,
    node_of,
    path_error,
    refuse_unknown_query,
)  # fmt: skip
from gateway.api.models import Data, ErrorEnvelope, Page, Recording
from gateway.events.commands import CallId, ConfigId
from gateway.store.recordings import recording_view
from gateway.store.sqlite import CallFilter, StoredCall

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "no such call, or it has no recording"},
}
router = APIRouter(prefix="/v1/recordings", tags=["recordings"], responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]


@router.get("", response_model=Page[Recording], summary="Recordings, newest first")
async def list_recordings(
    node: NodeDep,
    window: Pagination,
    date_from: Annotated[QueryDateTime | None, Query(description="call created at or after")]
    = None,
    date_to: Annotated[QueryDateTime | None, Query(description="call created before")] = None,
    trunk: Annotated[ConfigId | None, Query()] = None,
    agent: Annotated[ConfigId | None, Query()] = None,
    call_id: Annotated[CallId | None, Query()] = None,
    campaign_id: CampaignId = None,
) -> Page[Recording]:  # fmt: skip
    filters = CallFilter(created_after=as_utc(date_from), created_before=as_utc(date_to),
                         trunk=trunk, agent=agent, call_id=call_id,
                         campaign_id=campaign_id)  # fmt: skip
    rows, total = node.store.list_recordings(filters, window.skip, window.limit)
    items = [Recording.model_validate(recording_view(r)) for r in rows]
    return Page[Recording](data=items, meta=window.meta(total))


def _recorded(node: ApiNode, call_id: str) -> StoredCall:
    record = node.store.get_call(call_id)
    if record is None or record.recording_path is None:
        raise path_error("resource_not_found", f"call {call_id} has no recording", "call_id")
    return record


@router.get("/{call_id}", response_model=Data[Recording], responses=_NOT_FOUND,
            summary="A recording's metadata: duration, size, channels, format")  # fmt: skip
async def get_recording(call_id: str, node: NodeDep) -> Data[Recording]:
    view = recording_view(_recorded(node, call_id))
    return Data[Recording](data=Recording.model_validate(view))


@router.get("/{call_id}/audio", response_class=StreamingResponse,
            responses={**_NOT_FOUND,
                       200: {"content": {"audio/wav": {}}, "description": "the stereo WAV"},
                       206: {"content": {"audio/wav": {}}, "description": "the requested range"},
                       416: {"model": ErrorEnvelope,
                             "description": "range not satisfiable (`range_not_satisfiable`)"}},
            summary="Download the recording (WAV), with Range support")  # fmt: skip
async def recording_audio(call_id: str, request: Request, node: NodeDep) -> Response:
    return await call_recording(call_id, request, node)  # as GET /v1/calls/{call_id}/recording


@router.delete("/{call_id}", response_model=Data[Recording], responses=_NOT_FOUND,
               summary="Delete the recording: the file goes, the call keeps a record of it "
               "(`deleted_at`), and `call.recording.deleted` is sent")  # fmt: skip
async def delete_recording(call_id: str, node: NodeDep) -> Data[Recording]:
    _recorded(node, call_id)
    view = await node.command("recording.delete", {"call_id": call_id})
    return Data[Recording](data=Recording.model_validate(view))
