"""Capped exponential backoff with full jitter, for the poll loops and the sinks.

The delay after the n-th consecutive failure (n from 0) is uniform in
``[0, min(max_s, min_s * 2**n))``: "full jitter", which spreads the retries of many
clients that failed together (the AWS Architecture Blog, "Exponential Backoff And
Jitter", 2015).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Backoff", "backoff_delay"]


def backoff_delay(
    attempt: int, min_s: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, min(max_s, min_s * 2**attempt))``."""
    return float(rand() * min(max_s, min_s * 2.0 ** min(attempt, 62)))


@dataclass
class Backoff:
    """:func:`backoff_delay` with its attempt counter: ``next_delay()`` after each failure,
    ``reset()`` after a success."""

    min_s: float = 0.5
    max_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        delay = backoff_delay(self.attempt, self.min_s, self.max_s, self.rng.random)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
