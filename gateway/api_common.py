"""What every HTTP API module shares: the node it serves, the error envelope, pagination."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Query, Request
from fastapi.responses import JSONResponse

from gateway.api_models import ErrorEnvelope, Meta
from gateway.config import Config
from gateway.events import iso_z
from gateway.ledger import Ledger
from gateway.metrics import NodeMetrics
from gateway.publisher import Publisher
from gateway.store import Store

T = TypeVar("T")

MAX_PER_PAGE = 100
DEFAULT_PER_PAGE = 20


class WorkerView(Protocol):
    status: dict[str, Any]
    ready: asyncio.Event
    exited: asyncio.Event


class ApiNode(Protocol):
    """The parts of `supervisor.Node` the API uses (a fake one serves the unit tests)."""

    config: Config
    store: Store
    ledger: Ledger
    publisher: Publisher | None
    metrics: NodeMetrics
    draining: bool
    started_at: float

    @property
    def worker(self) -> WorkerView: ...

    async def command(self, name: str, args: dict[str, Any]) -> Any: ...


def node_of(request: Request) -> ApiNode:
    node: ApiNode = request.app.state.node
    return node


def trunk_states(node: ApiNode) -> dict[str, dict[str, Any]]:
    """Each configured trunk's last known state: the worker's start status, then its events;
    active calls counted now (trunk state events only come with registration changes)."""
    initial = node.worker.status.get("trunks") or {}
    active: dict[str, int] = {}
    for record in node.store.open_calls():
        if record.id in node.ledger.active and record.trunk:
            active[record.trunk] = active.get(record.trunk, 0) + 1
    return {
        t.id: {**initial.get(t.id, {}), **node.ledger.trunks.get(t.id, {}),
               "active_calls": active.get(t.id, 0)}
        for t in node.config.trunks
    }  # fmt: skip


# --- errors -------------------------------------------------------------------------------

_STATUS = {
    "invalid_parameter": 422, "resource_not_found": 404, "unauthorized": 401,
    "rate_limit_exceeded": 429, "conflict": 409, "capacity_exceeded": 503,
    "internal_error": 500,
}  # fmt: skip


def status_for(code: str) -> int:
    return _STATUS.get(code, 500)


def error_response(
    status: int, code: str, message: str, details: Any,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    body = ErrorEnvelope.model_validate({"error": {"code": code, "message": message,
                                                   "details": details}})  # fmt: skip
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers=dict(headers or {})
    )


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """pydantic/FastAPI errors as `{"location", "field", "message", "type"}`, fields named."""
    out: list[dict[str, Any]] = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        location = loc[0] if loc and loc[0] in ("body", "query", "path", "header") else "body"
        field = ".".join(loc[1:] if loc and loc[0] == location else loc)
        kind = str(error.get("type", "value_error"))
        if kind == "extra_forbidden":
            message = f"unknown field {field!r}"
        elif kind == "missing":
            message = f"{field or location} is required"
        elif kind in ("json_invalid", "model_attributes_type") or not field:
            message = (
                "request body must be a JSON object"
                if location == "body"
                else str(error.get("msg"))
            )
        else:
            message = f"{field}: {error.get('msg')}"
        out.append({"location": location, "field": field or None, "message": message,
                    "type": kind})  # fmt: skip
    return out


# --- pagination and times -----------------------------------------------------------------

PageNumber = Annotated[int, Query(ge=1, description="1-based page number")]
PerPage = Annotated[int, Query(ge=1, le=MAX_PER_PAGE, description="items per page (max 100)")]


def meta(total: int, page: int, per_page: int) -> Meta:
    return Meta(total=total, page=page, per_page=per_page)


def page_of(items: Sequence[T], page: int, per_page: int) -> list[T]:
    start = (page - 1) * per_page
    return list(items[start : start + per_page])


def iso(value: datetime | float | None) -> str | None:
    """ISO 8601 UTC with a `Z`, from a datetime or a Unix timestamp."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, tz=UTC)
    return iso_z(value)


def as_utc(value: datetime | None) -> datetime | None:
    """A query datetime without a zone is taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
