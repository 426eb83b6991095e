"""Call quality from the RTP a call receives: packets, loss, interarrival jitter (RFC 3550
6.4.1 and A.3, A.8) and an E-model MOS estimate (ITU-T G.107, simplified for G.711 with packet
loss concealment, as G.113 gives: Ie = 0, Bpl = 25.1). Pure: packets in, figures out.
"""

from __future__ import annotations

from dataclasses import dataclass

SEQ_MOD = 1 << 16


@dataclass(frozen=True, slots=True)
class Quality:
    packets_received: int
    packets_lost: int
    packet_loss_pct: float
    jitter_ms: float
    mos: float | None  # None until a packet has come


class RtpStats:
    """The receive side of one RTP stream (one SSRC at a time: a new SSRC starts again)."""

    __slots__ = ("clock_rate", "ssrc", "base_seq", "max_seq", "cycles", "received", "_transit",
                 "_jitter")  # fmt: skip

    def __init__(self, clock_rate: int = 8000) -> None:
        self.clock_rate = clock_rate
        self.ssrc: int | None = None
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.received = 0
        self._transit: float | None = None
        self._jitter = 0.0  # in timestamp units

    def packet(self, ssrc: int, seq: int, timestamp: int, arrival_s: float) -> None:
        if ssrc != self.ssrc:
            self.ssrc, self.base_seq, self.max_seq, self.cycles = ssrc, seq, seq, 0
            self.received, self._transit, self._jitter = 0, None, 0.0
        delta = (seq - self.max_seq) % SEQ_MOD
        if 0 < delta < SEQ_MOD // 2:  # in order, perhaps after a gap
            if seq < self.max_seq:
                self.cycles += SEQ_MOD
            self.max_seq = seq
        self.received += 1
        transit = arrival_s * self.clock_rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            self._jitter += (d - self._jitter) / 16
        self._transit = transit

    def snapshot(self) -> Quality:
        expected = self.cycles + self.max_seq - self.base_seq + 1 if self.ssrc is not None else 0
        lost = max(0, expected - self.received)
        loss = 100.0 * lost / expected if expected else 0.0
        jitter_ms = 1000.0 * self._jitter / self.clock_rate
        mos = mos_estimate(loss, jitter_ms) if self.received else None
        return Quality(self.received, lost, round(loss, 2), round(jitter_ms, 2), mos)


def mos_estimate(loss_pct: float, jitter_ms: float, delay_ms: float = 40.0) -> float:
    """E-model MOS for G.711 with PLC: one-way delay (`delay_ms`, plus a jitter buffer of twice
    the jitter) and random loss; 1.0 to 4.41 (the E-model's best for narrowband)."""
    d = delay_ms + 2 * jitter_ms
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    i_e_eff = 95.0 * loss_pct / (loss_pct + 25.1)  # Ie = 0, Bpl = 25.1 (G.113, G.711 + PLC)
    r = max(0.0, min(100.0, 93.2 - i_d - i_e_eff))
    mos = 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)
    return round(max(1.0, min(4.5, mos)), 2)
