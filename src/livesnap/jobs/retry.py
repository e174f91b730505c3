"""Backoff policies (pure: the random draw is passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with jitter.

    Attempt ``n`` (0-based) waits ``min(cap, base * factor**n)`` scaled down by up to
    ``jitter`` (a fraction): the spread keeps many streams from reconnecting in lockstep.
    """

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 30.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s < self.base_s or self.factor < 1:
            raise ValueError("need 0 < base_s <= cap_s and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be within [0, 1]")

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait before attempt ``attempt + 1``; ``rand`` is uniform in [0, 1)."""
        exponent = min(max(attempt, 0), 64)
        ceiling = min(self.cap_s, self.base_s * self.factor**exponent)
        return ceiling * (1 - self.jitter * rand)
