"""Shedding keyframe decodes while this process's event loop is far behind.

One capture process saturates its core at a few hundred 1080p jobs: the stream readers'
keyframe decodes (most of their CPU) then take the core, and the event loop that stores and
records the pictures gets so little of it that nothing is recorded at all; an overloaded
process did not slow down, it stopped (docs/performance.md). :class:`LoopWatch` measures how
late the loop wakes from a short sleep. While it has been late by ``late_s`` or more on
several checks in a row, the readers decode only the keyframes a user asked for (capture
now): the ticks they skip are counted as missed, the captures they do decode get recorded,
and the loop catches up. It stops shedding once the loop is on time again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

from livesnap.capture.metrics import CaptureMetrics, NoCaptureMetrics

logger = logging.getLogger(__name__)

CHECK_S = 0.25  # the watch's sleep; how late it wakes is the loop's delay
LATE_CHECKS_TO_SHED = 3  # checks in a row at least ``late_s`` late before shedding starts
ON_TIME_CHECKS_TO_STOP = 2  # checks in a row under a quarter of ``late_s`` to stop


class LoopWatch:
    """How late this process's event loop runs, and whether readers shed decodes now.

    ``shedding`` is read by reader threads (a plain attribute; a stale read costs one
    keyframe at most) and written only by :meth:`observe` on the loop.
    """

    def __init__(self, late_s: float, metrics: CaptureMetrics | None = None) -> None:
        if late_s <= 0:
            raise ValueError("late_s must be positive")
        self.late_s = late_s
        self.shedding = False
        self._metrics = metrics or NoCaptureMetrics()
        self._late_in_row = 0
        self._on_time_in_row = 0
        self._lock = threading.Lock()  # reader threads count what they skip
        self._shed = 0
        self._shed_reported = 0
        self._episode_shed = 0
        self._task: asyncio.Task[None] | None = None

    # reader threads ----------------------------------------------------------------------
    def should_shed(self) -> bool:
        """For a reader about to decode a keyframe no user asked for: skip it? Counts it."""
        if not self.shedding:
            return False
        with self._lock:
            self._shed += 1
        return True

    # the loop ------------------------------------------------------------------------------
    def observe(self, late_s: float) -> None:
        """One check found the loop ``late_s`` seconds late: update ``shedding``."""
        self._report_shed()
        if late_s >= self.late_s:
            self._late_in_row += 1
            self._on_time_in_row = 0
        elif late_s < self.late_s / 4:
            self._on_time_in_row += 1
            self._late_in_row = 0
        else:  # neither: keep the state and both runs as they are
            return
        if not self.shedding and self._late_in_row >= LATE_CHECKS_TO_SHED:
            self.shedding = True
            self._episode_shed = 0
            logger.warning(
                "capture overloaded: the event loop is %.1f s behind; keyframes are not "
                "decoded (their ticks count as missed) until it catches up", late_s,
                extra={"action": "capture.shedding", "late_s": round(late_s, 2)})
        elif self.shedding and self._on_time_in_row >= ON_TIME_CHECKS_TO_STOP:
            self.shedding = False
            logger.warning(
                "capture no longer overloaded: keyframes are decoded again (%d skipped)",
                self._episode_shed,
                extra={"action": "capture.shedding_ended", "skipped": self._episode_shed})

    @property
    def shed_total(self) -> int:
        """Keyframe decodes skipped so far."""
        with self._lock:
            return self._shed

    def _report_shed(self) -> None:
        with self._lock:
            new = self._shed - self._shed_reported
        for _ in range(new):
            self._metrics.capture_failed("overload")
        self._shed_reported += new
        self._episode_shed += new

    async def run(self, check_s: float = CHECK_S) -> None:
        """Check the loop every ``check_s`` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(check_s)
            self.observe(max(0.0, loop.time() - started - check_s))

    def start(self) -> None:
        """Run the checks on the running loop (once)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="loop-watch")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.shedding = False
