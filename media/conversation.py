"""A call's conversation, sans-IO: both parties' speech (VAD on 20 ms frames), barge-in
decisions and per-turn response latency, and the pairing of caller and agent frames for the
stereo recorder.

No sockets, threads or clocks here: gateway/session/agent.py is the I/O shell around these.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from media.frames import FRAME_MS, SAMPLE_WIDTH, bytes_per_frame
from media.timing import TurnLatency
from media.vad import SpeechDetector, SpeechEvent, SpeechStarted

Party = Literal["caller", "agent"]


class VadParams(Protocol):
    """What speech detection needs of the node's `vad` settings (gateway.config.VadSettings
    has these; media does not import gateway)."""

    @property
    def aggressiveness(self) -> int: ...
    @property
    def frame_ms(self) -> int: ...
    @property
    def min_speech_ms(self) -> int: ...
    @property
    def hangover_ms(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Speech:
    """A speech event of one party: it started, or it stopped (with its duration)."""

    party: Party
    event: SpeechEvent

    @property
    def started(self) -> bool:
        return isinstance(self.event, SpeechStarted)


class PartySpeech:
    """VAD on one party's stream of 20 ms frames; offsets are the stream position in ms.

    The detector may want 10 or 30 ms frames: audio is re-chunked to its size, so offsets stay
    exact whatever the frame size.
    """

    def __init__(self, party: Party, rate: int, vad: VadParams) -> None:
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
        if not self._pending and len(pcm) == self._vad_bytes:  # 20 ms frames, 20 ms VAD
            offset_ms = self._position * 1000 // self.rate
            self._position += len(pcm) // SAMPLE_WIDTH
            events = self.detector.feed(pcm, offset_ms)
            return [Speech(self.party, e) for e in events] if events else []
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

    def __init__(self, rate: int, vad: VadParams, barge_in: bool) -> None:
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
