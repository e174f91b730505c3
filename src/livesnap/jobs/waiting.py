"""When a job waiting for its stream is probed again (pure; the manager runs the waits).

A job whose stream was not live at Submit, or that was paused when its stream stayed away
past the outage window, is *waiting* (``StreamStatus.WAITING``). The manager keeps one small
task per waiting job that sleeps, tries the job again, and sleeps longer after each miss
(``first_s`` doubling up to ``max_s``, with jitter so that jobs submitted together do not
probe together). At most ``per_host`` probes of one stream host run at a time, so a thousand
jobs on one dead origin do not knock on it at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class WaitPolicy:
    """When a waiting job's stream is probed again."""

    first_s: float = 2.0
    max_s: float = 30.0
    # an origin that accepts a play of a stream nobody publishes yet (nginx-rtmp does) holds
    # each probe until the read timeout: two at a time would probe 500 jobs every 20 min
    per_host: int = 8
    jitter: float = 0.2  # each wait is stretched or shrunk by up to this fraction

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("WaitPolicy needs 0 < first_s <= max_s")
        if self.per_host < 1:
            raise ValueError("WaitPolicy.per_host must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("WaitPolicy.jitter must be within [0, 1)")

    def wait_s(self, misses: int, unit: float) -> float:
        """The wait after ``misses`` failed attempts; ``unit`` in [0, 1) picks the jitter."""
        base = min(self.max_s, self.first_s * 2.0 ** min(misses, 32))
        return float(base * (1 + self.jitter * (2 * unit - 1)))
