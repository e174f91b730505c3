"""One job's capture session: connect → live → (drop) → reconnecting → live …

The PyAV work happens in a ``StreamReader`` thread, one per connection (on a node, sessions on
the same stream URL share it through ``capture.shared``). This asyncio task owns the
lifecycle: it starts readers, receives their events through a small bounded queue, hands each
JPEG to the route's upload queue (which stores it in the background, spooling while the store
is away, and only then has the manager record it), and reconnects with capped exponential
backoff and jitter. A stream that stays away for the whole outage window pauses the job.

A job runs in one of two connection modes (``jobs.connect``). **Persistent**: one reader stays
connected and the schedule picks each tick's keyframe from everything it reads. **Per tick**:
the session sleeps until shortly before each tick (the lead it learns from its own opens),
connects, keeps the first keyframe at or after the tick (the same schedule, quality gate and
drain), and disconnects; a failed connect is retried with backoff until the tick's window
ends, and a window that ends with no capture is a missed tick.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from livesnap.capture.metrics import CaptureMetrics, NoCaptureMetrics
from livesnap.capture.pointer import latest_pointer
from livesnap.capture.render import Renderer
from livesnap.capture.shared import StreamHub
from livesnap.capture.source import (
    Captured,
    CapturedFrame,
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
from livesnap.errors import (
    CaptureTimeout,
    FencedOut,
    InvalidParameter,
    OutputError,
    StoreError,
    StreamNotFound,
)
from livesnap.jobs import imaging, naming
from livesnap.jobs.connect import (
    DEFAULT_PER_TICK_MIN_INTERVAL_S,
    LeadOptions,
    LeadTime,
    connect_at_ms,
    resolve,
)
from livesnap.jobs.models import ConnectMode, Job, SnapshotFile, StreamStatus, Verdict
from livesnap.jobs.ports import CaptureReport, CaptureReports
from livesnap.jobs.retry import Backoff
from livesnap.jobs.schedule import TickSchedule, ticks_missed, ticks_passed
from livesnap.outputs.base import ObjectMeta, PendingObject, SinkRouter, Upload

logger = logging.getLogger(__name__)

QUEUE_SIZE = 8
FAILED_DECODES_BEFORE_RECONNECT = 3
# A stored capture whose record cannot be written (the database is locked or away) is retried
# with these pauses, doubling, for as long as it takes: its objects exist, and a record given
# up would leave them unrecorded and without a callback. The job's later captures wait in the
# upload queue (and its bounded spool) meanwhile.
RECORD_RETRY_FIRST_S = 0.5
RECORD_RETRY_MAX_S = 5.0
# A per-tick retry is only worth starting with this much of the tick's window left.
PER_TICK_MIN_ATTEMPT_S = 0.5


class _StopRequested:
    """Put on the event queue by ``Session.stop``: wakes a session waiting for its reader."""


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """How a session reconnects and what it reports.

    ``keyframe_timeout_s``: a live stream that brings no keyframe for this long gets a
    ``LastError`` saying so (the demuxer drops non-key packets, so nothing else would show it).
    ``share_streams``: a node's sessions on the same stream URL share one connection and one
    decode per keyframe (``capture.shared``); off, each session connects on its own.
    """

    source: SourceOptions = field(default_factory=SourceOptions)
    backoff: Backoff = field(default_factory=Backoff)
    outage_window_s: float = 1800.0
    capture_timeout_s: float = 10.0
    keyframe_timeout_s: float = 30.0
    per_tick_min_interval_s: float = DEFAULT_PER_TICK_MIN_INTERVAL_S
    lead: LeadOptions = field(default_factory=LeadOptions)
    share_streams: bool = True

    @property
    def keyframe_check_s(self) -> float:
        """How often a waiting session looks at the reader's keyframe count."""
        return max(0.5, self.keyframe_timeout_s / 4)


class Session:
    """Captures one job until stopped or until its stream stays away too long."""

    def __init__(
        self,
        job: Job,
        *,
        reports: CaptureReports,
        sinks: SinkRouter,
        clock: Clock,
        options: SessionOptions,
        probe: bool = False,
        rand: Callable[[], float] = random.random,
        metrics: CaptureMetrics | None = None,
        streams: StreamHub | None = None,
    ) -> None:
        self.job = job
        self._streams = streams  # None: every connection is the session's own
        self._metrics = metrics or NoCaptureMetrics()
        self._probe = probe
        self._reports = reports
        self._sinks = sinks
        self._clock = clock
        self._opts = options
        self._rand = rand
        self.schedule = TickSchedule(
            interval_ms=job.interval_s * 1000, start_ms=int(clock.time() * 1000)
        )
        # One renderer for the whole session: the gate compares with the previous capture
        # across reconnects too.
        self._renderer = Renderer(job.image, default_quality=options.source.jpeg_quality)
        self._quality_error = False  # LastError shows a missed tick
        # Missed ticks are counted from the job's last snapshot when the job was running
        # already (resume after a restart, a takeover by another shard); a start by command
        # or submit (probe) begins afresh: the time the job was stopped is not "missed".
        self._previous_capture_ms = None if probe else job.last_snapshot_ms
        self._missed_counted = 0  # ticks since that capture already added to MissedTicks
        self.mode = resolve(job.connect_mode, interval_s=job.interval_s,
                            per_tick_min_interval_s=options.per_tick_min_interval_s)
        self.lead = LeadTime(options.lead)
        self._capture_asked = asyncio.Event()  # per tick: capture now, between ticks
        self._one_capture = False  # per tick: the connection ends after its capture
        self._captured_here = False  # this connection captured
        self._window_ended = False  # this connection's tick window ended (per tick)
        # the current connection's events: a new queue for each reader, so that a reader
        # left to end by itself (per tick, or a stop during a connect) is never heard again
        self._queue: asyncio.Queue[ReaderEvent | _StopRequested] = asyncio.Queue(
            maxsize=QUEUE_SIZE)
        self._stopping = asyncio.Event()
        self._reader: ReaderHandle | None = None
        self._stream_status: StreamStatus | None = None
        self._stream_written: StreamStatus | None = None  # what the job row says
        self._last_create_ms = 0
        self._waiters: list[asyncio.Future[SnapshotFile]] = []
        self._reported_interval: int | None = None
        self.first_live: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.dropped_events = 0
        self.captures = 0
        self._storage_error = ""  # the storage trouble LastError shows now ("" = none)
        # keyframe watch of the live connection: count seen, when it last grew, reported?
        self._keyframes_seen = 0
        self._keyframe_at = 0.0
        self._keyframe_reported = False

    # control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the session to end. ``run`` returns once a live reader has let go; a reader
        still connecting is left to end by itself (it captures nothing more), so a stop
        during a connect takes effect at once."""
        self._stopping.set()
        if self._reader is not None:
            self._reader.stop()
        self._wake(self._queue)

    async def capture_now(self) -> SnapshotFile:
        """The next keyframe, stored and recorded, whatever the schedule says. A per-tick
        job between ticks connects for it."""
        per_tick = self.mode is ConnectMode.PER_TICK
        if not per_tick and (
            self._reader is None or self._stream_status is not StreamStatus.LIVE
        ):
            raise CaptureTimeout("The stream is not live right now.")
        waiter: asyncio.Future[SnapshotFile] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._reader is not None:
            self._reader.request_capture()
        else:
            self._capture_asked.set()
        try:
            return await asyncio.wait_for(waiter, self._opts.capture_timeout_s)
        except TimeoutError as exc:
            raise CaptureTimeout() from exc
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    # main loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.mode is ConnectMode.PER_TICK:
            await self._run_per_tick()
            return
        attempt = 0
        outage_since: float | None = None
        await self._set_stream(StreamStatus.CONNECTING)
        while not self._stopping.is_set():
            was_live, reason = await self._one_connection()
            if self._stopping.is_set():
                break
            if self._probe_failed(reason):
                return
            if was_live:
                attempt, outage_since = 0, self._clock.monotonic()
                self.schedule.reset_gaps()
            outage_since = outage_since or self._clock.monotonic()
            if await self._outage_over(outage_since, reason):
                return
            await self._set_stream(StreamStatus.RECONNECTING, error=reason)
            self._metrics.reconnect()
            await self._wait_backoff(attempt)
            attempt += 1
        if not self.first_live.done():
            self.first_live.cancel()

    async def _wait_backoff(self, attempt: int, *, limit_s: float | None = None) -> None:
        delay = self._opts.backoff.delay(attempt, self._rand())
        if limit_s is not None:
            delay = min(delay, limit_s)
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return

    # per tick --------------------------------------------------------------------------------
    async def _run_per_tick(self) -> None:
        """Connect for each tick, keep its keyframe, disconnect (see the module's docstring)."""
        await self._set_stream(StreamStatus.CONNECTING)
        last_good = self._clock.monotonic()  # the outage window counts from the last capture
        while not self._stopping.is_set():
            tick_ms = self.schedule.next_tick_ms
            lead_s = self.lead.lead_s(self.job.interval_s)
            wake_ms = connect_at_ms(tick_ms=tick_ms, lead_s=lead_s, now_ms=self._now_ms())
            asked = await self._sleep_until(wake_ms)
            if self._stopping.is_set():
                break
            end_ms = self._window_end_ms(tick_ms, lead_s, asked=asked)
            captured, reason = await self._tick_window(end_ms, asked=asked)
            if self._stopping.is_set():
                break
            if self._probe_failed(reason):
                return
            if captured:
                last_good = self._clock.monotonic()
                continue
            if not asked:
                self.schedule.close_tick(self._now_ms())
                # the gap across a failed tick says nothing of the GOP (effective interval)
                self.schedule.reset_gaps()
                for verdict in self.schedule.take_missed():
                    await self._on_tick_missed(TickMissed(verdict=verdict))
            if await self._outage_over(last_good, reason):
                return
        if not self.first_live.done():
            self.first_live.cancel()

    def _window_end_ms(self, tick_ms: int, lead_s: float, *, asked: bool) -> int:
        """When a per-tick connection gives up. A capture now: after its timeout. A tick: where
        the next tick's connect begins, but never sooner than one interval (at most the
        capture timeout) after connecting, so that an origin that sends nothing until its next
        keyframe has a whole GOP to send it; a probing start gets the whole probe time."""
        now_ms = self._now_ms()
        timeout_ms = round(self._opts.capture_timeout_s * 1000)
        if asked or self._probing:
            return now_ms + timeout_ms
        interval_ms = self.job.interval_s * 1000
        return max(tick_ms + interval_ms - round(lead_s * 1000),
                   now_ms + min(interval_ms, timeout_ms))

    @property
    def _probing(self) -> bool:
        """A start by submit or command that has not seen its stream live yet."""
        return self._probe and not self.first_live.done()

    def _probe_failed(self, reason: str) -> bool:
        """A probing start whose stream is not live fails at once instead of retrying: the
        caller gets StreamNotFound and nothing keeps running."""
        if not self._probing:
            return False
        self.first_live.set_exception(StreamNotFound(f"No such stream ({reason})."))
        return True

    async def _outage_over(self, since: float, reason: str) -> bool:
        """The stream has been away for the whole outage window since ``since`` (monotonic):
        the job is paused."""
        if self._clock.monotonic() - since < self._opts.outage_window_s:
            return False
        # the ticks of the outage, which no capture will count now that the job pauses
        passed = ticks_passed(previous_ms=self._previous_capture_ms, now_ms=self._now_ms(),
                              interval_ms=self._tick_ms())
        await self._count_missed(passed - self._missed_counted)
        await self._reports.stream_gone(
            self.job.id, f"stream offline for {self._opts.outage_window_s:.0f} s: {reason}")
        return True

    async def _sleep_until(self, wake_ms: int) -> bool:
        """Sleep until ``wake_ms`` (wall clock), a stop, or a capture-now request (True)."""
        if self._capture_asked.is_set():
            self._capture_asked.clear()
            if any(not w.done() for w in self._waiters):  # not one that timed out meanwhile
                return True
        delay = (wake_ms - self._now_ms()) / 1000
        if delay <= 0:
            return False
        waits = [asyncio.ensure_future(self._stopping.wait()),
                 asyncio.ensure_future(self._capture_asked.wait())]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
        if self._capture_asked.is_set() and not self._stopping.is_set():
            self._capture_asked.clear()
            return True
        return False

    async def _tick_window(self, end_ms: int, *, asked: bool) -> tuple[bool, str]:
        """Connect (again, with backoff) until a capture or ``end_ms``; (captured, why not)."""
        attempt = 0
        reason = ""
        while not self._stopping.is_set():
            remaining_s = (end_ms - self._now_ms()) / 1000
            if remaining_s < PER_TICK_MIN_ATTEMPT_S and attempt > 0:
                break
            was_live, reason = await self._one_connection(
                until_ms=end_ms, one_capture=True, capture_now=asked)
            if self._captured_here or self._stopping.is_set():
                return self._captured_here, reason
            if self._probing:
                return False, reason  # a probing start fails at once
            if not was_live:
                await self._set_stream(StreamStatus.RECONNECTING, error=reason)
                self._metrics.reconnect()
            else:  # live, but no keyframe it could keep: LastError says so until a capture
                await self._report(self._reports.stream_changed(
                    self.job.id, StreamStatus.LIVE, error=reason), "stream_changed")
                self._stream_written = None  # the next connect writes live again, clearing it
            remaining_s = (end_ms - self._now_ms()) / 1000
            if remaining_s < PER_TICK_MIN_ATTEMPT_S:
                break
            await self._wait_backoff(attempt, limit_s=remaining_s - PER_TICK_MIN_ATTEMPT_S)
            attempt += 1
        return False, reason or "no keyframe in the tick"

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    # one connection --------------------------------------------------------------------------
    async def _one_connection(
        self, *, until_ms: int | None = None, one_capture: bool = False,
        capture_now: bool = False,
    ) -> tuple[bool, str]:
        """Run one reader until it disconnects; (was it live, why it ended).

        Per tick: ``until_ms`` ends the connection at that wall-clock time, ``one_capture``
        after its first capture, and ``capture_now`` asks the reader for the next keyframe.
        """
        blocked = await self._blocked_reason()
        if blocked:
            return False, blocked
        loop = asyncio.get_running_loop()

        queue: asyncio.Queue[ReaderEvent | _StopRequested] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._queue = queue

        def emit(event: ReaderEvent) -> None:  # called on the reader thread
            if not loop.is_closed():  # a reader left to end by itself may outlive the loop
                loop.call_soon_threadsafe(self._enqueue, queue, event)

        source = self._opts.source
        if until_ms is not None:  # per tick: an open may not outlast the tick's window
            window_s = max(PER_TICK_MIN_ATTEMPT_S, (until_ms - self._now_ms()) / 1000)
            source = dataclasses.replace(
                source, open_timeout_s=min(source.open_timeout_s, window_s))
        name = f"reader-{self.job.id[:8]}"
        tap = make_tap(options=source, selector=self.schedule, emit=emit, name=name,
                       job_id=self.job.id, renderer=self._renderer, feedback=self.schedule)
        connect = StreamReader if self._streams is None else self._streams.reader
        reader = connect(self.job.stream_url, options=source, name=name, tap=tap)
        self._reader = reader
        self._one_capture, self._captured_here = one_capture, False
        if capture_now:
            reader.request_capture()
        reader.start()
        if self._stopping.is_set():
            reader.stop()
        timer = None
        if until_ms is not None:
            self._window_ended = False
            timer = loop.call_later(max(0.0, (until_ms - self._now_ms()) / 1000),
                                    self._end_window, reader)
        try:
            return await self._drain_events()
        finally:
            if timer is not None:
                timer.cancel()
            self._reader = None
            # neither a stop during a connect nor a per-tick connection waits for the reader
            # thread: it was told to stop, captures nothing more and ends by itself
            if not self._stopping.is_set() and not one_capture:
                await asyncio.to_thread(reader.join, self._opts.source.rw_timeout_s + 5)

    def _end_window(self, reader: ReaderHandle) -> None:
        self._window_ended = True
        reader.stop()
        self._wake(self._queue)

    async def _blocked_reason(self) -> str:
        host = urlsplit(self.job.stream_url).hostname or ""
        try:
            await self._reports.check_host("StreamInput.Url", host)
        except InvalidParameter as exc:
            return exc.message
        return ""

    def _wake(self, queue: asyncio.Queue[ReaderEvent | _StopRequested]) -> None:
        """Tell the session waiting on ``queue`` to look at its stop flags."""
        if not queue.full():
            queue.put_nowait(_StopRequested())

    def _enqueue(
        self, queue: asyncio.Queue[ReaderEvent | _StopRequested],
        event: ReaderEvent | _StopRequested,
    ) -> None:
        """On the loop: keep control events; if the queue is full, drop the oldest capture."""
        if queue.full():
            self._drop_one_capture(queue)
        queue.put_nowait(event)

    def _drop_one_capture(self, queue: asyncio.Queue[ReaderEvent | _StopRequested]) -> None:
        kept: list[ReaderEvent | _StopRequested] = []
        dropped = False
        while not queue.empty():
            item = queue.get_nowait()
            if not dropped and isinstance(item, Captured):
                dropped = True
                self.dropped_events += 1
                continue
            kept.append(item)
        for item in kept[-(QUEUE_SIZE - 1):]:
            queue.put_nowait(item)

    async def _drain_events(self) -> tuple[bool, str]:
        failed_in_row = 0
        was_live = False
        restart = ""  # why this session stopped the reader itself
        while True:
            event = await self._next_event()
            if isinstance(event, _StopRequested):
                if self._one_capture or not was_live:  # the reader ends by itself
                    return was_live, self._why_ended("stopped", restart)
                continue  # live: it lets go at its next packet, with Disconnected
            if isinstance(event, Disconnected):
                return was_live or event.was_live, self._why_ended(event.reason, restart)
            if isinstance(event, Connected):
                was_live = True
                await self._on_connected(event)
            elif isinstance(event, Captured):
                failed_in_row = 0
                await self._on_captured(event.frame)
                if self._one_capture and self._reader is not None:
                    # per tick: this connection is done; the reader ends by itself
                    self._captured_here = True
                    self._reader.stop()
                    return True, "tick captured"
            elif isinstance(event, CaptureFailed):
                failed_in_row += 1
                restart = await self._on_capture_failed(event, failed_in_row) or restart
            elif isinstance(event, FrameRejected):
                self._metrics.frame_rejected(event.verdict.value)
            elif isinstance(event, TickMissed):
                await self._on_tick_missed(event)

    def _why_ended(self, reader_reason: str, restart: str) -> str:
        """Why the connection ended: the reader's reason, unless the session stopped it."""
        if reader_reason != "stopped":
            return reader_reason
        if restart:
            return restart
        if self._window_ended:
            return "no keyframe before the tick's window ended"
        return reader_reason

    async def _next_event(self) -> ReaderEvent | _StopRequested:
        """The reader's next event; while none comes, watch the keyframes of a live stream."""
        while True:
            try:
                return await asyncio.wait_for(self._queue.get(), self._opts.keyframe_check_s)
            except TimeoutError:
                await self._check_keyframes()

    async def _check_keyframes(self) -> None:
        reader = self._reader
        if reader is None or self._stream_status is not StreamStatus.LIVE:
            return
        now = self._clock.monotonic()
        seen = reader.stats.keyframes
        if seen != self._keyframes_seen:
            self._keyframes_seen, self._keyframe_at = seen, now
            self._keyframe_reported = False
            return
        quiet = now - self._keyframe_at
        if quiet < self._opts.keyframe_timeout_s or self._keyframe_reported:
            return
        self._keyframe_reported = True
        logger.warning("no keyframe", extra={"action": "no_keyframe", "job_id": self.job.id,
                                              "seconds": round(quiet, 1)})
        # The stream stays live (packets keep coming), so only LastError changes.
        await self._report(self._reports.stream_changed(
            self.job.id, StreamStatus.LIVE, error=f"no keyframe for {quiet:.0f} s"
        ), "stream_changed")

    async def _on_connected(self, event: Connected) -> None:
        if self.mode is ConnectMode.PER_TICK and not event.joined:
            self.lead.observe(event.opened_s)  # a connection joined says nothing of opens
        reader = self._reader
        self._keyframes_seen = reader.stats.keyframes if reader is not None else 0
        self._keyframe_at = self._clock.monotonic()
        self._keyframe_reported = False
        # Logged when the stream comes (back), not for every connection of a per-tick job.
        logger.log(
            logging.DEBUG if self._stream_status is StreamStatus.LIVE else logging.INFO,
            "stream live",
            extra={"action": "stream_live", "job_id": self.job.id, "codec": event.codec,
                   "width": event.width, "height": event.height},
        )
        await self._set_stream(StreamStatus.LIVE)
        if not self.first_live.done():
            self.first_live.set_result(None)

    async def _on_capture_failed(self, event: CaptureFailed, failed_in_row: int) -> str:
        """Report a failed capture; why the session ends the connection to reconnect, or
        "" if it does not."""
        self._metrics.capture_failed("decode")
        logger.warning("capture failed", extra={"action": "capture_failed",
                                                "job_id": self.job.id, "reason": event.reason})
        await self._report(self._reports.stream_changed(
            self.job.id, StreamStatus.LIVE, error=f"capture failed: {event.reason}"
        ), "stream_changed")
        if failed_in_row >= FAILED_DECODES_BEFORE_RECONNECT and self._reader is not None:
            why = f"capture failed {failed_in_row} times in a row ({event.reason}); reconnecting"
            self._reader.restart(why)  # a fresh connection picks up new codec parameters
            return why
        return ""

    async def _on_tick_missed(self, event: TickMissed) -> None:
        logger.info("no usable keyframe in a tick", extra={
            "action": "tick_missed", "job_id": self.job.id, "reason": event.verdict.value})
        self._quality_error = True
        await self._report(self._reports.quality_changed(self.job.id, event.verdict),
                           "quality_changed")
        await self._count_missed(1)

    async def _count_missed(self, count: int) -> None:
        """Add ``count`` ticks that ended without a file to ``MissedTicks`` now."""
        if count <= 0:
            return
        if await self._report(self._reports.ticks_missed(self.job.id, count), "ticks_missed"):
            self._missed_counted += count  # a failed write is left to the next capture

    async def _set_stream(self, status: StreamStatus, *, error: str = "") -> None:
        unchanged = status is self._stream_status and status is self._stream_written
        if unchanged or self._stopping.is_set():
            return
        self._stream_status = status
        written = await self._report(
            self._reports.stream_changed(self.job.id, status, error=error), "stream_changed")
        # a status the database refused is written again at the next change
        self._stream_written = status if written else None

    async def _report(self, call: Awaitable[None], what: str) -> bool:
        """Await a status report; a failing database is logged, never allowed to end the
        session (capture goes on; the next report writes the state again)."""
        try:
            await call
        except FencedOut:
            raise  # this instance was replaced: the runtime stops it
        except StoreError as exc:
            logger.warning("job state not written: %s", exc.message, extra={
                "action": "report_failed", "job_id": self.job.id, "report": what})
            return False
        return True

    # storing ---------------------------------------------------------------------------------
    async def _on_captured(self, frame: CapturedFrame) -> None:
        try:
            await self._store(frame)
        except FencedOut:
            raise
        except (OutputError, StoreError) as exc:  # StoreError: no sequence number
            await self._storage_trouble(f"snapshot not stored: {exc.message}", True)
            return
        self.captures += 1
        await self._report_interval()

    async def _recorded(
        self, report: CaptureReport, waiters: list[asyncio.Future[SnapshotFile]]
    ) -> None:
        """Every object of a capture is stored: record it (the upload queue calls this)."""
        file, late = await self._record(report)
        self._metrics.snapshot_stored((report.lag_ms or 0) / 1000)
        for waiter in waiters:
            if file is not None and not waiter.done():
                waiter.set_result(file)
        if self._storage_error:
            self._storage_error = ""
            await self._report(self._reports.storage_changed(self.job.id, ""), "storage_changed")
        if late:  # after clearing: this one stays until the next storage error or stream change
            await self._report(self._reports.storage_changed(self.job.id, late), "storage_changed")
        if self._quality_error and report.quality in (Verdict.OK, Verdict.UNCHECKED):
            self._quality_error = False
            await self._report(self._reports.quality_changed(self.job.id, Verdict.OK),
                               "quality_changed")

    async def _record(self, report: CaptureReport) -> tuple[SnapshotFile | None, str]:
        """Write the capture's record, retrying while the database fails (see
        ``RECORD_RETRY_FIRST_S``); the record, and what ``LastError`` says if it came late."""
        delay, reason = RECORD_RETRY_FIRST_S, ""
        while True:
            try:
                file = await self._reports.snapshot_stored(self.job, report)
            except FencedOut:
                raise
            except StoreError as exc:
                if not reason:
                    logger.warning("snapshot stored but not recorded yet: %s", exc.message,
                                   extra={"action": "record_delayed", "job_id": self.job.id,
                                          "create_ms": report.create_ms})
                reason = exc.message
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_S)
                continue
            if not reason:
                return file, ""
            late_s = max(0.0, self._clock.time() - report.create_ms / 1000)
            logger.warning("snapshot recorded late", extra={
                "action": "record_late", "job_id": self.job.id, "seconds": round(late_s, 1)})
            return file, (f"snapshot recorded {late_s:.0f} s after capture: the database was "
                          f"unavailable ({reason})")

    async def _storage_trouble(self, message: str, lost: bool) -> None:
        """A capture waits for an unreachable store, or is lost: ``LastError`` says so."""
        if lost:
            self._metrics.capture_failed("store")
            logger.warning("snapshot not stored", extra={"action": "store_failed",
                                                         "job_id": self.job.id,
                                                         "reason": message})
        if message != self._storage_error:
            self._storage_error = message
            await self._report(self._reports.storage_changed(self.job.id, message),
                               "storage_changed")

    def _create_ms(self, frame: CapturedFrame) -> int:
        # Strictly increasing: the file record is unique on (job, CreateTimestamp).
        create_ms = max(int(frame.arrival_wall * 1000), self._last_create_ms + 1)
        self._last_create_ms = create_ms
        return create_ms

    def _tick_ms(self) -> int:
        """The interval ticks are counted in: the job's, or the GOP when that is longer."""
        return max(self.job.interval_s * 1000, self.schedule.effective_interval_ms or 0)

    async def _store(self, frame: CapturedFrame) -> None:
        """Hand the capture to its route's upload queue; the record is written after upload."""
        job = self.job
        create_ms = self._create_ms(frame)
        numbered = job.sequence_format is not None and "{Sequence}" in job.sequence_format
        sequence = await self._reports.next_sequence(job.id) if numbered else None
        route = self._sinks.route(
            job.account, job.storage.storage_type.value, job.storage.endpoint, job.storage.bucket
        )
        seq_key = self._key(route.key_prefix, job.sequence_format, create_ms, sequence)
        over_key = self._key(route.key_prefix, job.overwrite_format, create_ms, None)
        stream_ms = None if frame.stream_time is None else int(frame.stream_time * 1000)
        missed = ticks_missed(previous_ms=self._previous_capture_ms, capture_ms=create_ms,
                              interval_ms=self._tick_ms())
        missed = max(0, missed - self._missed_counted)  # some were counted as they ended
        self._previous_capture_ms, self._missed_counted = create_ms, 0
        report = CaptureReport(
            job_id=job.id, create_ms=create_ms, sequence=sequence, sequence_key=seq_key,
            overwrite_key=over_key, width=frame.image.width, height=frame.image.height,
            size=len(frame.image.data), stream_time_ms=stream_ms,
            lag_ms=max(0, int((self._clock.time() - frame.arrival_wall) * 1000)),
            quality=frame.verdict, skipped_frames=frame.skipped, missed_ticks=missed,
        )
        meta = self._metadata(report)
        image_type = frame.image.content_type
        objects: list[PendingObject] = []
        if seq_key:
            objects.append(PendingObject(key=seq_key, meta=ObjectMeta(
                content_type=image_type, metadata=meta)))
        if over_key:
            objects.append(PendingObject(key=over_key, meta=ObjectMeta(
                content_type=image_type, cache_control="no-cache", metadata=meta)))
            if job.image.latest_pointer:  # last: it may only name an object that exists
                objects.append(PendingObject(
                    key=imaging.pointer_key(over_key), data=latest_pointer(job, report),
                    meta=ObjectMeta(content_type="application/json", cache_control="no-cache",
                                    metadata=meta)))
        waiters = [w for w in self._waiters if not w.done()]  # capture-now waits for this one
        await route.uploads.submit(Upload(
            job_id=job.id, data=frame.image.data, objects=tuple(objects),
            on_stored=functools.partial(self._recorded, report, waiters),
            on_trouble=self._storage_trouble,
        ))

    def _key(self, prefix: str, fmt: str | None, create_ms: int, sequence: int | None
             ) -> str | None:
        if not fmt:
            return None
        return prefix + naming.render_key(fmt, job_id=self.job.id, create_ms=create_ms,
                                          sequence=sequence)

    def _metadata(self, report: CaptureReport) -> dict[str, str]:
        """User metadata on every object: the capture's truth (design: "Capture truth")."""
        meta = {"job-id": self.job.id, "capture-time-ms": str(report.create_ms)}
        if report.stream_time_ms is not None:
            meta["stream-time-ms"] = str(report.stream_time_ms)
        if report.lag_ms is not None:
            meta["capture-lag-ms"] = str(report.lag_ms)
        if report.quality is not None:
            meta["quality"] = report.quality.value
        return meta

    async def _report_interval(self) -> None:
        effective = self.schedule.effective_interval_ms
        if effective is not None and effective != self._reported_interval:
            self._reported_interval = effective
            await self._report(self._reports.effective_interval(self.job.id, effective),
                               "effective_interval")
