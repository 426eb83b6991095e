"""`/v1/webhooks`: webhook subscriptions, their delivery log and test events; the same
operations as the webhook.* MQTT commands (gateway/node/webhooks.py, through `node.command`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import Field, StrictBool

from gateway.api.calls import _BODY_ERRORS, _ERRORS
from gateway.api.common import ApiNode, Pagination, node_of, refuse_unknown_query
from gateway.api.models import Data, ErrorEnvelope, Page, _Request, _Response
from gateway.webhooks.model import WebhookCreate

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "no such webhook"}
}


class WebhookOut(_Response):
    id: str
    url: str = Field(description="without credentials or query string")
    events: list[str]
    enabled: bool
    source: Literal["config", "api"] = Field(description="config: defined in the config file")
    description: str | None
    consecutive_failures: int = Field(ge=0)
    disabled_reason: str | None
    disabled_at: str | None
    created_at: str
    pending_deliveries: int = Field(ge=0)
    secret: str | None = Field(
        None, description="only in the create answer, when the secret was generated"
    )


class WebhookChange(_Request):
    enabled: StrictBool = Field(description="false disables; true re-enables (failures reset)")


class Deleted(_Response):
    id: str
    deleted: bool


class DeliveryOut(_Response):
    id: int
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int = Field(ge=0)
    status_code: int | None = Field(description="the receiver's last answer")
    latency_ms: int | None = Field(description="of the last attempt")
    last_error: str | None
    created_at: str
    delivered_at: str | None
    next_attempt_at: str | None = Field(description="pending: when it is attempted next")
    test: bool


class TestResult(_Response):
    delivery_id: int
    event_id: str
    delivered: bool = Field(description="the receiver answered 2xx")
    status_code: int | None
    latency_ms: int
    error: str | None


@router.post("", status_code=201, response_model=Data[WebhookOut], responses=_BODY_ERRORS,
             summary="Subscribe a URL to events (a generated secret is shown once)")  # fmt: skip
async def create_webhook(body: WebhookCreate, node: NodeDep) -> JSONResponse:
    result = await node.command("webhook.create", body.model_dump(mode="json"))
    return JSONResponse({"data": result}, status_code=201)


@router.get("", response_model=Page[WebhookOut], summary="Webhook subscriptions")
async def list_webhooks(node: NodeDep, window: Pagination) -> Page[WebhookOut]:
    result = await node.command("webhook.list", {"skip": window.skip, "limit": window.limit})
    return Page[WebhookOut].model_validate({"data": result["items"], "meta": result["meta"]})


@router.get("/{webhook_id}", response_model=Data[WebhookOut], responses=_NOT_FOUND,
            summary="One webhook subscription")  # fmt: skip
async def get_webhook(webhook_id: str, node: NodeDep) -> Data[WebhookOut]:
    result = await node.command("webhook.get", {"webhook_id": webhook_id})
    return Data[WebhookOut].model_validate({"data": result})


@router.patch("/{webhook_id}", response_model=Data[WebhookOut],
              responses={**_NOT_FOUND, **_BODY_ERRORS},
              summary="Enable or disable a subscription")  # fmt: skip
async def change_webhook(webhook_id: str, body: WebhookChange, node: NodeDep) -> Data[WebhookOut]:
    op = "webhook.enable" if body.enabled else "webhook.disable"
    result = await node.command(op, {"webhook_id": webhook_id})
    return Data[WebhookOut].model_validate({"data": result})


@router.delete("/{webhook_id}", response_model=Data[Deleted],
               responses={**_NOT_FOUND, 409: {"model": ErrorEnvelope,
                          "description": "defined in the config file"}},
               summary="Delete a subscription and its queue")  # fmt: skip
async def delete_webhook(webhook_id: str, node: NodeDep) -> Data[Deleted]:
    result = await node.command("webhook.delete", {"webhook_id": webhook_id})
    return Data[Deleted].model_validate({"data": result})


@router.post("/{webhook_id}/test", response_model=Data[TestResult], responses=_NOT_FOUND,
             summary="POST a webhook.test event now and answer what the receiver said")  # fmt: skip
async def test_webhook(webhook_id: str, node: NodeDep) -> Data[TestResult]:
    result = await node.command("webhook.test", {"webhook_id": webhook_id})
    return Data[TestResult].model_validate({"data": result})


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut], responses=_NOT_FOUND,
            summary="The delivery log, newest first")  # fmt: skip
async def webhook_deliveries(
    webhook_id: str,
    node: NodeDep,
    window: Pagination,
    status: Annotated[str | None, Query(pattern="^(pending|delivered|failed)$")] = None,
) -> Page[DeliveryOut]:
    args: dict[str, Any] = {"webhook_id": webhook_id, "skip": window.skip, "limit": window.limit}
    if status:
        args["status"] = status
    result = await node.command("webhook.deliveries", args)
    return Page[DeliveryOut].model_validate({"data": result["items"], "meta": result["meta"]})
