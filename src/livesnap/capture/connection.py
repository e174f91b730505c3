"""One connection of a job's session: a stream reader from its start until it ends.

The PyAV work happens in a ``StreamReader`` thread (on a node, sessions on the same stream URL
share one through ``capture.shared``). Its events come here through a small bounded queue, a
new one per connection, so that a reader left to end by itself (per tick, or a stop during a
connect) is never heard again. The connection hands each capture to the job's ``Recorder``,
reports what goes wrong while live (failed decodes, keyframes that stop coming), and ends
with whether the stream was live and why it ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from livesnap.capture.metrics import CaptureMetrics
from livesnap.capture.recording import Recorder, Waiters, report_safely
from livesnap.capture.render import Renderer
from livesnap.capture.shared import StreamHub
from livesnap.capture.source import (
    Captured,
    CaptureFailed,
    Connected,
    Disconnected,
    FrameRejected,
    ReaderEvent,
    ReaderHandle,
    SourceOptions,
    StreamReader,
    TickMissed,
    make_tap,
)
from livesnap.clock import Clock
from livesnap.errors import InvalidParameter
from livesnap.jobs.models import Job, StreamStatus
from livesnap.jobs.ports import CaptureReports
from livesnap.jobs.schedule import TickSchedule

logger = logging.getLogger(__name__)

QUEUE_SIZE = 8
FAILED_DECODES_BEFORE_RECONNECT = 3
# A per-tick connection is only worth starting with this much of the tick's window left.
PER_TICK_MIN_ATTEMPT_S = 0.5


class _StopRequested:
    """Put on the event queue by ``Connection.stop``: wakes the connection waiting for its
    reader."""


Item = ReaderEvent | _StopRequested


@dataclass(frozen=True)
class Ended:
    """How a connection ended: was the stream live, why it ended, did it capture its tick
    (per tick)."""

    was_live: bool
    reason: str
    captured: bool = False


@dataclass(frozen=True, kw_only=True)
class Wiring:
    """What every connection of one session shares."""

    job: Job
    source: SourceOptions
    keyframe_timeout_s: float
    keyframe_check_s: float
    schedule: TickSchedule  # picks each tick's keyframe (in the reader thread)
    renderer: Renderer
    recorder: Recorder
    reports: CaptureReports
    metrics: CaptureMetrics
    clock: Clock
    streams: StreamHub | None  # None: every connection is the session's own
    stopping: asyncio.Event  # the session was asked to end
    waiters: Waiters  # capture-now callers; each capture answers those waiting
    on_live: Callable[[Connected], Awaitable[None]]


class Connection:
    """One reader's lifetime (see the module's docstring).

    Per tick: ``until_ms`` ends it at that wall-clock time, ``one_capture`` after its first
    capture, and ``capture_now`` asks the reader for the next keyframe at once.
    """

    def __init__(
        self, wiring: Wiring, *, until_ms: int | None = None, one_capture: bool = False,
        capture_now: bool = False,
    ) -> None:
        self._w = wiring
        self._until_ms = until_ms
        self._one_capture = one_capture
        self._capture_now = capture_now
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._reader: ReaderHandle | None = None
        self._live = False
        self._window_ended = False
        # keyframe watch: the count seen, when it last grew, reported?
        self._keyframes_seen = 0
        self._keyframe_at = 0.0
        self._keyframe_reported = False

    @property
    def _job_id(self) -> str:
        return self._w.job.id

    # control ---------------------------------------------------------------------------------
    @property
    def reading(self) -> bool:
        """Its reader is running (not yet checking the address, not ended)."""
        return self._reader is not None

    def stop(self) -> None:
        """Tell the reader to let go; a live one does at its next packet."""
        if self._reader is not None:
            self._reader.stop()
        self._wake()

    def request_capture(self) -> bool:
        """The reader keeps its next keyframe, whatever the schedule says; False when there is
        no reader yet (still checking the address) to ask."""
        if self._reader is None:
            return False
        self._reader.request_capture()
        return True

    # the connection --------------------------------------------------------------------------
    async def run(self) -> Ended:
        """Run the reader until it disconnects."""
        blocked = await self._blocked_reason()
        if blocked:
            return Ended(False, blocked)
        reader = self._open()
        timer = None
        if self._until_ms is not None:
            delay_s = max(0.0, (self._until_ms - self._now_ms()) / 1000)
            timer = asyncio.get_running_loop().call_later(delay_s, self._end_window)
        try:
            return await self._drain_events()
        finally:
            if timer is not None:
                timer.cancel()
            self._reader = None
            # neither a stop during a connect nor a per-tick connection waits for the reader
            # thread: it was told to stop, captures nothing more and ends by itself
            if not self._w.stopping.is_set() and not self._one_capture:
                await asyncio.to_thread(reader.join, self._w.source.rw_timeout_s + 5)

    def _open(self) -> ReaderHandle:
        """Start the reader (or join the node's reader of the same stream)."""
        loop = asyncio.get_running_loop()
        queue = self._queue

        def emit(event: ReaderEvent) -> None:  # called on the reader thread
            if not loop.is_closed():  # a reader left to end by itself may outlive the loop
                loop.call_soon_threadsafe(self._enqueue, queue, event)

        w = self._w
        source = w.source
        if self._until_ms is not None:  # per tick: an open may not outlast the tick's window
            window_s = max(PER_TICK_MIN_ATTEMPT_S, (self._until_ms - self._now_ms()) / 1000)
            source = dataclasses.replace(
                source, open_timeout_s=min(source.open_timeout_s, window_s))
        name = f"reader-{self._job_id[:8]}"
        tap = make_tap(options=source, selector=w.schedule, emit=emit, name=name,
                       job_id=self._job_id, renderer=w.renderer, feedback=w.schedule)
        connect = StreamReader if w.streams is None else w.streams.reader
        reader = connect(w.job.stream_url, options=source, name=name, tap=tap)
        self._reader = reader
        if self._capture_now:
            reader.request_capture()
        reader.start()
        if w.stopping.is_set():
            reader.stop()
        return reader

    def _end_window(self) -> None:
        self._window_ended = True
        self.stop()

    async def _blocked_reason(self) -> str:
        host = urlsplit(self._w.job.stream_url).hostname or ""
        try:
            await self._w.reports.check_host("StreamInput.Url", host)
        except InvalidParameter as exc:
            return exc.message
        return ""

    def _now_ms(self) -> int:
        return int(self._w.clock.time() * 1000)

    # the event queue -------------------------------------------------------------------------
    def _wake(self) -> None:
        """Tell the connection waiting on its queue to look at its stop flags."""
        if not self._queue.full():
            self._queue.put_nowait(_StopRequested())

    def _enqueue(self, queue: asyncio.Queue[Item], event: Item) -> None:
        """On the loop: keep control events; if the queue is full, drop the oldest capture."""
        if queue.full():
            self._drop_one_capture(queue)
        queue.put_nowait(event)

    def _drop_one_capture(self, queue: asyncio.Queue[Item]) -> None:
        kept: list[Item] = []
        dropped = False
        while not queue.empty():
            item = queue.get_nowait()
            if not dropped and isinstance(item, Captured):
                dropped = True
                logger.warning("capture dropped: the session fell behind its reader",
                               extra={"action": "capture_dropped", "job_id": self._job_id})
                continue
            kept.append(item)
        for item in kept[-(QUEUE_SIZE - 1):]:
            queue.put_nowait(item)

    async def _drain_events(self) -> Ended:
        failed_in_row = 0
        restart = ""  # why this connection stopped the reader itself
        while True:
            event = await self._next_event()
            if isinstance(event, _StopRequested):
                if self._one_capture or not self._live:  # the reader ends by itself
                    return Ended(self._live, self._why_ended("stopped", restart))
                continue  # live: it lets go at its next packet, with Disconnected
            if isinstance(event, Disconnected):
                return Ended(self._live or event.was_live, self._why_ended(event.reason, restart))
            if isinstance(event, Connected):
                await self._on_connected(event)
            elif isinstance(event, Captured):
                failed_in_row = 0
                await self._w.recorder.capture(
                    event.frame, [w for w in self._w.waiters if not w.done()])
                if self._one_capture and self._reader is not None:
                    # per tick: this connection is done; the reader ends by itself
                    self._reader.stop()
                    return Ended(True, "tick captured", captured=True)
            elif isinstance(event, CaptureFailed):
                failed_in_row += 1
                restart = await self._on_capture_failed(event, failed_in_row) or restart
            elif isinstance(event, FrameRejected):
                self._w.metrics.frame_rejected(event.verdict.value)
            elif isinstance(event, TickMissed):
                await self._w.recorder.tick_missed(event.verdict)

    def _why_ended(self, reader_reason: str, restart: str) -> str:
        """Why the connection ended: the reader's reason, unless the session stopped it."""
        if reader_reason != "stopped":
            return reader_reason
        if restart:
            return restart
        if self._window_ended:
            return "no keyframe before the tick's window ended"
        return reader_reason

    async def _next_event(self) -> Item:
        """The reader's next event; while none comes, watch the keyframes of a live stream."""
        queue = self._queue
        while True:
            if not queue.empty():
                return queue.get_nowait()
            # asyncio.timeout, not wait_for: wait_for runs the get as a task of its own, two
            # more loop turns for every event
            try:
                async with asyncio.timeout(self._w.keyframe_check_s):
                    return await queue.get()
            except TimeoutError:
                await self._check_keyframes()

    # while live ------------------------------------------------------------------------------
    async def _on_connected(self, event: Connected) -> None:
        self._live = True
        reader = self._reader
        self._keyframes_seen = reader.stats.keyframes if reader is not None else 0
        self._keyframe_at = self._w.clock.monotonic()
        self._keyframe_reported = False
        await self._w.on_live(event)

    async def _check_keyframes(self) -> None:
        reader = self._reader
        if reader is None or not self._live:
            return
        now = self._w.clock.monotonic()
        seen = reader.stats.keyframes
        if seen != self._keyframes_seen:
            self._keyframes_seen, self._keyframe_at = seen, now
            self._keyframe_reported = False
            return
        quiet = now - self._keyframe_at
        if quiet < self._w.keyframe_timeout_s or self._keyframe_reported:
            return
        self._keyframe_reported = True
        logger.warning("no keyframe", extra={"action": "no_keyframe", "job_id": self._job_id,
                                              "seconds": round(quiet, 1)})
        # The stream stays live (packets keep coming), so only LastError changes.
        await self._live_error(f"no keyframe for {quiet:.0f} s")

    async def _on_capture_failed(self, event: CaptureFailed, failed_in_row: int) -> str:
        """Report a failed capture; why the connection ends to reconnect, or "" if it does
        not."""
        self._w.metrics.capture_failed("decode")
        logger.warning("capture failed", extra={"action": "capture_failed",
                                                "job_id": self._job_id, "reason": event.reason})
        await self._live_error(f"capture failed: {event.reason}")
        if failed_in_row >= FAILED_DECODES_BEFORE_RECONNECT and self._reader is not None:
            why = f"capture failed {failed_in_row} times in a row ({event.reason}); reconnecting"
            self._reader.restart(why)  # a fresh connection picks up new codec parameters
            return why
        return ""

    async def _live_error(self, error: str) -> None:
        report = self._w.reports.stream_changed(self._job_id, StreamStatus.LIVE, error=error)
        await report_safely(report, "stream_changed", self._job_id)
