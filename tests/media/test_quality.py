"""RTP receive statistics and the E-model estimate: pure logic."""

from __future__ import annotations

from media.quality import RtpStats, mos_estimate


def feed(stats: RtpStats, seqs: list[int], jitter_s: float = 0.0, ssrc: int = 7) -> None:
    for i, seq in enumerate(seqs):
        late = jitter_s if i % 2 else 0.0
        stats.packet(ssrc, seq % 65536, (seq * 160) % (1 << 32), 100.0 + seq * 0.02 + late)


def test_a_clean_stream_has_no_loss_no_jitter_and_the_best_mos() -> None:
    stats = RtpStats()
    feed(stats, list(range(1, 501)))
    q = stats.snapshot()
    assert (q.packets_received, q.packets_lost) == (500, 0)
    assert (q.packet_loss_pct, q.jitter_ms) == (0.0, 0.0)
    assert q.mos is not None and q.mos > 4.3


def test_loss_is_counted_across_the_sequence_wrap() -> None:
    stats = RtpStats()
    seqs = [s for s in range(65000, 66000) if s % 10]  # every tenth lost, wrapping at 65536
    feed(stats, seqs)
    q = stats.snapshot()
    assert q.packets_lost == 1000 - len(seqs) - (1 if 65000 % 10 == 0 else 0)
    assert 9.0 < q.packet_loss_pct < 10.5
    assert q.mos is not None and q.mos < 4.0


def test_jitter_follows_rfc3550_and_lowers_the_mos() -> None:
    stats = RtpStats()
    feed(stats, list(range(1, 2001)), jitter_s=0.010)  # every other packet 10 ms late
    q = stats.snapshot()
    assert 9.0 < q.jitter_ms < 10.5  # J converges to the mean |D| = 10 ms
    assert q.mos is not None and q.mos < mos_estimate(0, 0)
    assert mos_estimate(0, 60) < mos_estimate(0, 0)


def test_a_new_ssrc_starts_the_counts_again_and_reordering_is_not_loss() -> None:
    stats = RtpStats()
    feed(stats, [1, 2, 3, 5, 4, 6])
    assert stats.snapshot().packets_lost == 0
    feed(stats, [100, 101], ssrc=9)
    assert stats.snapshot().packets_received == 2


def test_no_packet_no_mos_and_mos_stays_in_range() -> None:
    assert RtpStats().snapshot().mos is None
    assert mos_estimate(100, 500) == 1.0 and mos_estimate(0, 0) <= 4.5
