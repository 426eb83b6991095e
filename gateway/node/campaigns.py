"""The node's campaign runner, and the campaign operations (MQTT commands and the HTTP API).

Every `TICK_S` the runner settles each running campaign's attempts whose calls ended (their
outcome read from the call log: the one record of what happened to a call, kill -9 included)
and places the calls that are due: at most `max_concurrent` up at once (within the trunks' and
the node's limits), no faster than `calls_per_second`, only inside the calling window. An
attempt is recorded, with its call's id, before the call is placed (gateway/campaigns/store.py):
after a restart a running campaign goes on where it was, and no attempt is placed twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictStr

from gateway.calls.routing import destination_allowed
from gateway.campaigns.model import (
    CampaignSpec,
    CampaignStatus,
    ContactIn,
    Outcome,
    Pacer,
    duplicate_numbers,
    next_attempt,
    outcome_of,
    window_open,
)
from gateway.campaigns.store import Attempt, Campaign, CampaignStore, Contact
from gateway.errors import CommandError, detail
from gateway.events.commands import Originate, Slice, _Args, unknown_command, validated
from gateway.events.schema import (
    CampaignCompleted,
    CampaignPaused,
    CampaignResumed,
    CampaignStarted,
    CampaignStopped,
    new_call_id,
    utc_now,
)
from gateway.node.operations import OperationsNode, invalid_field, originate

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger("sipedge.campaigns")

TICK_S = 0.05
MAX_CONTACTS_PER_REQUEST = 1000  # per add_contacts (the CSV upload sends them in batches)

REFUSED_RETRY_S = 1.0  # a call the node had no room for is tried again this much later
ENDED = ("completed", "failed")


@dataclass
class _Running:
    """What the runner keeps of a running campaign between ticks (not state to persist)."""

    pacer: Pacer
    placing: set[str] = field(default_factory=set)  # call ids being originated right now
    dialled: int = 0  # calls placed by this runner: which trunk is next


class CampaignRunner:
    def __init__(self, node: OperationsNode, store: CampaignStore, record: Any) -> None:
        """`record(event_data)`: store a campaign event in the outbox."""
        self.node = node
        self.store = store
        self._record = record
        self._running: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # a bug in one tick must not stop every campaign
                log.exception("event=campaign_tick_failed")
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK_S)

    def step(self) -> None:
        for campaign in self.store.campaigns(status=CampaignStatus.RUNNING.value):
            state = self._running.setdefault(
                campaign.id, _Running(Pacer(campaign.spec.pacing.calls_per_second))
            )
            if state.pacer.rate != campaign.spec.pacing.calls_per_second:
                state.pacer.rate = campaign.spec.pacing.calls_per_second
            open_attempts = self._settle(campaign, state)
            if self.store.remaining(campaign.id) == 0:
                self._end(campaign, CampaignStatus.COMPLETED, "all contacts done")
                continue
            self._dial(campaign, state, open_attempts)

    # -- attempts that ended --------------------------------------------------------------

    def _settle(self, campaign: Campaign, state: _Running) -> int:
        """Outcomes of the campaign's attempts whose calls ended; how many are still open."""
        still_open = 0
        for attempt in self.store.open_attempts(campaign.id):
            call = self.node.store.get_call(attempt.call_id)
            if call is None:
                if attempt.call_id in state.placing:
                    still_open += 1
                    continue
                # No call was ever recorded and none is being placed: the node died between
                # the attempt and its INVITE (or the worker refused it). Nothing was dialled.
                self._ended(campaign, attempt, Outcome.NOT_DIALED)
                continue
            if call.status not in ENDED:
                still_open += 1
                continue
            self._ended(campaign, attempt, outcome_of(call.status, call.end_reason,
                                                      self._amd_result(call.id)))  # fmt: skip
        return still_open

    def _amd_result(self, call_id: str) -> str | None:
        """AMD's verdict on the call, from its call.amd event."""
        verdicts = [e for e in self.node.store.call_events(call_id) if e.type == "call.amd"]
        return str(verdicts[-1].data["result"]) if verdicts else None

    def _ended(self, campaign: Campaign, attempt: Attempt, outcome: Outcome) -> None:
        contact_attempts = attempt.attempt
        retry_at = next_attempt(campaign.spec.retries, outcome, contact_attempts, utc_now())
        self.store.end_attempt(attempt, outcome, retry_at)
        log.info("event=campaign_attempt_ended campaign_id=%s contact_id=%d attempt=%d "
                 "call_id=%s outcome=%s retry=%s", campaign.id, attempt.contact_id,
                 attempt.attempt, attempt.call_id, outcome.value,
                 "no" if retry_at is None else "yes")  # fmt: skip

    # -- placing calls --------------------------------------------------------------------

    def concurrency(self, spec: CampaignSpec) -> int:
        """The campaign's max_concurrent within what its trunks and the node can hold."""
        config: Config = self.node.config
        trunks = [config.trunk(t) for t in spec.trunks] or list(config.trunks)
        trunk_room = sum(t.max_concurrent_calls for t in trunks if t is not None)
        return max(0, min(spec.pacing.max_concurrent, trunk_room,
                          config.limits.max_concurrent_calls))  # fmt: skip

    def _dial(self, campaign: Campaign, state: _Running, open_attempts: int) -> None:
        spec = campaign.spec
        room = self.concurrency(spec) - open_attempts
        now = utc_now()
        clock = time.monotonic()
        if room <= 0 or not state.pacer.ready(clock):
            return
        for contact in self.store.due(campaign.id, now, limit=max(room * 4, 16)):
            if room <= 0 or not state.pacer.ready(clock):
                return
            if not window_open(spec.window, now, contact.timezone):
                continue
            attempt = self.store.begin_attempt(contact, new_call_id())
            if attempt is None:
                continue
            state.pacer.take(clock)
            room -= 1
            state.placing.add(attempt.call_id)
            task = asyncio.ensure_future(self._place(campaign, state, contact, attempt))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _place(
        self, campaign: Campaign, state: _Running, contact: Contact, attempt: Attempt
    ) -> None:
        spec = campaign.spec
        trunk = self._trunk_for(spec, contact.to, state)
        variables = {**spec.variables, **contact.variables, "campaign_id": campaign.id,
                     "contact_id": str(contact.id), "attempt": str(attempt.attempt)}  # fmt: skip
        try:
            amd = spec.amd.model_dump(exclude={"enabled"}) if spec.amd.enabled else None
            args = Originate.model_validate({
                "to": contact.to, "from": spec.caller_id, "trunk": trunk, "agent": spec.agent,
                "variables": variables, "ring_timeout": spec.ring_timeout, "amd": amd,
            })  # fmt: skip
            await originate(self.node, args, call_id=attempt.call_id)
        except CommandError as exc:
            if exc.code in ("capacity_exceeded", "rate_limit_exceeded"):
                # Nothing went out: the contact waits, the attempt never happened.
                retry_at = utc_now() + timedelta(seconds=REFUSED_RETRY_S)
                self.store.undo_attempt(attempt, retry_at)
            else:
                log.warning("event=campaign_call_refused campaign_id=%s contact_id=%d code=%s "
                            "error=%s", campaign.id, contact.id, exc.code, exc)  # fmt: skip
                self.store.end_attempt(attempt, Outcome.FAILED, None)
        except Exception:
            log.exception("event=campaign_call_failed campaign_id=%s", campaign.id)
            self.store.end_attempt(attempt, Outcome.FAILED, None)
        finally:
            state.placing.discard(attempt.call_id)

    def _trunk_for(self, spec: CampaignSpec, number: str, state: _Running) -> str | None:
        """The campaign's trunks in turn, among those that may dial the number."""
        if not spec.trunks:
            return None  # the first trunk that may dial it (as POST /v1/calls)
        config = self.node.config
        usable = [
            t
            for t in spec.trunks
            if (trunk := config.trunk(t)) is not None and destination_allowed(trunk, number)
        ]
        if not usable:
            return spec.trunks[0]  # refused by originate, naming the number
        state.dialled += 1
        return usable[(state.dialled - 1) % len(usable)]

    # -- state changes ----------------------------------------------------------------------

    def _end(self, campaign: Campaign, status: CampaignStatus, reason: str) -> None:
        self.store.set_status(campaign.id, status)
        self._running.pop(campaign.id, None)
        model = CampaignCompleted if status is CampaignStatus.COMPLETED else CampaignStopped
        self._record(model(campaign_id=campaign.id, name=campaign.name, status=status.value,
                           reason=reason))  # fmt: skip
        log.info("event=campaign_%s campaign_id=%s reason=%r", status.value, campaign.id, reason)

    def change(self, campaign: Campaign, to: CampaignStatus) -> None:
        """launch (draft -> running), pause, resume, stop: the status, and its event."""
        if to is CampaignStatus.STOPPED:
            self._end(campaign, to, "stopped by request")
            return
        self.store.set_status(campaign.id, to)
        if to is not CampaignStatus.RUNNING:
            self._running.pop(campaign.id, None)
        model = {
            (CampaignStatus.DRAFT, CampaignStatus.RUNNING): CampaignStarted,
            (CampaignStatus.RUNNING, CampaignStatus.PAUSED): CampaignPaused,
            (CampaignStatus.PAUSED, CampaignStatus.RUNNING): CampaignResumed,
        }[(campaign.status, to)]
        self._record(model(campaign_id=campaign.id, name=campaign.name, status=to.value))
        log.info("event=campaign_%s campaign_id=%s", model.event_type.split(".")[1], campaign.id)
        self.wake.set()


# -- operations ------------------------------------------------------------------------------

# (operation, the statuses it may start from, the status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[CampaignStatus], CampaignStatus]] = {
    "launch": (frozenset({CampaignStatus.DRAFT}), CampaignStatus.RUNNING),
    "pause": (frozenset({CampaignStatus.RUNNING}), CampaignStatus.PAUSED),
    "resume": (frozenset({CampaignStatus.PAUSED}), CampaignStatus.RUNNING),
    "stop": (frozenset({CampaignStatus.DRAFT, CampaignStatus.RUNNING, CampaignStatus.PAUSED}),
             CampaignStatus.STOPPED),
}  # fmt: skip


def not_found(campaign_id: str) -> CommandError:
    message = f"no campaign {campaign_id}"
    return CommandError("resource_not_found", message,
                        [detail(message, field="campaign_id", type="not_found")])  # fmt: skip


def check_spec(config: Config, spec: CampaignSpec) -> None:
    """What the config must have for the campaign: its agent and trunks."""
    if config.agent(spec.agent) is None:
        raise invalid_field("agent", f"agent {spec.agent!r} is not configured", "not_configured")
    for i, trunk in enumerate(spec.trunks):
        if config.trunk(trunk) is None:
            message = f"trunk {trunk!r} is not configured"
            raise invalid_field(f"trunks[{i}]", message, "not_configured")
    check_contacts(spec.contacts, set())


def check_contacts(contacts: list[ContactIn], existing: set[str]) -> None:
    repeated = duplicate_numbers(contacts, existing)
    if repeated:
        message = f"contact {repeated[0]} is given twice or is already in the campaign"
        raise CommandError("invalid_parameter", message, [
            detail(f"contact {n} is a duplicate", field="contacts", location="body",
                   type="duplicate_contact") for n in repeated
        ])  # fmt: skip


def campaign_view(store: CampaignStore, campaign: Campaign) -> dict[str, Any]:
    spec = campaign.spec.model_dump(mode="json", by_alias=True, exclude={"contacts"})
    return {
        "id": campaign.id,
        "status": campaign.status.value,
        "created_at": _iso(campaign.created_at),
        "started_at": _iso(campaign.started_at),
        "ended_at": _iso(campaign.ended_at),
        **spec,
        "contacts_total": store.stats(campaign.id)["contacts"]["total"],
    }


def contact_view(store: CampaignStore, contact: Contact) -> dict[str, Any]:
    return {
        "id": contact.id,
        "to": contact.to,
        "variables": contact.variables,
        "timezone": contact.timezone,
        "status": contact.status.value,
        "result": contact.result,
        "attempts": contact.attempts,
        "next_attempt_at": _iso(contact.next_attempt_at),
        "calls": store.attempts_of(contact.id),
    }


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


class _CampaignId(_Args):
    campaign_id: StrictStr = Field(min_length=1, max_length=64)


class _ListArgs(Slice):
    status: CampaignStatus | None = None


class _ContactsArgs(Slice):
    campaign_id: StrictStr = Field(min_length=1, max_length=64)
    status: Literal["pending", "in_progress", "done"] | None = None


class _AddContacts(_CampaignId):
    contacts: list[ContactIn] = Field(min_length=1, max_length=MAX_CONTACTS_PER_REQUEST)


class _Create(CampaignSpec):
    idempotency_key: StrictStr | None = Field(None, min_length=1, max_length=255)


class CampaignOperations:
    """campaign.create, .get, .list, .launch, .pause, .resume, .stop, .delete, .stats,
    .contacts, .add_contacts: one implementation for MQTT commands and the HTTP API."""

    NAMES = ("create", "get", "list", "launch", "pause", "resume", "stop", "delete", "stats",
             "contacts", "add_contacts")  # fmt: skip

    def __init__(self, node: OperationsNode, runner: CampaignRunner) -> None:
        self.node = node
        self.runner = runner
        self.store = runner.store

    async def __call__(self, name: str, raw: dict[str, Any]) -> Any:
        op = name.removeprefix("campaign.")
        if op not in self.NAMES:
            raise unknown_command(name)
        if op == "create":
            return self._create(validated(_Create, name, raw))
        if op == "list":
            args = validated(_ListArgs, name, raw)
            campaigns = self.store.campaigns(None if args.status is None else args.status.value)
            start, limit = args.window()
            page = campaigns[start : start + limit]
            return {"items": [campaign_view(self.store, c) for c in page],
                    "meta": args.meta(len(campaigns))}  # fmt: skip
        if op == "contacts":
            cargs = validated(_ContactsArgs, name, raw)
            self._campaign(cargs.campaign_id)
            offset, limit = cargs.window()
            contacts, total = self.store.contacts(cargs.campaign_id, cargs.status, offset, limit)
            return {
                "items": [contact_view(self.store, c) for c in contacts],
                "meta": cargs.meta(total),
            }
        if op == "add_contacts":
            add = validated(_AddContacts, name, raw)
            campaign = self._campaign(add.campaign_id)
            if campaign.status in (CampaignStatus.COMPLETED, CampaignStatus.STOPPED):
                raise _conflict(f"campaign {campaign.id} is {campaign.status.value}")
            check_contacts(add.contacts, self.store.numbers(campaign.id))
            added = self.store.add_contacts(campaign.id, add.contacts)
            if campaign.status is CampaignStatus.RUNNING:
                self.runner.wake.set()
            return {
                "campaign_id": campaign.id,
                "added": added,
                "contacts_total": self.store.stats(campaign.id)["contacts"]["total"],
            }
        campaign = self._campaign(validated(_CampaignId, name, raw).campaign_id)
        if op == "get":
            return campaign_view(self.store, campaign)
        if op == "stats":
            return {"campaign_id": campaign.id, "status": campaign.status.value,
                    **self.store.stats(campaign.id)}  # fmt: skip
        if op == "delete":
            if campaign.status is not CampaignStatus.DRAFT:
                raise _conflict(f"campaign {campaign.id} is {campaign.status.value}: only a "
                                "draft can be deleted (stop it instead)")  # fmt: skip
            self.store.delete(campaign.id)
            return {"id": campaign.id, "deleted": True}
        allowed, target = TRANSITIONS[op]
        if campaign.status not in allowed:
            raise _conflict(
                f"campaign {campaign.id} is {campaign.status.value}: it cannot "
                f"{op} (from {', '.join(sorted(s.value for s in allowed))})"
            )
        if op == "launch" and self.store.remaining(campaign.id) == 0:
            raise _conflict(f"campaign {campaign.id} has no contacts to call")
        self.runner.change(campaign, target)
        updated = self.store.get(campaign.id)
        assert updated is not None
        return campaign_view(self.store, updated)

    def _create(self, args: _Create) -> dict[str, Any]:
        spec = CampaignSpec.model_validate(args.model_dump(exclude={"idempotency_key"},
                                                           by_alias=True))  # fmt: skip
        check_spec(self.node.config, spec)
        campaign_id = "cmp_" + secrets.token_hex(12)
        if args.idempotency_key:
            body = spec.model_dump(mode="json", by_alias=True)
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
            key = "campaign:" + args.idempotency_key
            claim, fresh = self.node.store.put_idempotency(key, digest, campaign_id)
            if not fresh:
                if claim.request_hash != digest:
                    message = "idempotency key was used with another request"
                    raise CommandError(
                        "conflict",
                        message,
                        [detail(message, field="idempotency_key", type="idempotency_key_reused")],
                    )
                existing = self.store.get(claim.call_id or "")
                if existing is not None:
                    return {**campaign_view(self.store, existing), "replayed": True}
                campaign_id = claim.call_id or campaign_id
        campaign = self.store.create(campaign_id, spec)
        log.info("event=campaign_created campaign_id=%s name=%r contacts=%d", campaign.id,
                 spec.name, len(spec.contacts))  # fmt: skip
        return campaign_view(self.store, campaign)

    def _campaign(self, campaign_id: str) -> Campaign:
        campaign = self.store.get(campaign_id)
        if campaign is None:
            raise not_found(campaign_id)
        return campaign


def _conflict(message: str) -> CommandError:
    return CommandError("conflict", message, [detail(message, field="status", type="state")])
