"""`/v1/trunks`, `/v1/numbers`, `/v1/agents`: the node's configuration and live trunk state;
`POST /v1/node/reload`: read the config file again.

Views are built field by field from the config, so no secret (passwords, usernames, agent
header values, credentials in URLs) can reach a response.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.security import HTTPBearer

from gateway.api.calls import _ERRORS
from gateway.api.common import (
    ApiNode,
    Pagination,
    iso,
    node_of,
    path_error,
    refuse_unknown_query,
    trunk_states,
)  # fmt: skip
from gateway.api.models import (
    AgentView,
    Data,
    ErrorEnvelope,
    NumberView,
    Page,
    ReloadResult,
    TrunkView,
)
from gateway.config import Agent, Trunk, public_url

router = APIRouter(prefix="/v1", responses=_ERRORS,
                   dependencies=[Depends(HTTPBearer(auto_error=False)),
                                 Depends(refuse_unknown_query)])  # fmt: skip
NodeDep = Annotated[ApiNode, Depends(node_of)]


def trunk_view(trunk: Trunk, state: dict[str, Any]) -> TrunkView:
    return TrunkView(
        id=trunk.id, registers=trunk.registers, registrar=trunk.registrar, proxy=trunk.proxy,
        domain=trunk.domain, transport=trunk.transport,
        state=str(state.get("state") or ("registering" if trunk.registers else "static")),
        sip_code=state.get("sip_code"), reason=state.get("reason"),
        expires=state.get("expires"), registered_at=iso(state.get("registered_at")),
        next_retry_at=iso(state.get("next_retry_at")),
        active_calls=int(state.get("active_calls") or 0),
        max_concurrent_calls=trunk.max_concurrent_calls,
        allowed_destinations=list(trunk.allowed_destinations),
        allowed_ips=list(trunk.allowed_ips),
    )  # fmt: skip


def agent_view(agent: Agent) -> AgentView:
    return AgentView(
        id=agent.id, type=agent.type, url=public_url(agent.url),
        header_names=sorted(agent.headers), connect_timeout=agent.connect_timeout,
        on_agent_failure=agent.on_agent_failure, sample_rate=agent.sample_rate,
    )  # fmt: skip


@router.get(
    "/trunks",
    tags=["trunks"],
    response_model=Page[TrunkView],
    summary="Trunks with registration state, last code, next retry, calls and limits",
)
async def list_trunks(node: NodeDep, window: Pagination) -> Page[TrunkView]:
    states = trunk_states(node)
    trunks = [trunk_view(t, states.get(t.id, {})) for t in node.config.trunks]
    return Page[TrunkView](data=window.of(trunks), meta=window.meta(len(trunks)))


@router.get(
    "/trunks/{trunk_id}",
    tags=["trunks"],
    response_model=Data[TrunkView],
    responses={404: {"model": ErrorEnvelope, "description": "no such trunk"}},
)
async def get_trunk(trunk_id: str, node: NodeDep) -> Data[TrunkView]:
    trunk = node.config.trunk(trunk_id)
    if trunk is None:
        message = f"no trunk {trunk_id}"
        raise path_error("resource_not_found", message, "trunk_id")
    return Data[TrunkView](data=trunk_view(trunk, trunk_states(node).get(trunk_id, {})))


@router.get(
    "/numbers",
    tags=["numbers"],
    response_model=Page[NumberView],
    summary="Phone numbers and the agents they route to",
)
async def list_numbers(node: NodeDep, window: Pagination) -> Page[NumberView]:
    numbers = [
        NumberView(
            number=n.number,
            agent=n.agent,
            trunk=n.trunk,
            variables=n.variables,
            answer_delay_ms=n.answer_delay_ms,
        )
        for n in node.config.numbers
    ]
    return Page[NumberView](data=window.of(numbers), meta=window.meta(len(numbers)))


@router.get(
    "/agents",
    tags=["agents"],
    response_model=Page[AgentView],
    summary="Agents (header values and URL credentials are never shown)",
)
async def list_agents(node: NodeDep, window: Pagination) -> Page[AgentView]:
    agents = [agent_view(a) for a in node.config.agents]
    return Page[AgentView](data=window.of(agents), meta=window.meta(len(agents)))


@router.post(
    "/node/reload",
    tags=["node"],
    response_model=Data[ReloadResult],
    responses={422: {"model": ErrorEnvelope, "description": "the config was refused; the "
                     "node runs on the config it had (one detail per problem)"}},
    summary="Read the config file again, as SIGHUP does (no call is dropped)",
)  # fmt: skip
async def reload_config(node: NodeDep) -> Data[ReloadResult]:
    result = await node.command("node.reload", {})
    return Data[ReloadResult](data=ReloadResult.model_validate(result))
