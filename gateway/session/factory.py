"""The session factory the SIP engine calls for every call: echo, an agent WebSocket session,
or a WebRTC session, as the call's agent is configured.

A worker imports only the sessions its agents need, when the factory is made (not on the SIP
thread): the WebSocket session (websockets, numpy, webrtcvad: about 15 MB per worker) only when
the config has a twilio-ws or pcm-ws agent, the WebRTC session (aiortc, av, httpx: about 0.4 s
and 15 MB more) only when it has a WebRTC agent. An echo-only worker imports neither."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.calls.model import CallRecord
from gateway.config import Config
from gateway.session.contract import CallControls, EchoSession, MediaSession, bridge_rate

if TYPE_CHECKING:
    from gateway.session.agent import AgentSession


def make_session_factory(
    config: Config,
    loop: asyncio.AbstractEventLoop,
    streaming: weakref.WeakSet[AgentSession] | None = None,
    after_tick: Callable[[Callable[[], None]], None] | None = None,
) -> Any:
    """Sessions are made on the SIP thread; streaming agents (WebSocket, WebRTC) run their I/O
    on `loop` and are remembered in `streaming` so a stopping worker can let them finish.
    `after_tick`: frames come from `loop`'s own thread (the media plane's clock), and a
    frame's work is handed to this to run when the tick is over, not woken across threads."""
    echo_rate = bridge_rate(config)  # echo needs no resampling at all
    types = {agent.type for agent in config.agents} - {"echo"}
    sessions: dict[str, type[AgentSession]] = {}
    if types:
        from gateway.session.agent import AgentSession

        sessions = dict.fromkeys(types, AgentSession)
    if "webrtc" in types:
        from gateway.session.webrtc import WebRtcSession

        sessions["webrtc"] = WebRtcSession

    def make(record: CallRecord, controls: CallControls) -> MediaSession:
        if record.amd is not None and record.direction == "outbound":
            from gateway.session.amd import AmdSession

            return AmdSession(record, controls, record.amd, make_agent, rate_of(record))
        return make_agent(record, controls)

    def rate_of(record: CallRecord) -> int:
        agent = config.agent(record.agent)
        if agent is None or agent.type == "echo":
            return echo_rate
        from gateway.session.link import link_rate

        return link_rate(agent.type, agent.sample_rate)

    def make_agent(record: CallRecord, controls: CallControls) -> MediaSession:
        agent = config.agent(record.agent)
        wanted = config.recording.enabled if record.record is None else record.record
        recordings = config.storage.recordings_dir if wanted else None
        if agent is None or agent.type == "echo":
            return EchoSession(agent.delay_ms if agent is not None else 200, echo_rate)
        session = sessions[agent.type](
            agent,
            record,
            controls,
            loop,
            config.vad,
            recordings,
            node_id=config.node.id,
            after_tick=after_tick,
        )
        if streaming is not None:
            streaming.add(session)
        return session

    return make
