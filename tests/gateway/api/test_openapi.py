"""The OpenAPI document against the code, by schemathesis: for every operation, a few requests
generated from the schema (valid and invalid) go to the app in-process (ASGI), and every
answer must be documented, match its schema and never be a 500. Bounded to a few examples per
operation so it stays a unit test; it is what keeps the schema and the code from drifting."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from datetime import time
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import TypeAdapter, ValidationError

from gateway.api import create_app
from gateway.api.common import MAX_PAGE, MAX_PER_PAGE, MAX_SKIP
from gateway.config import Config
from gateway.events.commands import ID_PATTERN, MAX_ID
from tests.gateway.api.test_app import AUTH, CONFIG, FakeNode, seed_calls

EXAMPLES_PER_OPERATION = 5
_ID = ID_PATTERN.removeprefix("^").removesuffix("$")  # for re.fullmatch (no `$` before "\\n")


# schemathesis collects one test per operation at import time, so the app is built here, on a
# node whose store lives in a temporary directory removed after the module's tests.
_TMP = tempfile.TemporaryDirectory(prefix="sipedge-schema-")
_NODE = FakeNode(Path(_TMP.name))
# Every trunk may dial every number, so what the schema allows is only refused for ids the
# config lacks (see _configured below).
_NODE.config = Config.model_validate(
    {**CONFIG, "trunks": [{**t, "allowed_destinations": ["+"]} for t in CONFIG["trunks"]]}
)
seed_calls(_NODE)  # the log has calls, so lists have items
_APP = create_app(_NODE, _NODE.config.api.model_copy(update={"rate_limit_per_minute": 10**6}))  # type: ignore[arg-type]
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    _NODE.store.close()
    _TMP.cleanup()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure here is reproducible
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_schema_says(case: Any) -> None:
    _configured(case.body)
    _one_pagination_style(case.query)
    if (
        isinstance(case.query, dict)
        and _zone_like(case.query.get("timezone"))
        and case.query["timezone"]
    ):
        case.query["timezone"] = "UTC"  # any short string to the schema, an IANA zone here
    case.call_and_validate(headers=AUTH)


def _configured(body: Any) -> None:
    """An agent or trunk id that the schema allows but this node's config lacks is a 422 the
    schema cannot know about: such a valid id becomes a configured one, which leaves the body
    exactly as valid (or invalid) as it was generated."""
    if not isinstance(body, dict):
        return
    for field, configured in (("agent", "echo"), ("trunk", "static")):
        value = body.get(field)
        if isinstance(value, str) and len(value) <= MAX_ID and re.fullmatch(_ID, value):
            body[field] = configured
    _campaign_configured(body)


_PAGING = {"page": MAX_PAGE, "per_page": MAX_PER_PAGE}
_OFFSET = {"skip": MAX_SKIP, "limit": MAX_PER_PAGE}


def _one_pagination_style(query: Any) -> None:
    """page/per_page and skip/limit together are a 422 the schema cannot say (two ways of
    asking for one slice): one way is dropped, a valid one if the other is invalid, so the
    query stays exactly as valid (or invalid) as it was generated."""
    if not isinstance(query, dict) or not (set(query) & set(_PAGING) and set(query) & set(_OFFSET)):
        return

    def valid(bounds: dict[str, int]) -> bool:
        least = {"skip": 0}
        return all(isinstance(query[k], int) and not isinstance(query[k], bool)
                   and least.get(k, 1) <= query[k] <= top
                   for k, top in bounds.items() if k in query)  # fmt: skip

    drop = _PAGING if valid(_PAGING) or not valid(_OFFSET) else _OFFSET
    for name in drop:
        query.pop(name, None)


def _campaign_configured(body: dict[str, Any]) -> None:
    """The same for a campaign: its trunks, the time zones (any string to the schema, an IANA
    zone to the node), a window whose end is not after its start or that has no day, and
    contacts given twice: what the schema cannot say becomes what the node takes."""
    trunks = body.get("trunks")
    if isinstance(trunks, list) and all(isinstance(t, str) and re.fullmatch(_ID, t)
                                        and len(t) <= MAX_ID for t in trunks):  # fmt: skip
        body["trunks"] = ["static"] * min(len(trunks), 1)
    window = body.get("window")
    if isinstance(window, dict):
        if _zone_like(window.get("timezone")):
            window["timezone"] = "UTC"
        bounds = [_time_or_none(window.get(k, "00:00")) for k in ("start", "end")]
        local = None not in bounds and all(b.tzinfo is None for b in bounds)  # type: ignore[union-attr]
        if "end" in window and local and bounds[1] <= bounds[0]:  # type: ignore[operator]
            window.pop("end")
        if window.get("days") == []:
            window.pop("days")
    contacts = body.get("contacts")
    if isinstance(contacts, list):
        seen: set[Any] = set()
        kept = []
        for contact in contacts:
            if isinstance(contact, dict):
                if _zone_like(contact.get("timezone")):
                    contact["timezone"] = "UTC"
                number = contact.get("to")
                if isinstance(number, str):
                    if number in seen:
                        continue
                    seen.add(number)
            kept.append(contact)
        body["contacts"] = kept


def _zone_like(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 64  # what the schema allows of a zone


def _time_or_none(value: Any) -> time | None:
    if not isinstance(value, str):
        return None
    try:
        return TypeAdapter(time).validate_python(value)
    except ValidationError:
        return None
