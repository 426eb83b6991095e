"""Capped exponential backoff with full jitter, for re-registration after failures."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    minimum: float
    maximum: float
    factor: float = 2.0
    attempts: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        """Delay before the next attempt: grows by `factor` up to `maximum`, jittered so a
        registrar restart is not met by every node at the same instant."""
        # attempts + 1: even the first retry is spread over [minimum, minimum * factor].
        try:
            grown = self.minimum * self.factor ** (self.attempts + 1)
        except OverflowError:  # after ~1000 failures factor**attempts leaves float range
            grown = self.maximum
        ceiling = min(self.maximum, grown)
        self.attempts += 1
        return self.rng.uniform(max(self.minimum, ceiling / 2), ceiling)

    def reset(self) -> None:
        self.attempts = 0
