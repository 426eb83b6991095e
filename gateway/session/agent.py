"""The media session of a call answered by an agent: the WebSocket transports (twilio-ws,
pcm-ws) here, webrtc in gateway/session/webrtc.py through the same AgentChannel seam.

Three threads touch a session. pjmedia's clock thread calls on_caller_frame/next_frame every
20 ms: they only append to deques and take one frame from Playout under a lock. The worker's
asyncio loop owns everything else: the WebSocket, the wire protocol, VAD and barge-in, timing
and the recorder's frame pairing. A writer thread does the recording's file I/O
(gateway/session/recording.py); the protocol logic is sans-IO in gateway/session/link.py.

Caller frames cross to asyncio as a deque append plus one `call_soon_threadsafe` per frame
(skipped while a wake is already pending). Measured (bench/media_latency.py): ~9 µs per frame
on the clock thread when every frame wakes the loop, 0.05% of a core per call, and the frame is
written to the agent ~0.6 ms after it reached us; a 20 ms asyncio-side drain would save those
µs but add up to 20 ms. VAD runs on the asyncio side: webrtcvad costs only ~3 µs per frame, but
its events, barge-in and the agent messages they cause all live on the loop, and the clock
thread must never wait on any of that.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.backoff import Backoff
from gateway.calls.events import (
    AgentLinkDown,
    AgentLinkUp,
    CallEvent,
    RecordingFinished,
    SpeechBegan,
    SpeechEnded,
)
from gateway.calls.model import CallRecord
from gateway.config import Agent, VadSettings, public_url
from gateway.session.contract import CallControls
from gateway.session.link import (
    MediaTiming,
    Message,
    PlayoutLatency,
    barge_in_enabled,
    make_link,
)
from gateway.session.recording import RecordingWriter
from gateway.session.wschannel import AgentUnavailable, ChannelClosed, FastWebSocketChannel
from media.agents.events import AgentAudio, AgentClear, AgentHangup, AgentMark
from media.conversation import Conversation, FrameAligner, Speech
from media.errors import PlayoutOverflow, ProtocolError
from media.filler import Filler
from media.frames import bytes_per_frame
from media.playout import Playout
from media.recorder import Recording
from media.vad import SpeechStarted

log = logging.getLogger("sipedge.agent")

TICK_S = 0.1  # fallback wake-up when the caller side sends no frames (hold, RTP gap)
# (not on the media plane's clock: there every played frame hands the session its work)
CLOSE_TIMEOUT_S = 2.0
RECORDING_CLOSE_TIMEOUT_S = 5.0  # the WAV's last frames and header, before the final event
PROTOCOL_ERRORS_LOGGED = 3


class AgentChannel(Protocol):
    """An open connection to an agent, whatever carries it (WebSocket, WebRTC)."""

    codec: str | None  # the audio codec negotiated with the agent, if the transport has one

    @property
    def is_open(self) -> bool: ...

    async def send(self, message: Message, frame_ns: int = 0) -> None:
        """Send one message; `frame_ns` (caller frames only) is when the frame reached us,
        for the caller_to_agent latency. Raises ChannelClosed."""

    def messages(self) -> AsyncIterator[Message]:
        """What the agent sends, until the channel closes."""

    def close_reason(self) -> str:
        """Why messages() ended, for call.agent.disconnected."""

    async def close(self) -> None:
        """Close within CLOSE_TIMEOUT_S; never raises."""


@runtime_checkable
class DirectChannel(Protocol):
    """An AgentChannel that sends without awaiting and hands each message over as it is
    read (wschannel.FastWebSocketChannel): the session then runs no sender or reader task."""

    def send_now(self, message: Message, frame_ns: int = 0) -> None:
        """Raises ChannelClosed."""

    def deliver_to(self, receiver: Callable[[Message, int], None],
                   on_close: Callable[[], None]) -> None: ...  # fmt: skip


class AgentSession:
    """MediaSession that streams the caller to a WebSocket agent and plays the agent back."""

    def __init__(
        self,
        agent: Agent,
        record: CallRecord,
        controls: CallControls,
        loop: asyncio.AbstractEventLoop,
        vad: VadSettings,
        recordings_dir: str | Path | None = None,
        node_id: str = "sipedge",
        after_tick: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        self.agent = agent
        self.call_id = record.id
        self.record = record
        self.controls = controls
        # where a dropped link connects again, in turn (reconnect_timeout > 0)
        self._targets = [agent] + (
            [agent.model_copy(update={"url": agent.backup_url})] if agent.backup_url else []
        )
        self._filler: Filler | None = None  # plays while the agent reconnects
        self._filling = False
        self._reconnects = 0
        self._node_id = node_id
        self.link = make_link(
            agent.type,
            record.id,
            record.from_number,
            record.to_number,
            record.variables,
            agent.sample_rate,
            node_id,
        )
        self.rate = self.link.rate
        self._loop = loop
        # How a frame wakes the loop: from pjmedia's clock thread, through the loop's self-pipe;
        # from the media plane's clock, which is the loop, the plane runs it once the tick's
        # frames are all in and out (no handle, no loop iteration per call).
        self._wake_soon: Callable[[Callable[[], None]], object] = (
            loop.call_soon_threadsafe if after_tick is None else after_tick
        )
        # On the plane's clock a wake costs an append, so each played frame asks for one
        # (deduplicated with the caller frame's of the same tick) and no fallback timer runs;
        # from pjmedia's thread a wake is a syscall, so only marks ask for one.
        self._wake_every_frame = after_tick is not None
        self._frame_bytes = bytes_per_frame(self.rate)
        # shared with the clock thread
        self._lock = threading.Lock()  # guards _playout, _written
        self._playout = Playout(self.rate)
        self._written = 0  # bytes ever queued to playout
        self._inbox: deque[tuple[bytes, bytes | None, int]] = deque()  # pcm, mu-law, arrival ns
        self._played: deque[tuple[bytes, bool, int, int]] = deque()  # audio, had_audio, pos, ns
        self._marks: deque[str] = deque()  # agent marks reached by playout
        self._wake_pending = False
        self._closed = False
        # asyncio side
        self.conversation = Conversation(self.rate, vad, barge_in_enabled(agent, vad))
        self.timing = MediaTiming(self.conversation.turns.stats)
        self._playout_latency = PlayoutLatency()
        self._aligner = FrameAligner()
        self._outgoing: deque[tuple[Message, int]] = deque()  # message, caller frame ns or 0
        self._send_ready = asyncio.Event()
        self._channel: AgentChannel | None = None
        self._direct: DirectChannel | None = None  # sends without the sender task
        self._streaming = False
        self._stream_ms = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._tick: asyncio.TimerHandle | None = None
        self._protocol_errors = 0
        self._agent_hung_up = False
        self._link_lock = threading.Lock()  # also guards _events_done and _on_closed
        self._link_state = "connecting"  # connecting | connected | disconnected
        self._events_done = False  # the session's last event is out: it emits no more
        self._on_closed: list[Callable[[], None]] = []
        self._recorder: RecordingWriter | None = None
        if recordings_dir is not None:
            path = Path(recordings_dir) / f"{record.id}.wav"
            self._recorder = RecordingWriter(path, self.rate, self._recording_ready)
        loop.call_soon_threadsafe(self._start)

    # -- clock thread -------------------------------------------------------------------------

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        if self._closed:
            return
        self._inbox.append((pcm, mulaw, time.perf_counter_ns()))
        self._schedule_wake()

    def next_frame(self) -> bytes:
        with self._lock:
            queued = self._playout.buffered_bytes
            played = self._playout.next_frame()
            # a frame, or two when the playout dropped a silent one to take back a backlog
            consumed = queued - self._playout.buffered_bytes
            position = self._written - self._playout.buffered_bytes
        if not self._closed:
            self._played.append((played.audio, consumed > 0, position, time.perf_counter_ns()))
            if played.marks:
                self._marks.extend(played.marks)
                self._schedule_wake()
            elif self._wake_every_frame and not self._wake_pending:
                self._schedule_wake()
        filler = self._filler
        if self._filling and filler is not None and not consumed:
            return filler.next_frame()  # the agent is away: not dead air
        return played.audio

    def _schedule_wake(self) -> None:
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self._wake_soon(self._wake)
            except RuntimeError:  # the loop is closed: the worker is exiting
                self._closed = True

    # -- SIP thread ---------------------------------------------------------------------------

    def on_dtmf(self, digit: str) -> None:
        self._call_soon(self._send_dtmf, digit.upper())

    def close(self) -> None:
        """Call ended: never blocks; the last events, recording, stop message and socket close
        follow on the loop (when_closed says when the last event is out)."""
        if self._closed:
            return
        self._closed = True
        self._mark_disconnected("call_ended")
        if not self._call_soon(self._begin_shutdown):
            self._events_finished()  # no loop left to flush on: nothing more will come

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Run `callback` once this session has emitted its last event (speech flushed,
        recording written), at once if it already has; on whichever thread gets there."""
        with self._link_lock:
            if not self._events_done:
                self._on_closed.append(callback)
                return
        callback()

    def latency_summary(self) -> dict[str, float]:
        """p50/p95 (ms) per direction and per turn, for call.completed; empty ones omitted."""
        return self.timing.summary()

    def _call_soon(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            log.warning("event=agent_loop_closed call_id=%s", self.call_id)
            return False
        return True

    # -- asyncio: lifecycle -------------------------------------------------------------------

    def _start(self) -> None:
        if self._closed:
            return
        self._tasks.append(asyncio.ensure_future(self._connect()))
        if not self._wake_every_frame:
            self._tick = self._loop.call_later(TICK_S, self._on_tick)

    async def _open(self) -> AgentChannel:
        """Connect to the agent; raises AgentUnavailable. Transports override this."""
        return await FastWebSocketChannel.open(
            self.agent, self.timing.caller_to_agent, self.call_id
        )

    async def _connect(self) -> None:
        try:
            channel = await self._open()
        except AgentUnavailable as exc:
            self._agent_failed(exc.reason)
            return
        await self._attach(channel)

    async def _attach(self, channel: AgentChannel) -> None:
        """A connected channel (the first, or a reconnect's) starts carrying the call."""
        agent = self.agent
        if self._closed or not self._set_link_state("connected"):
            await channel.close()
            return
        self._channel = channel
        reconnect = self._reconnects > 0
        log.info(
            "event=agent_connected call_id=%s agent=%s transport=%s%s%s",
            self.call_id,
            agent.id,
            self.link.transport,
            f" codec={channel.codec}" if channel.codec else "",
            f" reconnect={self._reconnects} url={public_url(agent.url)}" if reconnect else "",
        )
        self._emit(
            AgentLinkUp(
                call_id=self.call_id,
                agent=agent.id,
                transport=self.link.transport,
                codec=channel.codec or None,
                reconnect=reconnect,
            )
        )
        for message in self.link.opening():
            self._outgoing.append((message, 0))
        self._streaming = True
        if isinstance(channel, DirectChannel):
            # Messages leave as they are built and arrive as they are read: no tasks between.
            self._direct = channel
            self._flush_direct()
            channel.deliver_to(self._on_agent_message, lambda: self._channel_ended(channel))
            return
        self._tasks.append(asyncio.ensure_future(self._sender(channel)))
        self._tasks.append(asyncio.ensure_future(self._reader(channel)))
        self._send_ready.set()

    def _set_link_state(self, state: str) -> bool:
        with self._link_lock:
            if self._link_state == "disconnected":
                return False
            self._link_state = state
            return True

    def _mark_disconnected(self, reason: str) -> bool:
        """Emit call.agent.disconnected once per session; False if it was already sent."""
        with self._link_lock:
            if self._link_state == "disconnected":
                return False
            self._link_state = "disconnected"
        self._emit(
            AgentLinkDown(
                call_id=self.call_id,
                agent=self.agent.id,
                transport=self.link.transport,
                reason=reason,
            )
        )
        return True

    def _agent_failed(self, reason: str) -> None:
        self._streaming = False
        if self._closed or not self._mark_disconnected(reason):
            return
        action = self.agent.on_agent_failure
        log.warning(
            "event=agent_disconnected call_id=%s agent=%s reason=%r action=%s",
            self.call_id,
            self.agent.id,
            reason,
            action,
        )
        if action == "hangup":
            self.controls.hangup("gateway")
        # keep: the call stays up; playout runs dry and the caller hears silence

    def _begin_shutdown(self) -> None:
        self._shutdown_task = asyncio.ensure_future(self._shutdown())
        self._tasks.append(self._shutdown_task)

    async def wait_closed(self) -> None:
        """asyncio side, after close(): until the stop message, the recording and the last
        events are done (a stopping worker waits for this before it exits)."""
        while getattr(self, "_shutdown_task", None) is None:  # close() queued it on the loop
            await asyncio.sleep(0.01)
        await asyncio.shield(self._shutdown_task)

    async def _shutdown(self) -> None:
        # First every event this call still owes (speech cut off by the hang-up, the
        # recording), so that the engine's call.completed/call.failed can be the last one;
        # then the agent's stop and the socket close, which emit nothing.
        channel = self._channel
        try:
            if self._tick is not None:
                self._tick.cancel()
            self._process()
            for speech in self.conversation.flush():
                self._emit_speech(speech)
            if channel is not None and self._streaming:
                self._send(self.link.closing())
            if self._recorder is not None:
                await self._close_recording(self._recorder)
        finally:
            self._events_finished()
        if channel is not None and self._streaming:
            await self._drain_outgoing(channel)
        self._streaming = False
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        if channel is not None:
            await channel.close()
        log.info(
            "event=media_latency call_id=%s %s barge_ins=%d playout_underruns=%d "
            "playout_trimmed=%d",
            self.call_id,
            self.timing.log_fields(),
            self.conversation.barge_ins,
            self._playout.underruns,
            self._playout.trimmed,
        )

    async def _drain_outgoing(self, channel: AgentChannel) -> None:
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while self._outgoing and time.monotonic() < deadline and channel.is_open:
            await asyncio.sleep(0.01)

    async def _close_recording(self, recorder: RecordingWriter) -> None:
        recorder.write(self._aligner.flush())
        recorder.close()
        try:
            # call.recording.ready is queued to the loop before `finished` completes.
            await asyncio.wait_for(
                asyncio.wrap_future(recorder.finished), RECORDING_CLOSE_TIMEOUT_S
            )
        except TimeoutError:
            log.warning(
                "event=recording_close_slow call_id=%s timeout_s=%g",
                self.call_id,
                RECORDING_CLOSE_TIMEOUT_S,
            )

    def _recording_ready(self, recording: Recording) -> None:  # writer thread
        log.info(
            "event=recording_ready call_id=%s path=%s duration=%.2f bytes=%d",
            self.call_id,
            recording.path,
            recording.duration_s,
            recording.size_bytes,
        )
        self._emit(
            RecordingFinished(
                call_id=self.call_id,
                path=str(recording.path),
                duration=round(recording.duration_s, 3),
                bytes=recording.size_bytes,
            )
        )

    # -- asyncio: the agent's channel --------------------------------------------------------

    async def _sender(self, channel: AgentChannel) -> None:
        # The only task that writes to the channel: messages leave in the order they were
        # built, which Twilio's sequenceNumber requires.
        outgoing = self._outgoing
        try:
            while True:
                await self._send_ready.wait()
                self._send_ready.clear()
                while outgoing:
                    message, frame_ns = outgoing[0]
                    await channel.send(message, frame_ns)
                    outgoing.popleft()
        except ChannelClosed:
            pass  # the reader sees the close too and reports it

    def _flush_direct(self) -> None:
        """Send what is queued, now, in order (the direct channel's _sender)."""
        channel, outgoing = self._direct, self._outgoing
        if channel is None:
            return
        try:
            while outgoing:
                message, frame_ns = outgoing[0]
                channel.send_now(message, frame_ns)
                outgoing.popleft()
        except ChannelClosed:
            outgoing.clear()  # the channel's end reports why (_channel_ended)

    def _channel_ended(self, channel: AgentChannel) -> None:
        self._direct = None
        self._outgoing.clear()
        self._link_ended(channel)

    async def _reader(self, channel: AgentChannel) -> None:
        async for frame in channel.messages():
            self._on_agent_message(frame, time.perf_counter_ns())
        self._link_ended(channel)

    def _link_ended(self, channel: AgentChannel) -> None:
        if self._closed:
            return
        if self._agent_hung_up:
            self._agent_failed("agent_hangup")
            return
        if self.agent.reconnect_timeout > 0 and self._link_state == "connected":
            self._tasks.append(asyncio.ensure_future(self._reconnect(channel.close_reason())))
            return
        self._agent_failed(channel.close_reason())

    async def _reconnect(self, reason: str) -> None:
        """The link dropped mid-call: the caller hears the filler while the agent is connected
        again (url and backup_url in turn, with backoff) for up to reconnect_timeout; the new
        link's start message says it is a reconnect of the same call. Then, or if that fails,
        as before (on_agent_failure)."""
        with self._link_lock:
            if self._link_state != "connected":
                return
            self._link_state = "reconnecting"
        self._streaming = False
        self._direct = None
        self._channel = None
        self._outgoing.clear()
        self._emit(AgentLinkDown(call_id=self.call_id, agent=self.agent.id,
                                 transport=self.link.transport, reason=reason))  # fmt: skip
        log.warning("event=agent_reconnecting call_id=%s agent=%s reason=%r timeout=%g",
                    self.call_id, self.agent.id, reason, self.agent.reconnect_timeout)  # fmt: skip
        self._start_filler()
        deadline = self._loop.time() + self.agent.reconnect_timeout
        backoff = Backoff(0.2, 2.0)
        attempt = 0
        last = reason
        while not self._closed and self._loop.time() < deadline:
            self.agent = self._targets[attempt % len(self._targets)]
            attempt += 1
            try:
                channel = await self._open()
            except AgentUnavailable as exc:
                last = exc.reason
                pause = min(backoff.next_delay(), max(0.0, deadline - self._loop.time()))
                await asyncio.sleep(pause)
                continue
            self._reconnects += 1
            variables = {**self.record.variables, "reconnect": "true",
                         "reconnect_count": str(self._reconnects)}  # fmt: skip
            self.link = make_link(self.agent.type, self.record.id, self.record.from_number,
                                  self.record.to_number, variables, self.agent.sample_rate,
                                  self._node_id)  # fmt: skip
            self._filling = False
            await self._attach(channel)
            return
        self._filling = False
        with self._link_lock:
            if self._link_state == "reconnecting":
                self._link_state = "connected"  # so the failure below is reported once more
        self._agent_failed(f"reconnect_failed: {last}")

    def _start_filler(self) -> None:
        source = self.agent.filler
        if source is None:
            return
        if self._filler is None:
            try:
                self._filler = Filler(source, self.rate)
            except (OSError, ValueError, EOFError) as exc:
                log.warning("event=filler_unusable call_id=%s error=%s fallback=comfort_noise",
                            self.call_id, exc)  # fmt: skip
                self._filler = Filler("comfort_noise", self.rate)
        self._filling = True

    def _on_agent_message(self, frame: Message, recv_ns: int) -> None:
        try:
            event = self.link.receive(frame)
        except ProtocolError as exc:
            self._protocol_errors += 1
            if self._protocol_errors <= PROTOCOL_ERRORS_LOGGED:
                log.warning("event=agent_protocol_error call_id=%s error=%s", self.call_id, exc)
            return
        if isinstance(event, AgentAudio):
            self._queue_audio(event.pcm, recv_ns)
        elif isinstance(event, AgentMark):
            with self._lock:
                self._playout.mark(event.name)
        elif isinstance(event, AgentClear):
            self._send(self.link.marks_played(self._clear_playout()))
        elif isinstance(event, AgentHangup):
            log.info("event=agent_hangup call_id=%s reason=%r", self.call_id, event.reason)
            self._agent_hung_up = True
            self.controls.hangup("agent")

    def _queue_audio(self, pcm: bytes, recv_ns: int) -> None:
        if not pcm:
            return
        with self._lock:
            start, ahead = self._written, self._playout.buffered_bytes
            try:
                self._playout.write(pcm)
            except PlayoutOverflow as exc:
                overflow: PlayoutOverflow | None = exc
            else:
                overflow = None
                self._written += len(pcm)
        if overflow is not None:
            log.warning("event=playout_overflow call_id=%s error=%s", self.call_id, overflow)
            return
        self._playout_latency.received(start, recv_ns, ahead * 500_000_000 // self.rate)

    def _clear_playout(self) -> list[str]:
        # Played frames not yet processed lose their latency sample (a frame or two at most).
        with self._lock:
            dropped = self._playout.clear()
        self._playout_latency.cleared()
        return dropped

    def _send(self, messages: list[Message]) -> None:
        if self._streaming and messages:
            self._outgoing.extend((m, 0) for m in messages)
            self._kick_sender()

    def _kick_sender(self) -> None:
        """What is queued leaves: now on a direct channel, else through the sender task."""
        if self._direct is not None:
            self._flush_direct()
        else:
            self._send_ready.set()

    def _send_dtmf(self, digit: str) -> None:
        try:
            self._send([self.link.dtmf(digit)])
        except ValueError:
            log.warning("event=dtmf_ignored call_id=%s digit=%r", self.call_id, digit)

    # -- asyncio: frames ----------------------------------------------------------------------

    def _wake(self) -> None:
        self._wake_pending = False
        self._process()

    def _on_tick(self) -> None:
        self._process()
        if not self._closed:
            self._tick = self._loop.call_later(TICK_S, self._on_tick)

    def _process(self) -> None:
        """Everything the clock thread handed over: caller frames, played frames, marks."""
        inbox, played = self._inbox, self._played
        recorder, aligner = self._recorder, self._aligner
        pairs: list[tuple[bytes | None, bytes | None]] = []
        while inbox:
            pcm, mulaw, frame_ns = inbox.popleft()
            update = self.conversation.caller_audio(pcm, agent_playing=self._playout.is_playing)
            for speech in update.speech:
                self._emit_speech(speech)
                self._send(self.link.caller_speech(speech.event))
            if update.barge_in:
                self._barge_in()
            if self._streaming:
                message = self.link.caller_frame(pcm, int(self._stream_ms), mulaw)
                self._outgoing.append((message, frame_ns))
                self._stream_ms += len(pcm) * 500 / self.rate
            if recorder is not None:
                pairs += aligner.caller(pcm)
        while played:
            audio, had_audio, position, tick_ns = played.popleft()
            for speech in self.conversation.agent_audio(audio, had_audio):
                self._emit_speech(speech)
            for ms in self._playout_latency.played(position, tick_ns):
                self.timing.agent_to_caller.record(ms)
            if recorder is not None:
                pairs += aligner.agent(audio)
        if self._marks:
            names = list(self._marks)
            self._marks.clear()
            self._send(self.link.marks_played(names))
        if recorder is not None:
            recorder.write(pairs)
        if self._outgoing and self._streaming:
            self._kick_sender()

    def _barge_in(self) -> None:
        with self._lock:
            playing = self._playout.is_playing
        if not playing:
            return
        dropped = self._clear_playout()
        log.info("event=barge_in call_id=%s dropped_marks=%d", self.call_id, len(dropped))
        self._send(self.link.barge_in(dropped))

    def _emit_speech(self, speech: Speech) -> None:
        event, party, call_id = speech.event, speech.party, self.call_id
        if isinstance(event, SpeechStarted):
            self._emit(SpeechBegan(call_id=call_id, party=party, offset_ms=event.offset_ms))
        else:
            self._emit(SpeechEnded(call_id=call_id, party=party, offset_ms=event.offset_ms,
                                   duration_ms=event.duration_ms))  # fmt: skip

    def _emit(self, event: CallEvent) -> None:
        # After _events_finished the engine may have sent the call's final event: nothing of
        # this call may follow it. The lock makes check and emit one step for every thread
        # (emit only queues the event, it never blocks).
        with self._link_lock:
            if not self._events_done:
                self.controls.emit(event)
                return
        log.warning(
            "event=late_call_event_dropped call_id=%s type=%s", self.call_id, type(event).__name__
        )

    def _events_finished(self) -> None:
        with self._link_lock:
            self._events_done = True
            callbacks, self._on_closed = self._on_closed, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one listener must not keep the session from closing
                log.exception("event=on_closed_failed call_id=%s", self.call_id)
