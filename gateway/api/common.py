"""What every HTTP API module shares: the node it serves, the error envelope, pagination."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from gateway.api.models import ErrorEnvelope, Meta
from gateway.config import Config
from gateway.errors import CommandError, detail, validation_details
from gateway.events.commands import PATTERN_HINTS
from gateway.events.publisher import Publisher
from gateway.events.schema import iso_z
from gateway.front.health import FrontHealth
from gateway.metrics import NodeMetrics
from gateway.store.sqlite import Store
from gateway.webhooks.model import URL_HINT, URL_PATTERN

T = TypeVar("T")

MAX_PER_PAGE = 100
MAX_PAGE = 1_000_000  # keeps (page - 1) * per_page far inside SQLite's 64-bit integers
DEFAULT_PER_PAGE = 20


class WorkerRow(Protocol):
    """One SIP worker as the node describes it (node/placement.py: WorkerState)."""

    @property
    def index(self) -> int: ...

    @property
    def running(self) -> bool: ...

    @property
    def capacity(self) -> int: ...

    @property
    def active_calls(self) -> int: ...

    @property
    def restarts(self) -> int: ...

    def as_dict(self) -> dict[str, Any]: ...


class WorkersView(Protocol):
    """The node's SIP workers as the API reports them (node/pool.py), a contract like
    LedgerView."""

    ready: asyncio.Event  # every worker has started once: the trunks are loaded

    @property
    def capacity(self) -> int: ...  # calls the node holds at once, within its limit

    def states(self) -> Sequence[WorkerRow]: ...

    def trunk_status(self) -> dict[str, dict[str, Any]]: ...


class LedgerView(Protocol):
    """What the API reads of the node's ledger (node/ledger.py): the calls in progress and each
    trunk's last reported state; a contract, so api/ needs no import of node/."""

    @property
    def active(self) -> Collection[str]: ...

    @property
    def trunks(self) -> Mapping[str, Mapping[str, Any]]: ...


class ApiNode(Protocol):
    """The parts of `supervisor.Node` the API uses (a fake one serves the unit tests)."""

    config: Config
    store: Store
    publisher: Publisher | None
    metrics: NodeMetrics
    draining: bool
    started_at: float

    @property
    def ledger(self) -> LedgerView: ...

    @property
    def workers(self) -> WorkersView: ...

    async def command(self, name: str, args: dict[str, Any]) -> Any: ...

    async def front_health(self) -> FrontHealth | None: ...


def node_of(request: Request) -> ApiNode:
    node: ApiNode = request.app.state.node
    return node


def trunk_states(node: ApiNode) -> dict[str, dict[str, Any]]:
    """Each configured trunk's last known state: the worker's start status, then its events;
    active calls counted now (trunk state events only come with registration changes)."""
    initial = node.workers.trunk_status()
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


def error_response(
    code: str, message: str, details: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    """The error envelope with the status that `code` has in the shared vocabulary."""
    error = CommandError(code, message, details)
    body = ErrorEnvelope.model_validate(error.to_dict())
    return JSONResponse(body.model_dump(mode="json"), status_code=error.http_status,
                        headers=dict(headers or {}))  # fmt: skip


def path_error(code: str, message: str, field: str, kind: str = "not_found") -> CommandError:
    """An error about a path parameter (`call_id`, `trunk_id`)."""
    return CommandError(code, message, [detail(message, field=field, location="path", type=kind)])


SORT_PATTERN = r"^-?(created_at|answered_at|ended_at|duration|status)$"
_HINTS = {
    **PATTERN_HINTS,
    URL_PATTERN: URL_HINT,
    SORT_PATTERN: "must be one of created_at, answered_at, ended_at, duration, status, "
    "with a leading '-' for descending",
}


def request_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """FastAPI's validation errors as `details`, with regexes said in words."""
    return validation_details(errors, hints=_HINTS)


def _query_names(dependant: Any) -> set[str]:
    names = {str(param.alias) for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """Unknown query parameters are refused by name, like unknown body fields (a typo such as
    `stauts=failed` must not silently return every call)."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = _query_names(dependant)
    unknown = [name for name in request.query_params if name not in known]
    if unknown:
        raise RequestValidationError([
            {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown", "input": None}
            for name in dict.fromkeys(unknown)
        ])  # fmt: skip


# --- pagination and times -----------------------------------------------------------------

MAX_SKIP = MAX_PAGE * MAX_PER_PAGE


@dataclass(frozen=True, slots=True)
class Window:
    """Which slice of a list a request asked for, said either way: `page`/`per_page` or
    `skip`/`limit`. Routes take it as one dependency (`Pagination`) and answer `meta` both ways."""

    skip: int = 0
    limit: int = DEFAULT_PER_PAGE

    @property
    def page(self) -> int:
        """The 1-based page the first item is on (with skip a multiple of limit, exact)."""
        return self.skip // self.limit + 1

    def meta(self, total: int) -> Meta:
        return Meta(total=total, page=self.page, per_page=self.limit, skip=self.skip,
                    limit=self.limit)  # fmt: skip

    def of(self, items: Sequence[T]) -> list[T]:
        return list(items[self.skip : self.skip + self.limit])


def pagination(
    page: Annotated[int | None, Query(ge=1, le=MAX_PAGE, description="1-based page number")]
    = None,
    per_page: Annotated[int | None, Query(ge=1, le=MAX_PER_PAGE,
                                          description="items per page (max 100)")] = None,
    skip: Annotated[int | None, Query(ge=0, le=MAX_SKIP,
                                      description="items to skip (instead of page)")] = None,
    limit: Annotated[int | None, Query(ge=1, le=MAX_PER_PAGE,
                                       description="items to return, max 100 "
                                       "(instead of per_page)")] = None,
) -> Window:  # fmt: skip
    """page/per_page or skip/limit, never both (a 422 naming the parameters of each way)."""
    paged = {name: v for name, v in (("page", page), ("per_page", per_page)) if v is not None}
    offset = {name: v for name, v in (("skip", skip), ("limit", limit)) if v is not None}
    if paged and offset:
        message = "use page/per_page or skip/limit, not both"
        raise RequestValidationError([
            {"type": "pagination_mixed", "loc": ("query", name), "msg": message, "input": value}
            for name, value in {**paged, **offset}.items()
        ])  # fmt: skip
    if offset:
        return Window(skip=skip or 0, limit=limit or DEFAULT_PER_PAGE)
    size = per_page or DEFAULT_PER_PAGE
    return Window(skip=((page or 1) - 1) * size, limit=size)


Pagination = Annotated[Window, Depends(pagination)]


def iso(value: datetime | float | None) -> str | None:
    """ISO 8601 UTC with a `Z`, from a datetime or a Unix timestamp."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, tz=UTC)
    return iso_z(value)


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_only(value: Any) -> Any:
    # pydantic would also take a number ("0.5") as a Unix time; the schema says date-time.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise PydanticCustomError(
            "datetime_format", "must be an ISO 8601 date-time, e.g. 2024-05-01T12:00:00Z"
        )
    return value


QueryDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


def as_utc(value: datetime | None) -> datetime | None:
    """A query datetime without a zone is taken as UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
