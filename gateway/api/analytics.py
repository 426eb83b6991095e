"""`/v1/analytics/calls`: call totals and figures, and the same per hour or day, over the
store's call log (the SQL is store/analytics.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer

from gateway.api.calls import _ERRORS
from gateway.api.common import ApiNode, QueryDateTime, as_utc, node_of, refuse_unknown_query
from gateway.api.models import CallAnalytics, CallBuckets, Data, Direction
from gateway.events.commands import ConfigId
from gateway.store import analytics
from gateway.store.sqlite import CallFilter

router = APIRouter(prefix="/v1/analytics", tags=["analytics"], responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]
CampaignId = Annotated[str | None, Query(min_length=1, max_length=64)]


def call_filter(
    date_from: Annotated[QueryDateTime | None, Query(description="created at or after")] = None,
    date_to: Annotated[QueryDateTime | None, Query(description="created before")] = None,
    trunk: Annotated[ConfigId | None, Query()] = None,
    agent: Annotated[ConfigId | None, Query()] = None,
    direction: Direction | None = None,
    campaign_id: CampaignId = None,
) -> CallFilter:
    """The calls the figures are over (the filters of the call log, and campaign_id)."""
    return CallFilter(created_after=as_utc(date_from), created_before=as_utc(date_to),
                      trunk=trunk, agent=agent, direction=direction,
                      campaign_id=campaign_id)  # fmt: skip


Filters = Annotated[CallFilter, Depends(call_filter)]


def time_zone(
    timezone: Annotated[str, Query(min_length=1, max_length=64,
                                   description="IANA time zone of the buckets")] = "UTC",
) -> ZoneInfo:  # fmt: skip
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        message = "must be an IANA time zone, e.g. Europe/Paris"
        raise RequestValidationError([{"type": "timezone", "loc": ("query", "timezone"),
                                       "msg": message, "input": timezone}]) from None  # fmt: skip


Zone = Annotated[ZoneInfo, Depends(time_zone)]


@router.get("/calls", response_model=Data[CallAnalytics],
            summary="Totals by status, direction, trunk, agent and campaign; answer rate, "
            "durations, time to answer, agent latency")  # fmt: skip
async def call_analytics(node: NodeDep, filters: Filters) -> Data[CallAnalytics]:
    # On a thread: a big log takes a few hundred ms, which the node's loop must not wait for.
    figures = await asyncio.to_thread(analytics.summary, node.store, filters)
    return Data[CallAnalytics](data=CallAnalytics.model_validate(figures))


async def _buckets(
    node: ApiNode, filters: CallFilter, unit: analytics.Unit, zone: ZoneInfo
) -> Data[CallBuckets]:
    rows = await asyncio.to_thread(analytics.buckets, node.store, filters, unit, zone)
    view = {"unit": unit, "timezone": zone.key, "buckets": rows}
    return Data[CallBuckets](data=CallBuckets.model_validate(view))


@router.get(
    "/calls/hourly",
    response_model=Data[CallBuckets],
    summary="Calls per hour of a time zone: total, answered, failed, average duration",
)
async def hourly(node: NodeDep, filters: Filters, zone: Zone) -> Data[CallBuckets]:
    return await _buckets(node, filters, "hour", zone)


@router.get(
    "/calls/daily",
    response_model=Data[CallBuckets],
    summary="Calls per day of a time zone: total, answered, failed, average duration",
)
async def daily(node: NodeDep, filters: Filters, zone: Zone) -> Data[CallBuckets]:
    return await _buckets(node, filters, "day", zone)
