"""The commands a control plane sends (originate, hang up, transfer, send DTMF): their arguments
as pydantic models, the limits on what a request may carry and the hints a user reads instead
of a pattern. One contract for MQTT command payloads and HTTP API bodies; no I/O (the node's
operations carry the commands out)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from gateway.config import E164
from gateway.errors import detail, validation_details
from gateway.events.schema import CommandError

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


# An integer as JSON Schema says one (30 or 30.0); bounds go in the field's Field(...).
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
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


_A = TypeVar("_A", bound=BaseModel)


class AmdRequest(_Args):
    """Answering-machine detection on the answered call (media/amd.py; Asterisk's AMD rules
    and defaults, in ms), and what to do on a machine."""

    action: Literal["connect", "hangup", "wait_for_beep"] = Field(
        "connect", description="on a machine: connect the agent anyway (the result in its "
        "start message), hang up, or wait for the voicemail beep and then connect",
    )  # fmt: skip
    initial_silence_ms: JsonInt = Field(2500, ge=100, le=60_000)
    greeting_ms: JsonInt = Field(1500, ge=100, le=60_000)
    after_greeting_silence_ms: JsonInt = Field(800, ge=100, le=60_000)
    total_analysis_time_ms: JsonInt = Field(5000, ge=500, le=60_000)
    min_word_length_ms: JsonInt = Field(100, ge=20, le=10_000)
    between_words_silence_ms: JsonInt = Field(50, ge=20, le=10_000)
    maximum_number_of_words: JsonInt = Field(2, ge=1, le=100)
    maximum_word_length_ms: JsonInt = Field(5000, ge=100, le=60_000)
    silence_threshold: JsonInt = Field(256, ge=0, le=32767)
    initial_silence_result: Literal["machine", "unknown"] = "machine"
    detect_beep: StrictBool = True
    beep_timeout_ms: JsonInt = Field(
        30_000, ge=1000, le=120_000, description="wait_for_beep: connect anyway after this"
    )


MAX_SIP_HEADERS = 16
SIP_HEADER_NAME = r"^[Xx]-[A-Za-z0-9-]{1,62}$"
SipHeaders = Annotated[
    dict[
        Annotated[StrictStr, Field(pattern=SIP_HEADER_NAME)],
        Annotated[StrictStr, Field(max_length=MAX_VARIABLE_VALUE, pattern=r"^[^\r\n\x00]*$")],
    ],
    Field(max_length=MAX_SIP_HEADERS,
          description=f"X- headers for the INVITE (at most {MAX_SIP_HEADERS}; names X-..., "
          "values of one line)",
          json_schema_extra={"additionalProperties": False}),  # only the names of the pattern
]  # fmt: skip


class Originate(_Args):
    to: E164Number
    from_: E164Number | None = Field(None, alias="from")
    trunk: ConfigId | None = None
    agent: ConfigId
    variables: Variables = Field(default_factory=dict)
    ring_timeout: RingTimeout | None = None
    record: StrictBool | None = None
    amd: AmdRequest | None = None
    sip_headers: SipHeaders = Field(default_factory=dict)
    variables_as_headers: StrictBool = Field(
        False, description="also send each variable as an X-<name> header (names that fit)"
    )
    idempotency_key: StrictStr | None = Field(None, min_length=1, max_length=255)


class Hangup(_Args):
    call_id: CallId


class Transfer(_Args):
    call_id: CallId
    target: TransferTarget


class SendDtmf(_Args):
    call_id: CallId
    digits: DtmfDigits


class Reload(_Args):
    """Read the config file again (as SIGHUP does); no arguments."""


class RecordingOf(_Args):
    """recording.get and recording.delete: the call whose recording it is."""

    call_id: CallId


class RecordingList(_Args):
    """recording.list: the filters and slice of GET /v1/recordings."""

    trunk: ConfigId | None = None
    agent: ConfigId | None = None
    call_id: CallId | None = None
    campaign_id: StrictStr | None = Field(None, min_length=1, max_length=64)
    date_from: AwareDatetime | None = None
    date_to: AwareDatetime | None = None
    skip: int = Field(0, ge=0)
    limit: int = Field(20, ge=1, le=100)


MAX_PAGE = 100  # items per page of a list command, as the HTTP API's lists


class Slice(_Args):
    """Which part of a list a command asks for: page/per_page, or skip/limit (which win
    when given), as the HTTP API takes them."""

    page: int = Field(1, ge=1)
    per_page: int = Field(20, ge=1, le=MAX_PAGE)
    skip: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1, le=MAX_PAGE)

    def window(self) -> tuple[int, int]:
        """(offset, limit) of the slice asked for."""
        limit = self.limit if self.limit is not None else self.per_page
        skip = self.skip if self.skip is not None else (self.page - 1) * limit
        return skip, limit

    def meta(self, total: int) -> dict[str, int]:
        skip, limit = self.window()
        return {"total": total, "page": skip // limit + 1, "per_page": limit, "skip": skip,
                "limit": limit}  # fmt: skip


def unknown_command(name: str) -> CommandError:
    message = f"unknown command {name!r}"
    return CommandError("resource_not_found", message,
                        [detail(message, field="command", type="unknown_command")])  # fmt: skip


def validated(model: type[_A], name: str, raw: dict[str, Any]) -> _A:
    """`raw` as the arguments of command `name`; CommandError naming the field and limit."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise invalid(name, exc) from None


def invalid(name: str, exc: ValidationError) -> CommandError:
    """A command's arguments that failed validation, as the API's invalid_parameter."""
    details = validation_details(exc.errors(include_url=False), hints=PATTERN_HINTS)
    message = details[0]["message"] if details else f"invalid {name} parameters"
    return CommandError("invalid_parameter", message, details)


_ARGS: dict[str, type[_Args]] = {
    "call.originate": Originate, "call.hangup": Hangup, "call.transfer": Transfer,
    "call.send_dtmf": SendDtmf, "node.reload": Reload,
    "recording.get": RecordingOf, "recording.list": RecordingList,
    "recording.delete": RecordingOf,
}  # fmt: skip


def parse_args(name: str, raw: dict[str, Any]) -> _Args:
    """The command's validated arguments; CommandError naming the field and limit if not."""
    model = _ARGS.get(name)
    if model is None:
        raise unknown_command(name)
    return validated(model, name, raw)


COMMANDS = tuple(_ARGS)
