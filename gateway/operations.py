"""The node's operations (originate, hang up, transfer, send DTMF), one implementation shared by
MQTT commands and the HTTP API. Arguments are validated by pydantic; errors are CommandError."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.calls import destination_allowed
from gateway.config import E164
from gateway.events import CommandError, new_call_id

if TYPE_CHECKING:
    from gateway.supervisor import Node


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Originate(_Args):
    to: str = Field(pattern=E164)
    from_: str | None = Field(None, alias="from", pattern=E164)
    trunk: str | None = None
    agent: str
    variables: dict[str, str] = Field(default_factory=dict)
    ring_timeout: int | None = Field(None, ge=1, le=600)
    record: bool | None = None
    idempotency_key: str | None = Field(None, min_length=1, max_length=255)


class Hangup(_Args):
    call_id: str


class Transfer(_Args):
    call_id: str
    target: str = Field(min_length=1, description="E.164 number or SIP URI")


class SendDtmf(_Args):
    call_id: str
    digits: str = Field(pattern=r"^[0-9*#A-Da-d]{1,64}$")


def call_view(node: Node, call_id: str) -> dict[str, Any]:
    record = node.store.get_call(call_id)
    if record is None:
        raise CommandError("resource_not_found", f"no call {call_id}")
    view = asdict(record)
    for key, value in list(view.items()):
        if hasattr(value, "isoformat"):
            view[key] = value.isoformat().replace("+00:00", "Z")
    view["from"] = view.pop("from_number")
    view["to"] = view.pop("to_number")
    return view


async def originate(node: Node, args: Originate) -> dict[str, Any]:
    config = node.config
    if config.agent(args.agent) is None:
        raise CommandError(
            "invalid_parameter", f"agent {args.agent!r} is not configured", {"field": "agent"}
        )
    if args.trunk is None:
        trunk = next((t for t in config.trunks if destination_allowed(t, args.to)), None)
        if trunk is None:
            raise CommandError("invalid_parameter", f"no trunk may dial {args.to}", {"field": "to"})
    else:
        trunk = config.trunk(args.trunk)
        if trunk is None:
            raise CommandError(
                "invalid_parameter", f"trunk {args.trunk!r} is not configured", {"field": "trunk"}
            )
    call_id = new_call_id()
    if args.idempotency_key:
        body = args.model_dump(exclude={"idempotency_key"}, by_alias=True)
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        claim, fresh = node.store.put_idempotency(args.idempotency_key, digest, call_id)
        if not fresh:
            if claim.request_hash != digest:
                raise CommandError(
                    "conflict",
                    "idempotency key was used with another request",
                    {"idempotency_key": args.idempotency_key},
                )
            if claim.call_id and node.store.get_call(claim.call_id) is not None:
                return {**call_view(node, claim.call_id), "replayed": True}
            call_id = claim.call_id or call_id
    await node.worker.request(
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


async def run_operation(node: Node, name: str, raw: dict[str, Any]) -> Any:
    if name == "call.originate":
        return await originate(node, Originate.model_validate(raw))
    if name == "call.hangup":
        args = Hangup.model_validate(raw)
        await node.worker.request("hangup", {"call_id": args.call_id, "by": "control_plane"})
        return {"id": args.call_id, "status": "hanging_up"}
    if name == "call.transfer":
        targs = Transfer.model_validate(raw)
        target = targs.target
        if not target.startswith(("sip:", "sips:")):
            if not re.match(E164, target):
                raise CommandError(
                    "invalid_parameter", "target must be E.164 or a SIP URI", {"field": "target"}
                )
            record = node.store.get_call(targs.call_id)
            trunk = node.config.trunk(record.trunk) if record and record.trunk else None
            host = (trunk.proxy or trunk.registrar or "") if trunk else ""
            target = f"sip:{target}@{host.split(':', 1)[1]}" if host else target
        await node.worker.request("transfer", {"call_id": targs.call_id, "target": target})
        return {"id": targs.call_id, "target": target, "status": "requested"}
    if name == "call.send_dtmf":
        dargs = SendDtmf.model_validate(raw)
        await node.worker.request("send_dtmf", {"call_id": dargs.call_id, "digits": dargs.digits})
        return {"id": dargs.call_id, "digits": dargs.digits}
    raise CommandError("resource_not_found", f"unknown command {name!r}")


COMMANDS = ("call.originate", "call.hangup", "call.transfer", "call.send_dtmf")
