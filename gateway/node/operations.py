"""The node's operations (originate, hang up, transfer, send DTMF, reload, recordings), one
implementation shared by MQTT commands and the HTTP API. Arguments are validated by
gateway/events/commands.py; errors are CommandError."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from gateway.calls.routing import destination_allowed
from gateway.errors import detail
from gateway.events.commands import (
    SIP_HEADER_NAME,
    Hangup,
    Originate,
    RecordingList,
    RecordingOf,
    Reload,
    SendDtmf,
    Transfer,
    parse_args,
)  # fmt: skip
from gateway.events.schema import CommandError, new_call_id
from gateway.store.recordings import delete_recording, recorded_call, recording_view
from gateway.store.sqlite import CallFilter

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.store.sqlite import Store


class WorkerRequests(Protocol):
    """The node's SIP workers as one: an outbound call goes to the worker with the most free
    slots, a call's command to the worker that owns it (gateway/node/pool.py)."""

    async def request(self, op: str, args: dict[str, Any] | None = None) -> Any: ...


class OperationsNode(Protocol):
    """The parts of `supervisor.Node` the operations use, so this module needs no import of the
    supervisor (which runs them: that import was a circle)."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> Store: ...

    @property
    def workers(self) -> WorkerRequests: ...

    async def reload(self) -> dict[str, Any]: ...


def call_view(node: OperationsNode, call_id: str) -> dict[str, Any]:
    record = node.store.get_call(call_id)
    if record is None:
        message = f"no call {call_id}"
        raise CommandError("resource_not_found", message,
                           [detail(message, field="call_id", type="not_found")])  # fmt: skip
    view = asdict(record)
    for key, value in list(view.items()):
        if hasattr(value, "isoformat"):
            view[key] = value.isoformat().replace("+00:00", "Z")
    view["from"] = view.pop("from_number")
    view["to"] = view.pop("to_number")
    return view


def invite_headers(args: Originate) -> dict[str, str]:
    """The X- headers an outbound INVITE carries: the variables' (variables_as_headers, for
    names that make a header name), then those given, which win."""
    headers: dict[str, str] = {}
    if args.variables_as_headers:
        for name, value in args.variables.items():
            header = "X-" + name.replace("_", "-")
            if re.fullmatch(SIP_HEADER_NAME, header) and not re.search(r"[\r\n\x00]", value):
                headers[header] = value
    given = {name.lower() for name in args.sip_headers}  # header names ignore case
    return {**{k: v for k, v in headers.items() if k.lower() not in given}, **args.sip_headers}


async def originate(
    node: OperationsNode, args: Originate, call_id: str | None = None
) -> dict[str, Any]:
    """`call_id`: the id the call will have, chosen by the caller (a campaign records it
    before the call is placed); a new one otherwise."""
    config = node.config
    if config.agent(args.agent) is None:
        raise invalid_field("agent", f"agent {args.agent!r} is not configured", "not_configured")
    if args.trunk is None:
        trunk = next((t for t in config.trunks if destination_allowed(t, args.to)), None)
        if trunk is None:
            raise invalid_field("to", f"no trunk may dial {args.to}", "not_routable")
    else:
        trunk = config.trunk(args.trunk)
        if trunk is None:
            raise invalid_field("trunk", f"trunk {args.trunk!r} is not configured",
                                 "not_configured")  # fmt: skip
    call_id = call_id or new_call_id()
    if args.idempotency_key:
        body = args.model_dump(exclude={"idempotency_key"}, by_alias=True)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        claim, fresh = node.store.put_idempotency(args.idempotency_key, digest, call_id)
        if not fresh:
            if claim.request_hash != digest:
                message = "idempotency key was used with another request"
                reused = detail(message, field="idempotency_key", type="idempotency_key_reused")
                raise CommandError("conflict", message, [reused])
            if claim.call_id and node.store.get_call(claim.call_id) is not None:
                return {**call_view(node, claim.call_id), "replayed": True}
            call_id = claim.call_id or call_id
    await node.workers.request(
        "originate",
        {
            "to": args.to,
            "trunk": trunk.id,
            "agent": args.agent,
            "caller_id": args.from_,
            "variables": args.variables,
            "ring_timeout": args.ring_timeout,
            "call_id": call_id,
            "record": args.record,
            "amd": None if args.amd is None else args.amd.model_dump(),
            "sip_headers": invite_headers(args),
        },
    )
    return {
        "id": call_id,
        "status": "dialing",
        "to": args.to,
        "from": args.from_,
        "trunk": trunk.id,
        "agent": args.agent,
        "variables": args.variables,
    }


def list_recordings(node: OperationsNode, args: RecordingList) -> dict[str, Any]:
    filters = CallFilter(trunk=args.trunk, agent=args.agent, call_id=args.call_id,
                         campaign_id=args.campaign_id, created_after=args.date_from,
                         created_before=args.date_to)  # fmt: skip
    rows, total = node.store.list_recordings(filters, args.skip, args.limit)
    return {"items": [recording_view(r) for r in rows],
            "meta": {"total": total, "skip": args.skip, "limit": args.limit}}  # fmt: skip


def invalid_field(field: str, message: str, kind: str) -> CommandError:
    return CommandError("invalid_parameter", message,
                        [detail(message, field=field, location="body", type=kind)])  # fmt: skip


async def run_operation(node: OperationsNode, name: str, raw: dict[str, Any]) -> Any:
    parsed = parse_args(name, raw)
    if isinstance(parsed, Originate):
        return await originate(node, parsed)
    if isinstance(parsed, Hangup):
        await node.workers.request("hangup", {"call_id": parsed.call_id, "by": "control_plane"})
        return {"id": parsed.call_id, "status": "hanging_up"}
    if isinstance(parsed, Transfer):
        target = parsed.target
        if not target.startswith(("sip:", "sips:")):
            record = node.store.get_call(parsed.call_id)
            trunk = node.config.trunk(record.trunk) if record and record.trunk else None
            host = (trunk.proxy or trunk.registrar or "") if trunk else ""
            target = f"sip:{target}@{host.split(':', 1)[1]}" if host else target
        await node.workers.request("transfer", {"call_id": parsed.call_id, "target": target})
        return {"id": parsed.call_id, "target": target, "status": "requested"}
    if isinstance(parsed, SendDtmf):
        digits = parsed.digits
        await node.workers.request("send_dtmf", {"call_id": parsed.call_id, "digits": digits})
        return {"id": parsed.call_id, "digits": digits}
    if isinstance(parsed, Reload):
        return await node.reload()
    if isinstance(parsed, RecordingOf) and name == "recording.delete":
        return delete_recording(node.store, node.config.node.id, parsed.call_id)
    if isinstance(parsed, RecordingOf):
        return recording_view(recorded_call(node.store, parsed.call_id))
    if isinstance(parsed, RecordingList):
        return list_recordings(node, parsed)
    raise AssertionError(f"no implementation of {name}")
