"""Re-registration backoff: grows by its factor, capped, jittered, and starts over on reset()."""

from __future__ import annotations

import itertools
import random

from gateway.backoff import Backoff


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_delays_stay_within_minimum_and_maximum() -> None:
    backoff = Backoff(5.0, 300.0, rng=random.Random(1))
    assert all(5.0 <= d <= 300.0 for d in delays(backoff, 200))


def test_delay_n_lies_between_half_its_ceiling_and_its_ceiling() -> None:
    backoff = Backoff(1.0, 1000.0, rng=random.Random(2))
    for attempt, delay in enumerate(delays(backoff, 8)):
        ceiling = 2.0 ** (attempt + 1)
        assert max(1.0, ceiling / 2) <= delay <= ceiling


def test_delays_grow_until_the_maximum() -> None:
    backoff = Backoff(1.0, 64.0, rng=random.Random(3))
    got = delays(backoff, 12)
    # Retry n is drawn from [2^n, 2^(n+1)], so each lies at or above the previous window's top
    # until the window reaches the cap [32, 64].
    assert all(later >= earlier for earlier, later in itertools.pairwise(got[:6]))
    assert all(32.0 <= d <= 64.0 for d in got[5:])


def test_growth_follows_the_factor() -> None:
    backoff = Backoff(1.0, 10_000.0, factor=3.0, rng=random.Random(4))
    got = delays(backoff, 5)
    assert 27.0 / 2 <= got[2] <= 27.0
    assert 243.0 / 2 <= got[4] <= 243.0


def test_delays_are_jittered() -> None:
    backoff = Backoff(5.0, 300.0, rng=random.Random(5))
    capped = delays(backoff, 50)[10:]  # all at the cap: only jitter tells them apart
    assert len(set(capped)) == len(capped)
    assert min(capped) < 250.0 < max(capped)


def test_even_the_first_retry_is_jittered() -> None:
    # Every node sees a registrar restart at once; they must not all retry at the same instant.
    firsts = {Backoff(5.0, 300.0, rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(firsts) == 20
    assert all(5.0 <= d <= 10.0 for d in firsts)


def test_same_seed_gives_the_same_delays() -> None:
    a = Backoff(5.0, 300.0, rng=random.Random(42))
    b = Backoff(5.0, 300.0, rng=random.Random(42))
    assert delays(a, 10) == delays(b, 10)


def test_attempts_count_every_delay_handed_out() -> None:
    backoff = Backoff(5.0, 300.0, rng=random.Random(6))
    delays(backoff, 7)
    assert backoff.attempts == 7


def test_reset_starts_over() -> None:
    backoff = Backoff(5.0, 300.0, rng=random.Random(7))
    delays(backoff, 10)
    backoff.reset()
    assert backoff.attempts == 0
    assert 5.0 <= backoff.next_delay() <= 10.0


def test_equal_minimum_and_maximum_gives_a_fixed_delay() -> None:
    backoff = Backoff(30.0, 30.0, rng=random.Random(8))
    assert delays(backoff, 5) == [30.0] * 5


def test_thousands_of_failures_stay_capped_without_overflow() -> None:
    # A trunk whose registrar is gone for days keeps retrying at the cap.
    backoff = Backoff(5.0, 300.0, rng=random.Random(9))
    got = delays(backoff, 3000)
    assert all(150.0 <= d <= 300.0 for d in got[-100:])
    assert backoff.attempts == 3000


def test_default_rng_needs_no_seed() -> None:
    assert 5.0 <= Backoff(5.0, 300.0).next_delay() <= 300.0
