"""The media session of a call answered by a webrtc agent: the aiortc shell.

Signalling is WHIP-style (RFC 9725): one RTCPeerConnection with a sendrecv audio transceiver
(Opus preferred, PCMU fallback) and a data channel named `events`; the SDP offer is POSTed
(application/sdp, the agent's headers) to the agent's URL, the answer comes back in a 201 whose
Location names the session, and that URL is DELETEd at hangup. aiortc gathers every candidate
before the offer leaves (no trickle): host candidates only unless STUN/TURN is configured.

Everything else — the clock-thread hand-over, playout with marks/clear/barge-in, VAD, the
recorder, timing, failure policy — is AgentSession's; this module only supplies the channel.
On the clock thread nothing changes. On the worker's loop, aiortc's Opus/PCMU encoding runs in
its executor and decoding in its receiver's thread, so other calls' frames do not queue behind
codec work (bench/media_latency.py measures it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from fractions import Fraction
from urllib.parse import urljoin

import aioice.ice
import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from gateway.config import Agent
from gateway.session.agent import CLOSE_TIMEOUT_S, AgentChannel, AgentSession
from gateway.session.link import Message
from gateway.session.wschannel import AgentUnavailable, ChannelClosed
from media.agents.webrtc import EVENTS_CHANNEL, TRACK_RATE, WebRtcLink, answer_codec, prefer_codecs
from media.timing import LatencyStats

log = logging.getLogger("sipedge.agent")

TRACK_BACKLOG_FRAMES = 5  # caller frames the track may hold before it drops the oldest
TIME_BASE = Fraction(1, TRACK_RATE)


# --- host candidates -------------------------------------------------------------------------

# aioice offers every interface but loopback, process-wide. A context variable narrows that per
# peer connection: aiortc gathers inside the task that calls setLocalDescription, so each call
# (and each test peer) sees only the addresses its own agent config names.
_host_addresses: ContextVar[tuple[str, ...]] = ContextVar("sipedge_ice_addresses", default=())
_all_host_addresses = aioice.ice.get_host_addresses


def _configured_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    chosen = _host_addresses.get()
    return list(chosen) if chosen else _all_host_addresses(use_ipv4, use_ipv6)


aioice.ice.get_host_addresses = _configured_host_addresses


@contextlib.contextmanager
def ice_addresses(addresses: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Within this block (this task and tasks it starts), gather host candidates on exactly
    `addresses`; empty means aioice's default."""
    token = _host_addresses.set(tuple(addresses))
    try:
        yield
    finally:
        _host_addresses.reset(token)


def rtc_configuration(agent: Agent) -> RTCConfiguration:
    servers = [
        RTCIceServer(
            urls=list(s.urls),
            username=s.username,
            credential=s.credential.get_secret_value() if s.credential else None,
        )
        for s in agent.ice_servers
    ]
    return RTCConfiguration(iceServers=servers)  # [] = no STUN: host candidates only


# --- the caller's track ----------------------------------------------------------------------


class CallerTrack(MediaStreamTrack):
    """The caller's audio as aiortc pulls it: 20 ms av.AudioFrames of 48 kHz s16 mono.

    Frames are paced by the media clock that pushes them; recv() waits for the next. A backlog
    (aiortc's sender stalled) drops the oldest frames, so latency never accumulates.
    """

    kind = "audio"

    def __init__(self, caller_to_agent: LatencyStats) -> None:
        super().__init__()
        self._frames: deque[tuple[bytes, int]] = deque(maxlen=TRACK_BACKLOG_FRAMES)
        self._ready = asyncio.Event()
        self._pts = 0
        self._caller_to_agent = caller_to_agent

    def push(self, pcm: bytes, frame_ns: int) -> None:
        self._frames.append((pcm, frame_ns))
        self._ready.set()

    async def recv(self) -> AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        pcm, frame_ns = self._frames.popleft()
        samples = len(pcm) // 2
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = TRACK_RATE
        frame.time_base = TIME_BASE
        frame.pts = self._pts
        self._pts += samples
        if frame_ns:
            self._caller_to_agent.record((time.perf_counter_ns() - frame_ns) / 1e6)
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()  # wake recv() so that it raises


def frame_pcm(frame: AudioFrame) -> tuple[bytes, int]:
    """An av.AudioFrame as interleaved PCM16 bytes and its channel count."""
    channels = len(frame.layout.channels)
    array = frame.to_ndarray()
    if frame.format.is_planar:
        array = array.T
    if array.dtype != np.int16:  # float formats: scale to PCM16
        array = np.clip(array * 32768.0, -32768, 32767).astype(np.int16)
    return array.astype("<i2", copy=False).tobytes(), channels


# --- the channel -----------------------------------------------------------------------------


class WebRtcChannel:
    """One call's peer connection to its agent, seen as an AgentChannel: bytes are audio for
    the track (48 kHz from WebRtcLink), text goes on the `events` data channel."""

    def __init__(self, agent: Agent, link: WebRtcLink, caller_to_agent: LatencyStats, call_id: str):
        self.agent = agent
        self.codec: str | None = None
        self.resource_url: str | None = None
        self._link = link
        self._call_id = call_id
        self._headers = {name: v.get_secret_value() for name, v in agent.headers.items()}
        self._pc = RTCPeerConnection(rtc_configuration(agent))
        self._track = CallerTrack(caller_to_agent)
        self._events: RTCDataChannel | None = None
        self._inbox: asyncio.Queue[Message | None] = asyncio.Queue()
        self._reason = "closed"
        self._up = asyncio.Event()  # connection established and events channel open
        self._failed: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False
        self._http = httpx.AsyncClient(trust_env=False, timeout=agent.connect_timeout)

    # -- opening ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Offer, POST, answer, then wait for ICE + DTLS + the events channel; raises
        AgentUnavailable with the reason (the peer connection is closed by then)."""
        agent = self.agent
        try:
            async with asyncio.timeout(agent.connect_timeout):
                answer = await self._negotiate()
                await self._pc.setRemoteDescription(answer)
                self.codec = answer_codec(answer.sdp)
                self._link.codec = self.codec or "unknown"
                await self._wait_up()
        except TimeoutError:
            reason = self._timeout_reason()
        except AgentUnavailable as exc:
            reason = exc.reason
        except ValueError as exc:  # aiortc rejects an answer it cannot use
            reason = f"bad_answer: {exc}"
        else:
            return
        await self.close()
        raise AgentUnavailable(reason)

    async def _negotiate(self) -> RTCSessionDescription:
        pc = self._pc
        transceiver = pc.addTransceiver(self._track, direction="sendrecv")
        transceiver.setCodecPreferences(prefer_codecs(RTCRtpSender.getCapabilities("audio").codecs))
        self._events = pc.createDataChannel(EVENTS_CHANNEL)
        self._events.on("open", self._up_if_ready)
        self._events.on("message", self._inbox.put_nowait)
        self._events.on("close", lambda: self._lost("closed: events channel"))
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        with ice_addresses(self.agent.ice_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        url = str(self.agent.url)
        try:
            response = await self._http.post(
                url,
                content=pc.localDescription.sdp.encode(),
                headers={**self._headers, "Content-Type": "application/sdp"},
            )
        except httpx.TimeoutException as exc:
            raise TimeoutError from exc
        except httpx.HTTPError as exc:
            raise AgentUnavailable(f"connect_failed: {exc}") from exc
        if response.status_code != 201:
            raise AgentUnavailable(f"rejected: HTTP {response.status_code}")
        location = response.headers.get("Location")
        if location:
            self.resource_url = urljoin(url, location)
        if not response.text.startswith("v=0"):
            raise AgentUnavailable("bad_answer: the 201 carries no SDP answer")
        return RTCSessionDescription(sdp=response.text, type="answer")

    async def _wait_up(self) -> None:
        await self._up.wait()
        if self._failed is not None:
            raise AgentUnavailable(self._failed)

    def _up_if_ready(self) -> None:
        events = self._events
        if self._pc.connectionState == "connected" and events and events.readyState == "open":
            self._up.set()

    def _timeout_reason(self) -> str:
        timeout = f"{self.agent.connect_timeout:g}s"
        pc = self._pc
        if pc.remoteDescription is None:
            return f"connect_timeout after {timeout}: no answer"
        if pc.iceConnectionState in ("new", "checking", "failed"):
            return f"ice_failed: no connectivity within {timeout}"
        if pc.connectionState != "connected":
            return f"dtls_failed: no handshake within {timeout}"
        return f"connect_timeout after {timeout}: events channel not open"

    def _on_state(self) -> None:
        state = self._pc.connectionState
        if state == "connected":
            self._up_if_ready()
        elif state == "failed":
            ice = self._pc.iceConnectionState
            self._lost("ice_failed" if ice in ("failed", "checking") else "dtls_failed")
        elif state == "closed":
            self._lost("closed")

    def _lost(self, reason: str) -> None:
        if self._up.is_set() and self._failed is None:
            self._reason = reason  # mid-call: messages() ends with this reason
            self._failed = reason
            self._inbox.put_nowait(None)
        elif not self._up.is_set():
            self._failed = reason
            self._up.set()  # wake open(), which raises with the reason

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._reader is None:
            self._reader = asyncio.ensure_future(self._read_agent(track))

    async def _read_agent(self, track: MediaStreamTrack) -> None:
        link, inbox = self._link, self._inbox
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, AudioFrame):
                    continue
                pcm, channels = frame_pcm(frame)
                inbox.put_nowait(link.agent_frame(pcm, frame.sample_rate, channels))
        except MediaStreamError:
            return

    # -- AgentChannel ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        events = self._events
        return not self._closed and events is not None and events.readyState == "open"

    async def send(self, message: Message, frame_ns: int = 0) -> None:
        if isinstance(message, bytes):
            self._track.push(message, frame_ns)
            return
        if not self.is_open:
            raise ChannelClosed("events channel is not open")
        assert self._events is not None
        self._events.send(message)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            message = await self._inbox.get()
            if message is None:
                return
            yield message

    def close_reason(self) -> str:
        return self._reason

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._track.stop()
        if self._reader is not None:
            self._reader.cancel()
        try:
            await asyncio.wait_for(self._pc.close(), CLOSE_TIMEOUT_S)
        except (TimeoutError, OSError) as exc:
            log.info("event=agent_close_unclean call_id=%s error=%r", self._call_id, exc)
        if self.resource_url is not None:
            await self._delete()
        await self._http.aclose()
        self._inbox.put_nowait(None)

    async def _delete(self) -> None:
        assert self.resource_url is not None
        try:
            response = await self._http.delete(
                self.resource_url, headers=self._headers, timeout=CLOSE_TIMEOUT_S
            )
        except httpx.HTTPError as exc:
            log.warning("event=webrtc_delete_failed call_id=%s error=%r", self._call_id, exc)
            return
        if response.status_code >= 300:
            log.warning(
                "event=webrtc_delete_failed call_id=%s status=%d",
                self._call_id,
                response.status_code,
            )


class WebRtcSession(AgentSession):
    """AgentSession over a WebRTC peer connection (agent type `webrtc`)."""

    link: WebRtcLink

    async def _open(self) -> AgentChannel:
        channel = WebRtcChannel(self.agent, self.link, self.timing.caller_to_agent, self.call_id)
        await channel.open()
        return channel
