"""RTP (RFC 3550) and telephone-events (RFC 4733) as the media plane needs them: read a
packet's header, write a stream's packets, turn DTMF packets into digits and digits into
packets. Pure: bytes in, bytes out, no sockets, no clock.

No jitter buffer: agents are not playing the caller out in real time, so a frame goes to the
agent as soon as its tick sees it, in sequence order, and a late or repeated packet (one at or
behind the newest sequence number seen) is dropped. The caller side is paced by the plane's
20 ms clock, which is what a jitter buffer would have given the far end anyway.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")
HEADER_BYTES = HEADER.size  # 12
_EVENT = struct.Struct("!BBH")
DTMF_EVENTS = "0123456789*#ABCD"
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


@dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    marker: bool
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse(packet: bytes | memoryview) -> RtpPacket | None:
    """The packet's header and payload, or None for anything that is not RTP version 2 with a
    consistent length (RTCP sent to the RTP port, garbage, a truncated datagram)."""
    size = len(packet)
    if size < HEADER_BYTES:
        return None
    first, second, seq, timestamp, ssrc = HEADER.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        return None
    payload_type = second & 0x7F
    if 72 <= payload_type <= 76:  # RTCP SR/RR/SDES/BYE/APP multiplexed on this port
        return None
    start = HEADER_BYTES + 4 * (first & 0x0F)
    if first & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if size < start + 4:
            return None
        (words,) = struct.unpack_from("!H", packet, start + 2)
        start += 4 + 4 * words
    end = size
    if first & 0x20:  # padding: the last byte says how much
        end -= packet[size - 1]
    if end < start:
        return None
    return RtpPacket(payload_type, bool(second & 0x80), seq, timestamp, ssrc,
                     bytes(packet[start:end]))  # fmt: skip


def seq_newer(seq: int, than: int) -> bool:
    """`seq` comes after `than` in 16-bit sequence space (RFC 3550 A.1's half-range rule)."""
    return 0 < (seq - than) % _SEQ_MOD < _SEQ_MOD // 2


class RtpSender:
    """One outgoing stream: a random SSRC, sequence number and timestamp start (RFC 3550
    5.1), the timestamp advancing by the frame's samples each tick whether or not a packet
    was sent in it, so that the far end's clock stays in step across DTMF and gaps."""

    def __init__(self, payload_type: int, samples_per_frame: int, rng: random.Random | None = None):
        rng = rng or random.SystemRandom()
        self.payload_type = payload_type
        self.samples = samples_per_frame
        self.ssrc = rng.getrandbits(32)
        self.seq = rng.getrandbits(16)
        self.timestamp = rng.getrandbits(32)
        self._marker = True  # the first packet of the stream starts a talkspurt
        self.sent = 0

    def audio(self, payload: bytes) -> bytes:
        """The next audio packet; the stream's clock moves one frame on."""
        packet = self._packet(self.payload_type, self._marker, self.timestamp, payload)
        self._marker = False
        self.timestamp = (self.timestamp + self.samples) % _TS_MOD
        return packet

    def skip(self) -> None:
        """A frame's time passed without audio (a DTMF packet went instead)."""
        self.timestamp = (self.timestamp + self.samples) % _TS_MOD

    def event(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bytes:
        return self._packet(payload_type, marker, timestamp, payload)

    def _packet(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bytes:
        header = HEADER.pack(0x80, payload_type | (0x80 if marker else 0), self.seq, timestamp,
                             self.ssrc)  # fmt: skip
        self.seq = (self.seq + 1) % _SEQ_MOD
        self.sent += 1
        return header + payload


class DtmfReceiver:
    """RFC 4733 packets in, each key press out once, when its first packet arrives (as pjsua
    reports them). Retransmitted end packets and the updates of one event share its RTP
    timestamp, which is what tells a held key from a new press of the same key."""

    def __init__(self) -> None:
        self._last: tuple[int, int] | None = None  # (ssrc, timestamp) of the event reported

    def push(self, packet: RtpPacket) -> str | None:
        if len(packet.payload) < _EVENT.size:
            return None
        event, _flags, _duration = _EVENT.unpack_from(packet.payload)
        if event >= len(DTMF_EVENTS):
            return None  # a tone event (RFC 4734) or flash: not a key
        key = (packet.ssrc, packet.timestamp)
        if key == self._last:
            return None
        self._last = key
        return DTMF_EVENTS[event]


class DtmfSender:
    """Digits queued, RFC 4733 packets out one per 20 ms tick (2.5): updates with a growing
    duration, then the end packet three times, then two ticks of audio before the next
    digit. Built a tick at a time, so that sequence numbers stay in order with the audio
    packets between digits."""

    TONE_FRAMES = 5  # 100 ms per key
    END_REPEATS = 3
    GAP_FRAMES = 2
    VOLUME = 10  # -10 dBm0

    def __init__(self, sender: RtpSender, payload_type: int) -> None:
        self._sender = sender
        self._payload_type = payload_type
        self._digits: list[int] = []
        self._frame = 0  # ticks into the current digit
        self._start = 0

    @property
    def active(self) -> bool:
        return bool(self._digits)

    def queue(self, digits: str) -> None:
        """ValueError for a character that is not a DTMF key."""
        events = []
        for digit in digits.upper():
            if digit not in DTMF_EVENTS:
                raise ValueError(f"{digit!r} is not a DTMF key (0-9, *, #, A-D)")
            events.append(DTMF_EVENTS.index(digit))
        self._digits.extend(events)

    def next_packet(self) -> bytes | None:
        """This tick's event packet, or None: this tick sends audio. The caller moves the
        stream's clock on either way (`RtpSender.skip` after an event packet)."""
        if not self._digits:
            return None
        sender, frame = self._sender, self._frame
        self._frame += 1
        tone, ends = self.TONE_FRAMES, self.TONE_FRAMES + self.END_REPEATS
        if frame == 0:
            self._start = sender.timestamp
        if frame < tone:
            payload = _EVENT.pack(self._digits[0], self.VOLUME, (frame + 1) * sender.samples)
            return sender.event(self._payload_type, frame == 0, self._start, payload)
        if frame < ends:
            payload = _EVENT.pack(self._digits[0], 0x80 | self.VOLUME, tone * sender.samples)
            return sender.event(self._payload_type, False, self._start, payload)
        if frame + 1 >= ends + self.GAP_FRAMES:
            self._digits.pop(0)
            self._frame = 0
        return None
