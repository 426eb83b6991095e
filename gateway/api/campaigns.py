"""`/v1/campaigns`: outbound campaigns, the same operations as the campaign.* MQTT commands
(gateway/node/campaigns.py, through `node.command`).

Contacts come inline in the create request, or later by `POST /v1/campaigns/{id}/contacts`
as JSON (`{"contacts": [...]}`) or CSV (`Content-Type: text/csv`): a header row with a `to`
column, an optional `timezone` column, and any other column a variable of each contact.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from gateway.api.calls import _BODY_ERRORS, _ERRORS
from gateway.api.common import ApiNode, Pagination, node_of, refuse_unknown_query
from gateway.api.models import Data, ErrorEnvelope, Page
from gateway.campaigns.model import CampaignSpec, ContactIn
from gateway.errors import CommandError, detail

MAX_CONTACTS_PER_REQUEST = 1000  # as the campaign.add_contacts command takes

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"], responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]
View = dict[str, Any]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "no such campaign"}
}
_STATE: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorEnvelope, "description": "not possible in the campaign's status"},
}


@router.post("", status_code=201, response_model=Data[View],
             responses={**_BODY_ERRORS, 409: {"model": ErrorEnvelope,
                        "description": "Idempotency-Key reused with another body"}},
             summary="Create a campaign (a draft: launch it to start dialling)")  # fmt: skip
async def create_campaign(
    body: CampaignSpec, node: NodeDep,
    idempotency_key: Annotated[str | None, Header(
        min_length=1, max_length=255,
        description="a replay within 24 h returns the original campaign; another body is 409",
    )] = None,
) -> JSONResponse:  # fmt: skip
    args = body.model_dump(mode="json", by_alias=True)
    if idempotency_key:
        args["idempotency_key"] = idempotency_key
    result = await node.command("campaign.create", args)
    status = 200 if result.get("replayed") else 201
    return JSONResponse({"data": result}, status_code=status)


@router.get("", response_model=Page[View], summary="Campaigns")
async def list_campaigns(
    node: NodeDep,
    window: Pagination,
    status: Annotated[str | None, Query(pattern="^(draft|running|paused|completed|stopped)$")]
    = None,
) -> Page[View]:  # fmt: skip
    args: dict[str, Any] = {"skip": window.skip, "limit": window.limit}
    if status:
        args["status"] = status
    result = await node.command("campaign.list", args)
    return Page[View](data=result["items"], meta=window.meta(result["meta"]["total"]))


@router.get("/{campaign_id}", response_model=Data[View], responses=_NOT_FOUND,
            summary="One campaign")  # fmt: skip
async def get_campaign(campaign_id: str, node: NodeDep) -> Data[View]:
    return Data[View](data=await node.command("campaign.get", {"campaign_id": campaign_id}))


@router.delete("/{campaign_id}", response_model=Data[View], responses=_STATE,
               summary="Delete a draft campaign")  # fmt: skip
async def delete_campaign(campaign_id: str, node: NodeDep) -> Data[View]:
    return Data[View](data=await node.command("campaign.delete", {"campaign_id": campaign_id}))


def _transition(op: str, summary: str) -> None:
    async def change(campaign_id: str, node: NodeDep) -> Data[View]:
        return Data[View](data=await node.command(f"campaign.{op}", {"campaign_id": campaign_id}))

    change.__name__ = f"{op}_campaign"
    router.post(f"/{{campaign_id}}/{op}", response_model=Data[View], responses=_STATE,
                summary=summary)(change)  # fmt: skip


_transition("launch", "Start dialling (draft -> running)")
_transition("pause", "Stop placing new calls for now (calls up go on)")
_transition("resume", "Dial again (paused -> running)")
_transition("stop", "End the campaign for good (calls up go on; no new calls)")


@router.get("/{campaign_id}/stats", response_model=Data[View], responses=_NOT_FOUND,
            summary="Contacts and calls counted, answer rate, durations")  # fmt: skip
async def campaign_stats(campaign_id: str, node: NodeDep) -> Data[View]:
    return Data[View](data=await node.command("campaign.stats", {"campaign_id": campaign_id}))


@router.get("/{campaign_id}/contacts", response_model=Page[View], responses=_NOT_FOUND,
            summary="The campaign's contacts: status, result and attempts of each")  # fmt: skip
async def campaign_contacts(
    campaign_id: str,
    node: NodeDep,
    window: Pagination,
    status: Annotated[str | None, Query(pattern="^(pending|in_progress|done)$")] = None,
) -> Page[View]:
    args: dict[str, Any] = {"campaign_id": campaign_id, "skip": window.skip,
                            "limit": window.limit}  # fmt: skip
    if status:
        args["status"] = status
    result = await node.command("campaign.contacts", args)
    return Page[View](data=result["items"], meta=window.meta(result["meta"]["total"]))


@router.post("/{campaign_id}/contacts", response_model=Data[View],
             responses={**_STATE, **_BODY_ERRORS},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {
                     "type": "object", "required": ["contacts"], "additionalProperties": False,
                     "properties": {"contacts": {
                         "type": "array", "minItems": 1, "maxItems": MAX_CONTACTS_PER_REQUEST,
                         "items": ContactIn.model_json_schema()}}}},
                 "text/csv": {"schema": {"type": "string", "description":
                     "a header row with a `to` column (and optionally `timezone`; any other "
                     "column is a variable), then one contact per row"}}}}},
             summary="Add contacts: JSON, or CSV with a `to` column")  # fmt: skip
async def add_contacts(campaign_id: str, request: Request, node: NodeDep) -> Data[View]:
    await node.command("campaign.get", {"campaign_id": campaign_id})  # 404 before the body
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "text/csv":
        contacts = contacts_from_csv(raw)
    else:
        try:
            body = json.loads(raw)
        except ValueError:
            message = "the body is not JSON (or send text/csv)"
            problem = detail(message, location="body", type="json_invalid")
            raise CommandError("invalid_json", message, [problem]) from None
        if not isinstance(body, dict) or set(body) != {"contacts"}:
            message = 'expected {"contacts": [{"to": ..., "variables": {...}}, ...]}'
            raise CommandError("invalid_parameter", message,
                               [detail(message, field="contacts", location="body")])  # fmt: skip
        contacts = body["contacts"]
    args = {"campaign_id": campaign_id, "contacts": contacts}
    return Data[View](data=await node.command("campaign.add_contacts", args))


def contacts_from_csv(raw: bytes) -> list[dict[str, Any]]:
    """Rows of a CSV upload as contacts; a problem names the row (the header is row 1)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _csv_error("the CSV is not UTF-8", None) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    if "to" not in columns:
        raise _csv_error("the CSV needs a header row with a `to` column", 1)
    contacts = []
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise _csv_error(f"row {number} has more fields than the header", number)
        cells = {k.strip(): (v or "").strip() for k, v in row.items()}
        contact: dict[str, Any] = {"to": cells.pop("to")}
        zone = cells.pop("timezone", "")
        if zone:
            contact["timezone"] = zone
        contact["variables"] = {k: v for k, v in cells.items() if k}
        contacts.append(contact)
    return contacts


def _csv_error(message: str, row: int | None) -> CommandError:
    field = "contacts" if row is None else f"contacts (CSV row {row})"
    problem = detail(message, field=field, location="body", type="csv_invalid")
    return CommandError("invalid_parameter", message, [problem])
