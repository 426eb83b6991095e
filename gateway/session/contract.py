"""The per-call media contract between the SIP engine and the audio side.

The engine's audio port calls `on_caller_frame` and `next_frame` on pjmedia's clock thread,
every 20 ms: implementations only move bytes between buffers, never block and never do I/O.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from gateway.calls.events import CallEvent
from gateway.config import Config
from media.agents.echo import EchoAgent

NARROWBAND_HZ = 8000
WIDEBAND_HZ = 16000
WIDEBAND_CODECS = frozenset({"G722"})


@dataclass(frozen=True)
class CallControls:
    """What a media session may do to its call, from any thread."""

    call_id: str
    emit: Callable[[CallEvent], None]  # one of gateway/calls/events.py, for this call
    # end the call: who ("agent" | "gateway"), and why (an EndReason's value; default normal)
    hangup: Callable[..., None]
    # the call's media is gone (the media plane died): it ends as failed, by the gateway
    media_failed: Callable[[], None] | None = None


def bridge_rate(config: Config) -> int:
    """The conference bridge's clock rate: 8 kHz unless a call can carry wideband audio (a
    G.722 codec is configured) or an agent's port runs at 16 kHz. pjmedia resamples every
    port whose rate differs from the bridge's, each 20 ms frame both ways, so a 16 kHz bridge
    under 8 kHz calls and 8 kHz agents only burns CPU (bench/README.md)."""
    codecs = set(config.sip.codecs).union(*(t.codecs or () for t in config.trunks))
    if codecs & WIDEBAND_CODECS:
        return WIDEBAND_HZ
    streaming = [a for a in config.agents if a.type != "echo"]
    if not streaming:
        return NARROWBAND_HZ  # echo sessions run at the bridge's rate
    # The wire adapters (and numpy, webrtcvad with them) only where an agent needs them: an
    # echo-only worker does not import them at all.
    from gateway.session.link import link_rate

    return max(link_rate(a.type, a.sample_rate) for a in streaming)


class MediaSession(Protocol):
    rate: int  # PCM16 mono sample rate of the frames exchanged with the port

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        """A caller frame; `mulaw` is the same 8 kHz audio as G.711 mu-law when the port
        has it already (the media plane's G.711 calls), so a link that sends mu-law
        (twilio-ws) need not encode the frame again."""

    def next_frame(self) -> bytes: ...

    def on_dtmf(self, digit: str) -> None: ...

    def close(self) -> None:
        """The call ended (SIP thread): never blocks."""

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the session has emitted its last event, on any thread (at
        once if it has): the engine sends call.completed/call.failed from there, so that
        nothing of the call follows them."""


@dataclass(frozen=True)
class SrtpKeys:
    """SRTP for a call's audio (SDES, RFC 4568): the suite both ends settled on, our key (in
    our SDP) and the far end's (in its SDP), base64 as after `inline:`. Secrets: no repr."""

    suite: str
    tx_key: str = field(repr=False)
    rx_key: str = field(repr=False)


@dataclass(frozen=True)
class Negotiated:
    """What SDP settled for a call's audio (pjsua's stream info)."""

    remote: tuple[str, int]  # where the far end said to send RTP
    codec: str  # PCMU | PCMA
    tx_pt: int  # payload types we send with and the far end sends with
    rx_pt: int
    tx_event_pt: int | None  # telephone-event (RFC 4733), None: not negotiated
    rx_event_pt: int | None
    srtp: SrtpKeys | None = None  # None: plain RTP


@runtime_checkable
class AnswerAware(Protocol):
    """A session that wants to know when the call is answered (AMD: early media is not the
    callee)."""

    def answered(self) -> None: ...


@runtime_checkable
class PlaneMedia(Protocol):
    """A session whose audio the media plane serves (node.media: plane): the SIP side hands it
    the call's RTP sockets and what SDP negotiated, and never sees a frame."""

    rx_packets: int  # RTP packets the plane has received for this call (media timeout)

    def attach(self, rtp: socket.socket, rtcp: socket.socket, media: Negotiated) -> None: ...

    def send_dtmf(self, digits: str) -> None: ...


class EchoSession:
    """Plays the caller back to themselves after a delay (the built-in `echo` agent)."""

    def __init__(self, delay_ms: int, rate: int = NARROWBAND_HZ) -> None:
        self.rate = rate
        self._echo = EchoAgent(delay_ms=delay_ms, rate=rate)
        self._pending: bytes | None = None
        self.frames_in = 0
        self.frames_out = 0

    def on_caller_frame(self, pcm: bytes, mulaw: bytes | None = None) -> None:
        self.frames_in += 1
        self._pending = self._echo.push(pcm)

    def next_frame(self) -> bytes:
        self.frames_out += 1
        frame, self._pending = self._pending, None
        return frame if frame is not None else self._echo.silence

    def on_dtmf(self, digit: str) -> None:
        pass

    def close(self) -> None:
        self._pending = None

    def when_closed(self, callback: Callable[[], None]) -> None:
        callback()  # echo emits no events
