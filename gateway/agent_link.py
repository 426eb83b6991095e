"""Per-call agent media, sans-IO: the wire adapters for twilio-ws and pcm-ws at the call's port
rate (webrtc's is media/agents/webrtc.py), voice activity and barge-in on both parties,
recorder frame alignment, and playout latency.

No sockets, threads or clocks here: gateway/session/agent.py is the I/O shell around these.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.config import Agent, VadSettings
from media.agents.events import AgentAudio, AgentEvent, AgentMedia
from media.agents.pcmws import PcmStream
from media.agents.twilio import TwilioStream
from media.agents.webrtc import WebRtcLink
from media.codecs import ulaw_decode, ulaw_encode
from media.frames import FRAME_MS, SAMPLE_WIDTH, bytes_per_frame
from media.resample import Resampler
from media.timing import LatencyStats, TurnLatency
from media.vad import SpeechDetector, SpeechEvent, SpeechStarted

Party = Literal["caller", "agent"]
Message = str | bytes  # a WebSocket frame: text (JSON) or binary (audio)


# --- wire adapters -------------------------------------------------------------------------


class AgentLink(Protocol):
    """One agent protocol seen from the call's audio port: PCM16 at `rate` in and out."""

    transport: str
    rate: int

    def opening(self) -> list[Message]: ...

    def caller_frame(self, pcm: bytes, offset_ms: int) -> Message: ...

    def receive(self, frame: Message) -> AgentEvent: ...

    def marks_played(self, names: Sequence[str]) -> list[Message]: ...

    def barge_in(self, dropped_marks: Sequence[str]) -> list[Message]: ...

    def caller_speech(self, event: SpeechEvent) -> list[Message]: ...

    def dtmf(self, digit: str) -> Message: ...

    def closing(self) -> list[Message]: ...


def make_link(
    transport: str,
    call_id: str,
    from_: str,
    to: str,
    variables: Mapping[str, str],
    sample_rate: int = 8000,
    node_id: str = "sipedge",
) -> AgentLink:
    if transport == "twilio-ws":
        return TwilioLink(call_id, from_, to, variables, node_id)
    if transport == "pcm-ws":
        return PcmLink(call_id, from_, to, variables, sample_rate)
    if transport == "webrtc":
        return WebRtcLink(call_id, from_, to, variables, port_rate(sample_rate))
    raise ValueError(f"agent type {transport} is not a streaming agent")


def stream_sid(call_id: str) -> str:
    """A Twilio-shaped stream id (MZ + 32 hex) derived from our call id."""
    return "MZ" + hashlib.sha256(call_id.encode()).hexdigest()[:32]


def account_sid(node_id: str) -> str:
    """A Twilio-shaped account id (AC + 32 hex) naming this node."""
    return "AC" + hashlib.sha256(node_id.encode()).hexdigest()[:32]


class TwilioLink:
    """twilio-ws: mu-law 8 kHz both ways; the port runs at 8 kHz so nothing is resampled here."""

    transport = "twilio-ws"
    rate = 8000

    def __init__(
        self,
        call_id: str,
        from_: str,
        to: str,
        variables: Mapping[str, str],
        node_id: str = "sipedge",
    ) -> None:
        # Twilio puts <Parameter> values in customParameters; ours are the route's variables
        # plus the parties, which win over a variable of the same name.
        parameters = {**{str(k): str(v) for k, v in variables.items()}, "from": from_, "to": to}
        self.stream = TwilioStream(
            stream_sid=stream_sid(call_id),
            call_sid=call_id,
            account_sid=account_sid(node_id),
            custom_parameters=parameters,
        )

    def opening(self) -> list[Message]:
        return [self.stream.connected(), self.stream.start()]

    def caller_frame(self, pcm: bytes, offset_ms: int) -> Message:
        return self.stream.media(ulaw_encode(pcm), offset_ms)

    def receive(self, frame: Message) -> AgentEvent:
        event = self.stream.receive(frame)
        if isinstance(event, AgentMedia):
            return AgentAudio(ulaw_decode(event.mulaw))
        return event

    def marks_played(self, names: Sequence[str]) -> list[Message]:
        return [self.stream.mark(name) for name in names]

    def barge_in(self, dropped_marks: Sequence[str]) -> list[Message]:
        # Twilio has no barge-in message; a bot learns its audio was cut from the marks that
        # come back early, exactly as after its own `clear`.
        return self.marks_played(dropped_marks)

    def caller_speech(self, event: SpeechEvent) -> list[Message]:
        return []

    def dtmf(self, digit: str) -> Message:
        return self.stream.dtmf(digit)

    def closing(self) -> list[Message]:
        return [self.stream.stop()]


def port_rate(agent_rate: int) -> int:
    """The audio port's rate for an agent rate: 8/16 kHz as is, 24 kHz through 16 kHz (the
    conference bridge and webrtcvad do not take 24 kHz)."""
    return agent_rate if agent_rate in (8000, 16000) else 16000


def link_rate(transport: str, sample_rate: int = 8000) -> int:
    """The port rate of the link make_link(transport, ..., sample_rate) makes."""
    return TwilioLink.rate if transport == "twilio-ws" else port_rate(sample_rate)


class PcmLink:
    """pcm-ws: PCM16 at the agent's sample_rate, resampled to and from the port rate if needed."""

    transport = "pcm-ws"

    def __init__(
        self,
        call_id: str,
        from_: str,
        to: str,
        variables: Mapping[str, str],
        sample_rate: int = 16000,
    ) -> None:
        self.stream = PcmStream(call_id, from_, to, sample_rate, dict(variables))
        self.rate = port_rate(sample_rate)
        same = self.rate == sample_rate
        self._to_agent = None if same else Resampler(self.rate, sample_rate)
        self._from_agent = None if same else Resampler(sample_rate, self.rate)

    def opening(self) -> list[Message]:
        return [self.stream.start()]

    def caller_frame(self, pcm: bytes, offset_ms: int) -> Message:
        if self._to_agent is not None:
            pcm = self._to_agent.process(pcm)
        return self.stream.audio(pcm)

    def receive(self, frame: Message) -> AgentEvent:
        event = self.stream.receive(frame)
        if isinstance(event, AgentAudio) and self._from_agent is not None:
            return AgentAudio(self._from_agent.process(event.pcm))
        return event

    def marks_played(self, names: Sequence[str]) -> list[Message]:
        return [self.stream.mark(name) for name in names]

    def barge_in(self, dropped_marks: Sequence[str]) -> list[Message]:
        return [self.stream.clear(), *self.marks_played(dropped_marks)]

    def caller_speech(self, event: SpeechEvent) -> list[Message]:
        if isinstance(event, SpeechStarted):
            return [self.stream.speech_started(event.offset_ms)]
        return [self.stream.speech_stopped(event.offset_ms, event.duration_ms)]

    def dtmf(self, digit: str) -> Message:
        return self.stream.dtmf(digit)

    def closing(self) -> list[Message]:
        return [self.stream.stop()]


# --- voice activity, turns and barge-in ----------------------------------------------------

# Whether caller speech drops the agent's queued audio when neither the agent nor `vad` says.
# Twilio never drops a bot's audio by itself (the bot hears the caller and sends `clear`), so
# a bot written for Media Streams must not find its audio cut; pcm-ws and webrtc agents are
# told about it (`clear`, speech events) and expect the gateway to do it.
BARGE_IN_DEFAULTS = {"twilio-ws": False, "pcm-ws": True, "webrtc": True}


def barge_in_enabled(agent: Agent, vad: VadSettings) -> bool:
    """The agent's own `barge_in`, else the node's `vad.barge_in`, else its type's default."""
    for setting in (agent.barge_in, vad.barge_in):
        if setting is not None:
            return setting
    return BARGE_IN_DEFAULTS.get(agent.type, False)


@dataclass(frozen=True, slots=True)
class Speech:
    """A speech event of one party, ready to become call.speech.started/stopped."""

    party: Party
    event: SpeechEvent

    @property
    def event_type(self) -> str:
        started = isinstance(self.event, SpeechStarted)
        return "call.speech.started" if started else "call.speech.stopped"

    def as_data(self) -> dict[str, Any]:
        duration = None if isinstance(self.event, SpeechStarted) else self.event.duration_ms
        return {"party": self.party, "offset_ms": self.event.offset_ms, "duration_ms": duration}


class PartySpeech:
    """VAD on one party's stream of 20 ms frames; offsets are the stream position in ms.

    The detector may want 10 or 30 ms frames: audio is re-chunked to its size, so offsets stay
    exact whatever the frame size.
    """

    def __init__(self, party: Party, rate: int, vad: VadSettings) -> None:
        self.party: Party = party
        self.rate = rate
        self.detector = SpeechDetector(
            rate, vad.aggressiveness, vad.frame_ms, vad.min_speech_ms, vad.hangover_ms
        )
        self._vad_bytes = bytes_per_frame(rate, vad.frame_ms)
        self._pending = b""
        self._position = 0  # samples fed to the detector so far

    @property
    def in_speech(self) -> bool:
        return self.detector.in_speech

    def feed(self, pcm: bytes) -> list[Speech]:
        data = self._pending + pcm if self._pending else pcm
        usable = len(data) - len(data) % self._vad_bytes
        self._pending = data[usable:]
        if not usable:
            return []
        offset_ms = self._position * 1000 // self.rate
        self._position += usable // SAMPLE_WIDTH
        return [Speech(self.party, e) for e in self.detector.feed(data[:usable], offset_ms)]

    def flush(self) -> list[Speech]:
        return [Speech(self.party, e) for e in self.detector.flush()]


@dataclass(frozen=True, slots=True)
class CallerUpdate:
    speech: list[Speech]
    barge_in: bool  # flush playout now and tell the agent


class Conversation:
    """Both parties' speech, barge-in decisions and per-turn response latency for one call."""

    def __init__(self, rate: int, vad: VadSettings, barge_in: bool) -> None:
        self.barge_in_enabled = barge_in
        self.caller = PartySpeech("caller", rate, vad)
        self.agent = PartySpeech("agent", rate, vad)
        self.turns = TurnLatency()
        self.barge_ins = 0
        self._frame_ms = FRAME_MS
        self._agent_frames = 0  # agent frames played (audio or silence) since the start
        self._agent_was_playing = False

    def caller_audio(self, pcm: bytes, agent_playing: bool) -> CallerUpdate:
        """A caller frame; `agent_playing` says whether agent audio is queued right now."""
        speech = self.caller.feed(pcm)
        barge_in = False
        for item in speech:
            if isinstance(item.event, SpeechStarted):
                self.turns.caller_started(item.event.offset_ms)
                if self.barge_in_enabled and agent_playing:
                    barge_in = True
            else:
                self.turns.caller_stopped(item.event.offset_ms)
        if barge_in:
            self.barge_ins += 1
        return CallerUpdate(speech, barge_in)

    def agent_audio(self, pcm: bytes, had_audio: bool) -> list[Speech]:
        """A frame played to the caller; `had_audio` is False when playout ran dry (silence)."""
        offset_ms = self._agent_frames * self._frame_ms
        self._agent_frames += 1
        if had_audio and not self._agent_was_playing:
            self.turns.agent_audio(offset_ms)  # the first audio of an agent reply
        self._agent_was_playing = had_audio
        return self.agent.feed(pcm)

    def flush(self) -> list[Speech]:
        return self.caller.flush() + self.agent.flush()


# --- recording alignment -------------------------------------------------------------------


class FrameAligner:
    """Pairs caller and agent frames tick by tick for the stereo recorder.

    Both sides come from the same media clock (one of each per tick), but reach us through
    different queues; a side that falls more than `max_skew` frames behind is given up on and
    its partner is recorded against silence, so one stalled side never holds the other back.
    """

    def __init__(self, max_skew: int = 10) -> None:
        self.max_skew = max_skew
        self._caller: deque[bytes] = deque()
        self._agent: deque[bytes] = deque()

    def caller(self, pcm: bytes) -> list[tuple[bytes | None, bytes | None]]:
        self._caller.append(pcm)
        return self._pairs()

    def agent(self, pcm: bytes) -> list[tuple[bytes | None, bytes | None]]:
        self._agent.append(pcm)
        return self._pairs()

    def flush(self) -> list[tuple[bytes | None, bytes | None]]:
        pairs = self._pairs()
        while self._caller or self._agent:
            pairs.append((_pop(self._caller), _pop(self._agent)))
        return pairs

    def _pairs(self) -> list[tuple[bytes | None, bytes | None]]:
        pairs: list[tuple[bytes | None, bytes | None]] = []
        while self._caller and self._agent:
            pairs.append((self._caller.popleft(), self._agent.popleft()))
        while len(self._caller) > self.max_skew:
            pairs.append((self._caller.popleft(), None))
        while len(self._agent) > self.max_skew:
            pairs.append((None, self._agent.popleft()))
        return pairs


def _pop(side: deque[bytes]) -> bytes | None:
    return side.popleft() if side else None


# --- playout latency -----------------------------------------------------------------------


class PlayoutLatency:
    """Agent-recv -> RTP-out: how late each received chunk's first byte reaches the caller's
    port, beyond the audio already queued ahead of it.

    Agents send ahead of real time on purpose, so a chunk behind 2 s of queued speech plays
    2 s later by design; what the gateway adds is the wait for the media clock's tick and the
    hand-off between threads, i.e. first-byte play time - (receive time + audio queued ahead).
    Positions are byte offsets in the playout stream (all audio ever queued): a chunk is out
    once the played position passes its start; a clear voids the chunks still queued.
    """

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, int]] = deque()  # (start position, due time ns)

    def received(self, start: int, at_ns: int, queued_ahead_ns: int = 0) -> None:
        self._chunks.append((start, at_ns + queued_ahead_ns))

    def played(self, position: int, at_ns: int) -> list[float]:
        """Playout has played everything before `position` at `at_ns`: latencies in ms."""
        out: list[float] = []
        while self._chunks and self._chunks[0][0] < position:
            out.append((at_ns - self._chunks.popleft()[1]) / 1e6)
        return out

    def cleared(self) -> None:
        self._chunks.clear()


class MediaTiming:
    """A call's latency figures: per frame both ways, and per turn."""

    def __init__(self, turns: LatencyStats | None = None) -> None:
        self.caller_to_agent = LatencyStats()  # RTP-in -> written to the agent's socket
        self.agent_to_caller = LatencyStats()  # read from the socket -> RTP-out (PlayoutLatency)
        self.response = turns if turns is not None else LatencyStats()

    def _named(self) -> tuple[tuple[str, LatencyStats], ...]:
        return (
            ("caller_to_agent", self.caller_to_agent),
            ("agent_to_caller", self.agent_to_caller),
            ("response", self.response),
        )

    def summary(self) -> dict[str, float]:
        """p50/p95 in ms for call.completed; a figure with no samples is left out."""
        out: dict[str, float] = {}
        for name, stats in self._named():
            s = stats.summary()
            if s.p50 is not None and s.p95 is not None:
                out[f"{name}_p50_ms"] = round(s.p50, 2)
                out[f"{name}_p95_ms"] = round(s.p95, 2)
        return out

    def log_fields(self) -> str:
        fields = []
        for name, stats in self._named():
            s = stats.summary()
            if s.p50 is not None and s.p99 is not None:
                fields.append(
                    f"{name}_n={s.count} {name}_p50_ms={s.p50:.2f} {name}_p99_ms={s.p99:.2f}"
                )
        return " ".join(fields) or "no_samples=1"
