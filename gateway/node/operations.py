"""The node's operations (originate, hang up, transfer, send DTMF), one implementation shared by
MQTT commands and the HTTP API. Arguments are validated by pydantic; errors are CommandError."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from gateway.calls.routing import destination_allowed
from gateway.config import E164
from gateway.errors import detail, validation_details
from gateway.events.schema import CommandError, new_call_id

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


# --- limits on what a request may carry (HTTP bodies and MQTT command payloads alike) ------

MAX_REQUEST_BYTES = 64 * 1024  # a whole HTTP body or MQTT command payload
MAX_VARIABLES = 64  # entries in `variables`
MAX_VARIABLE_NAME = 64  # characters of one key
MAX_VARIABLE_VALUE = 1024  # characters of one value
MAX_VARIABLES_BYTES = 16 * 1024  # UTF-8 bytes of all keys and values together
MAX_ID = 64  # agent, trunk ids
MAX_TARGET = 256  # a transfer target

ID_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"  # the config's agent and trunk ids
DTMF_PATTERN = r"^[0-9*#A-Da-d]{1,64}$"
TARGET_PATTERN = r"^(\+[1-9][0-9]{1,14}|sips?:\S+)$"

# What a user reads instead of a regex when a value does not match it.
PATTERN_HINTS = {
    E164: "must be E.164, e.g. +15551234567",
    ID_PATTERN: "must be an id of lower-case letters, digits, '-' and '_'",
    DTMF_PATTERN: "must be 1 to 64 DTMF digits (0-9, *, #, A-D)",
    TARGET_PATTERN: "must be an E.164 number (e.g. +15551234567) or a sip:/sips: URI",
}


def _variables_fit(value: dict[str, str]) -> dict[str, str]:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in value.items())
    if size > MAX_VARIABLES_BYTES:
        raise PydanticCustomError(
            "too_large",
            "at most {limit} bytes of keys and values in total (got {size})",
            {"limit": MAX_VARIABLES_BYTES, "size": size},
        )
    return value


E164Number = Annotated[StrictStr, Field(pattern=E164, examples=["+15551234567"])]
ConfigId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]
VariableName = Annotated[StrictStr, Field(min_length=1, max_length=MAX_VARIABLE_NAME)]
VariableValue = Annotated[StrictStr, Field(max_length=MAX_VARIABLE_VALUE)]
Variables = Annotated[
    dict[VariableName, VariableValue],
    Field(
        max_length=MAX_VARIABLES,
        description=f"custom variables: at most {MAX_VARIABLES} entries, names of 1 to "
        f"{MAX_VARIABLE_NAME} characters, values of up to {MAX_VARIABLE_VALUE} characters, "
        f"{MAX_VARIABLES_BYTES} bytes in total",
    ),
    AfterValidator(_variables_fit),
]


def _json_integer(value: Any) -> Any:
    # What JSON Schema calls an integer: 30 or 30.0, never true or "30" (which pydantic's lax
    # int would take as 1 and 30; StrictInt would also refuse 30.0, which the schema allows).
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "must be an integer")
    return value


# The bounds come before the validator, so the JSON schema keeps them (minimum/maximum).
RingTimeout = Annotated[
    int, Field(ge=1, le=600, description="seconds"), BeforeValidator(_json_integer)
]
DtmfDigits = Annotated[StrictStr, Field(pattern=DTMF_PATTERN, description="sent as RFC 4733")]
TransferTarget = Annotated[
    StrictStr,
    Field(min_length=1, max_length=MAX_TARGET, pattern=TARGET_PATTERN,
          description="E.164 number (via the call's trunk) or SIP URI"),
]  # fmt: skip
CallId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID)]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Originate(_Args):
    to: E164Number
    from_: E164Number | None = Field(None, alias="from")
    trunk: ConfigId | None = None
    agent: ConfigId
    variables: Variables = Field(default_factory=dict)
    ring_timeout: RingTimeout | None = None
    record: StrictBool | None = None
    idempotency_key: StrictStr | None = Field(None, min_length=1, max_length=255)


class Hangup(_Args):
    call_id: CallId


class Transfer(_Args):
    call_id: CallId
    target: TransferTarget


class SendDtmf(_Args):
    call_id: CallId
    digits: DtmfDigits


def invalid(name: str, exc: ValidationError) -> CommandError:
    """A command's arguments that failed validation, as the API's invalid_parameter."""
    details = validation_details(exc.errors(include_url=False), hints=PATTERN_HINTS)
    message = details[0]["message"] if details else f"invalid {name} parameters"
    return CommandError("invalid_parameter", message, details)


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


async def originate(node: OperationsNode, args: Originate) -> dict[str, Any]:
    config = node.config
    if config.agent(args.agent) is None:
        raise _invalid_field("agent", f"agent {args.agent!r} is not configured", "not_configured")
    if args.trunk is None:
        trunk = next((t for t in config.trunks if destination_allowed(t, args.to)), None)
        if trunk is None:
            raise _invalid_field("to", f"no trunk may dial {args.to}", "not_routable")
    else:
        trunk = config.trunk(args.trunk)
        if trunk is None:
            raise _invalid_field("trunk", f"trunk {args.trunk!r} is not configured",
                                 "not_configured")  # fmt: skip
    call_id = new_call_id()
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


def _invalid_field(field: str, message: str, kind: str) -> CommandError:
    return CommandError("invalid_parameter", message,
                        [detail(message, field=field, location="body", type=kind)])  # fmt: skip


_ARGS: dict[str, type[_Args]] = {
    "call.originate": Originate, "call.hangup": Hangup, "call.transfer": Transfer,
    "call.send_dtmf": SendDtmf,
}  # fmt: skip


def parse_args(name: str, raw: dict[str, Any]) -> _Args:
    """The command's validated arguments; CommandError naming the field and limit if not."""
    model = _ARGS.get(name)
    if model is None:
        message = f"unknown command {name!r}"
        raise CommandError("resource_not_found", message,
                           [detail(message, field="command", type="unknown_command")])  # fmt: skip
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(name, exc) from None


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
    raise AssertionError(f"no implementation of {name}")


COMMANDS = tuple(_ARGS)
