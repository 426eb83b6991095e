"""Per-call agent media, sans-IO: the wire adapters for twilio-ws and pcm-ws at the call's port
rate (webrtc's is media/agents/webrtc.py), each agent's barge-in setting, and playout latency.
Voice activity and barge-in decisions on both parties, and recorder frame alignment, are
media/conversation.py.

No sockets, threads or clocks here: gateway/session/agent.py is the I/O shell around these.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.config import Agent, VadSettings
from media.agents.events import AgentAudio, AgentEvent, AgentMedia
from media.agents.pcmws import PcmStream
from media.agents.twilio import TwilioStream
from media.agents.webrtc import WebRtcLink
from media.codecs import ulaw_decode, ulaw_encode
from media.resample import Resampler
from media.timing import LatencyStats
from media.vad import SpeechEvent, SpeechStarted

Message = str | bytes  # a WebSocket frame: text (JSON) or binary (audio)


# --- wire adapters -------------------------------------------------------------------------


class AgentLink(Protocol):
    """One agent protocol seen from the call's audio port: PCM16 at `rate` in and out."""

    transport: str
    rate: int

    def opening(self) -> list[Message]: ...

    def caller_frame(self, pcm: bytes, offset_ms: int, mulaw: bytes | None = None) -> Message:
        """`mulaw`: the same frame as mu-law at 8 kHz, when the port had it."""

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

    def caller_frame(self, pcm: bytes, offset_ms: int, mulaw: bytes | None = None) -> Message:
        # The plane's PCMU calls hand over the RTP payload itself: no decode + re-encode.
        return self.stream.media(ulaw_encode(pcm) if mulaw is None else mulaw, offset_ms)

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

    def caller_frame(self, pcm: bytes, offset_ms: int, mulaw: bytes | None = None) -> Message:
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
