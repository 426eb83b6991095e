"""The webhook operations (MQTT commands webhook.* and the HTTP API /v1/webhooks), and how
the node keeps the config's subscriptions and the sender (gateway/webhooks/).

Secrets are never returned, but once: the one generated for a subscription created without
one, in the create answer. URLs are shown without credentials or query string.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictStr

from gateway.config import public_url
from gateway.errors import CommandError, detail
from gateway.events.commands import Slice, _Args, unknown_command, validated
from gateway.events.schema import EVENT_TYPES, Event, WebhookTest, iso_z
from gateway.webhooks.model import WebhookCreate, new_secret, new_webhook_id, unknown_patterns
from gateway.webhooks.sender import WebhookSender
from gateway.webhooks.store import ConfiguredWebhook, Delivery, Subscription, WebhookStore

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger("sipedge.webhooks")


def configured(config: Config) -> list[ConfiguredWebhook]:
    return [
        ConfiguredWebhook(w.id, w.url, list(w.events), w.enabled, w.secret.get_secret_value())
        for w in config.webhooks
    ]


def sync_config(store: WebhookStore, config: Config) -> None:
    """The config's subscriptions into the store, with a log line for each and for what
    the config no longer has."""
    removed = store.sync_config(configured(config))
    for webhook_id in removed:
        log.info("event=webhook_removed webhook=%s reason=not_in_config", webhook_id)
    for w in config.webhooks:
        sub = store.get(w.id)
        log.info("event=webhook_configured webhook=%s url=%s events=%s enabled=%s", w.id,
                 public_url(w.url), ",".join(w.events),
                 str(sub is not None and sub.enabled).lower())  # fmt: skip
        unknown = unknown_patterns(w.events, EVENT_TYPES)
        if unknown:
            log.warning("event=webhook_patterns_match_nothing webhook=%s patterns=%s", w.id,
                        ",".join(unknown))  # fmt: skip


# -- views ----------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else iso_z(value)


def webhook_view(store: WebhookStore, sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "url": public_url(sub.url),
        "events": sub.events,
        "enabled": sub.enabled,
        "source": sub.source,
        "description": sub.description,
        "consecutive_failures": sub.consecutive_failures,
        "disabled_reason": sub.disabled_reason,
        "disabled_at": _iso(sub.disabled_at),
        "created_at": _iso(sub.created_at),
        "pending_deliveries": store.pending(sub.id),
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    pending = delivery.status.value == "pending"
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "status": delivery.status.value,
        "attempts": delivery.attempts,
        "status_code": delivery.status_code,
        "latency_ms": delivery.latency_ms,
        "last_error": delivery.last_error,
        "created_at": _iso(delivery.created_at),
        "delivered_at": _iso(delivery.delivered_at),
        "next_attempt_at": (
            iso_z(datetime.fromtimestamp(delivery.next_attempt_at, tz=UTC)) if pending else None
        ),
        "test": delivery.test,
    }


# -- arguments ------------------------------------------------------------------------------


class _WebhookId(_Args):
    webhook_id: StrictStr = Field(min_length=1, max_length=64)


class _DeliveriesArgs(Slice):
    webhook_id: StrictStr = Field(min_length=1, max_length=64)
    status: Literal["pending", "delivered", "failed"] | None = None


def not_found(webhook_id: str) -> CommandError:
    message = f"no webhook {webhook_id}"
    return CommandError("resource_not_found", message,
                        [detail(message, field="webhook_id", type="not_found")])  # fmt: skip


class WebhookOperations:
    """webhook.create, .list, .get, .delete, .enable, .disable, .test, .deliveries: one
    implementation for MQTT commands and the HTTP API."""

    NAMES = ("create", "list", "get", "delete", "enable", "disable", "test", "deliveries")

    def __init__(self, store: WebhookStore, sender: WebhookSender, node_id: str) -> None:
        self.store = store
        self.sender = sender
        self.node_id = node_id

    async def __call__(self, name: str, raw: dict[str, Any]) -> Any:
        op = name.removeprefix("webhook.")
        if op not in self.NAMES:
            raise unknown_command(name)
        if op == "create":
            return self._create(validated(WebhookCreate, name, raw))
        if op == "list":
            args = validated(Slice, name, raw)
            subs = self.store.subscriptions()
            start, limit = args.window()
            return {"items": [webhook_view(self.store, s) for s in subs[start : start + limit]],
                    "meta": args.meta(len(subs))}  # fmt: skip
        if op == "deliveries":
            dargs = validated(_DeliveriesArgs, name, raw)
            self._get(dargs.webhook_id)
            skip, limit = dargs.window()
            rows, total = self.store.deliveries(dargs.webhook_id, dargs.status, skip, limit)
            return {"items": [delivery_view(d) for d in rows], "meta": dargs.meta(total)}
        sub = self._get(validated(_WebhookId, name, raw).webhook_id)
        if op == "get":
            return webhook_view(self.store, sub)
        if op == "delete":
            if sub.source == "config":
                message = (f"webhook {sub.id} is defined in the config file: remove it there "
                           "(or disable it)")  # fmt: skip
                found = detail(message, field="webhook_id", type="configured")
                raise CommandError("conflict", message, [found])
            self.store.delete(sub.id)
            log.info("event=webhook_deleted webhook=%s", sub.id)
            return {"id": sub.id, "deleted": True}
        if op in ("enable", "disable"):
            if self.store.set_enabled(sub.id, op == "enable", "disabled by request"):
                log.info("event=webhook_%sd webhook=%s url=%s", op, sub.id, public_url(sub.url))
                self.sender.wake()
            return webhook_view(self.store, self._get(sub.id))
        assert op == "test"
        event = Event.of(WebhookTest(webhook_id=sub.id), node=self.node_id)
        delivery_id, result = await self.sender.send_test(sub, event)
        return {
            "delivery_id": delivery_id,
            "event_id": event.id,
            "delivered": result.error is None,
            "status_code": result.status_code,
            "latency_ms": result.latency_ms,
            "error": result.error,
        }

    def _create(self, args: WebhookCreate) -> dict[str, Any]:
        secret = args.secret or new_secret()
        sub = self.store.create(new_webhook_id(), args.url, list(dict.fromkeys(args.events)),
                                secret, args.description, args.enabled)  # fmt: skip
        log.info("event=webhook_created webhook=%s url=%s events=%s", sub.id,
                 public_url(sub.url), ",".join(sub.events))  # fmt: skip
        self.sender.wake()
        view = webhook_view(self.store, sub)
        if args.secret is None:
            view["secret"] = secret  # the only time it is shown
        return view

    def _get(self, webhook_id: str) -> Subscription:
        sub = self.store.get(webhook_id)
        if sub is None:
            raise not_found(webhook_id)
        return sub
