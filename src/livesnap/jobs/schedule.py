"""Which keyframe to capture for which tick (pure; the caller passes the time in).

Ticks are aligned to the session's start: ``start, start + interval, …``. For each tick the
first keyframe at or after it is captured. Keyframes only exist once per GOP, so the capture
lands up to one GOP after its tick; when the GOP is longer than the interval every keyframe
is captured and the effective interval is the GOP, which the job reports.

When the frame-quality gate rejects the tick's keyframe, the tick's next keyframes are tried;
a tick that ends with none accepted is "missed", reported with the last rejection's verdict.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from livesnap.jobs.models import Verdict


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
        self._retry: Verdict | None = None  # the tick's keyframe was rejected: try the next
        self._skipped = 0  # keyframes rejected in the current tick
        self._missed: list[Verdict] = []
        # One reader thread calls on_keyframe while the session's loop reads the figures.
        self._lock = threading.Lock()

    def on_keyframe(self, wall_time: float) -> bool:
        # rounded, not truncated: 1.001 s is 1000.999… ms in binary floating point
        now_ms = round(wall_time * 1000)
        with self._lock:
            if self._retry is not None:
                if now_ms < self._next_tick_ms:
                    return True  # another try within the same tick
                self._missed.append(self._retry)
                self._retry, self._skipped = None, 0
            chosen = select(
                next_tick_ms=self._next_tick_ms, interval_ms=self.interval_ms, keyframe_ms=now_ms
            )
            self._next_tick_ms = chosen.next_tick_ms
            if chosen.capture:
                self._note_capture(now_ms)
            return chosen.capture

    def rejected(self, verdict: Verdict) -> None:
        """The keyframe just selected failed the quality gate: try the tick's next one."""
        with self._lock:
            self._retry = verdict
            self._skipped += 1

    def accepted(self) -> int:
        """The keyframe just selected passed; returns how many the tick rejected before it."""
        with self._lock:
            skipped = self._skipped
            self._retry, self._skipped = None, 0
            return skipped

    def take_missed(self) -> list[Verdict]:
        """Ticks that ended without an accepted keyframe since the last call (their verdicts)."""
        with self._lock:
            missed, self._missed = self._missed, []
            return missed

    @property
    def next_tick_ms(self) -> int:
        """The tick the next capture is for."""
        with self._lock:
            return self._next_tick_ms

    def close_tick(self, now_ms: int) -> None:
        """A per-tick connection ends at ``now_ms`` without the tick's capture: a tick whose
        keyframes the gate rejected is missed (``take_missed``), and the next tick is the
        first one after ``now_ms``."""
        with self._lock:
            if self._retry is not None:
                self._missed.append(self._retry)
                self._retry, self._skipped = None, 0
            if now_ms >= self._next_tick_ms:
                passed = (now_ms - self._next_tick_ms) // self.interval_ms + 1
                self._next_tick_ms += passed * self.interval_ms

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


def ticks_missed(*, previous_ms: int | None, capture_ms: int, interval_ms: int) -> int:
    """Ticks with no capture between two consecutive captures ``interval_ms`` apart.

    A capture lands on the first keyframe at or after its tick, so consecutive captures are
    ``interval_ms`` apart give or take a GOP; rounding absorbs that while the GOP is under
    half the interval (a longer GOP makes the effective interval the one to pass).
    """
    if previous_ms is None or interval_ms <= 0 or capture_ms <= previous_ms:
        return 0
    return max(0, round((capture_ms - previous_ms) / interval_ms) - 1)


def ticks_passed(*, previous_ms: int | None, now_ms: int, interval_ms: int) -> int:
    """Ticks whose window has ended by ``now_ms`` with no capture since the one at
    ``previous_ms``: the next tick is due about an interval after a capture and its keyframe
    may come until the tick after it. Never more than ``ticks_missed`` gives for a capture
    at or after ``now_ms``, so counting these first and the rest at the capture agrees."""
    if previous_ms is None or interval_ms <= 0 or now_ms <= previous_ms:
        return 0
    return max(0, (now_ms - previous_ms) // interval_ms - 1)
