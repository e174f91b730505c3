"""Which keyframe to capture for which tick (pure; the caller passes the time in).

Ticks are aligned to the session's start: ``start, start + interval, …``. For each tick the
first keyframe at or after it is captured. Keyframes only exist once per GOP, so the capture
lands up to one GOP after its tick; when the GOP is longer than the interval every keyframe
is captured and the effective interval is the GOP, which the job reports.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Selection:
    capture: bool
    next_tick_ms: int


def select(*, next_tick_ms: int, interval_ms: int, keyframe_ms: int) -> Selection:
    """Decide for one keyframe arriving at ``keyframe_ms``.

    A keyframe before the next tick is skipped. One at or after it is captured, and the next
    tick is the first tick strictly after the keyframe (ticks missed during an outage or a
    long GOP are not captured late one after another).
    """
    if interval_ms <= 0:
        raise ValueError("interval_ms must be positive")
    if keyframe_ms < next_tick_ms:
        return Selection(capture=False, next_tick_ms=next_tick_ms)
    passed = (keyframe_ms - next_tick_ms) // interval_ms + 1
    return Selection(capture=True, next_tick_ms=next_tick_ms + passed * interval_ms)


def effective_interval(*, interval_ms: int, capture_gaps_ms: list[int]) -> int | None:
    """The interval the job really achieves when the GOP is longer than the interval.

    ``capture_gaps_ms`` are the gaps between recent consecutive captures. None while the
    captures keep to the interval (a gap shorter than 1.5 intervals counts as on time).
    """
    if not capture_gaps_ms:
        return None
    ordered = sorted(capture_gaps_ms)
    median = ordered[len(ordered) // 2]
    return median if median * 2 > interval_ms * 3 else None


class TickSchedule:
    """The per-session selector: called from the reader thread for every keyframe."""

    _GAPS_KEPT = 5

    def __init__(self, *, interval_ms: int, start_ms: int) -> None:
        self.interval_ms = interval_ms
        self._next_tick_ms = start_ms
        self._last_capture_ms: int | None = None
        self._gaps: list[int] = []
        # One reader thread calls on_keyframe while the session's loop reads the figures.
        self._lock = threading.Lock()

    def on_keyframe(self, wall_time: float) -> bool:
        now_ms = int(wall_time * 1000)
        with self._lock:
            chosen = select(
                next_tick_ms=self._next_tick_ms, interval_ms=self.interval_ms, keyframe_ms=now_ms
            )
            self._next_tick_ms = chosen.next_tick_ms
            if chosen.capture:
                self._note_capture(now_ms)
            return chosen.capture

    def _note_capture(self, now_ms: int) -> None:
        if self._last_capture_ms is not None:
            self._gaps = [*self._gaps, now_ms - self._last_capture_ms][-self._GAPS_KEPT :]
        self._last_capture_ms = now_ms

    def reset_gaps(self) -> None:
        """Forget capture gaps (after a reconnect the first gap says nothing of the GOP)."""
        with self._lock:
            self._last_capture_ms = None
            self._gaps = []

    @property
    def effective_interval_ms(self) -> int | None:
        with self._lock:
            gaps = list(self._gaps)
        return effective_interval(interval_ms=self.interval_ms, capture_gaps_ms=gaps)
