"""One job's capture session: connect → live → (drop) → reconnecting → live …

A session is three parts, each in its own module:

- **the connection lifecycle** (this module): when to connect, the backoff between attempts,
  the outage window that pauses a job whose stream stays away, the job's stream status, a
  probing start, stop and capture-now;
- **one connection** (``capture.connection``): a reader from its start until it ends, its
  events, and what goes wrong while live;
- **storing and recording** (``capture.recording``): each capture's keys, its upload, its
  record once stored, and the ticks that got no capture.

A job runs in one of two connection modes (``jobs.connect``). **Persistent**: one reader stays
connected and the schedule picks each tick's keyframe from everything it reads. **Per tick**:
the session sleeps until shortly before each tick (the lead it learns from its own opens),
connects, keeps the first keyframe at or after the tick (the same schedule, quality gate and
drain), and disconnects; a failed connect is retried with backoff until the tick's window
ends, and a window that ends with no capture is a missed tick.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from livesnap.capture.connection import PER_TICK_MIN_ATTEMPT_S, Connection, Ended, Wiring
from livesnap.capture.metrics import CaptureMetrics, NoCaptureMetrics
from livesnap.capture.recording import Recorder, report_safely
from livesnap.capture.render import Renderer
from livesnap.capture.shared import StreamHub
from livesnap.capture.source import Connected, SourceOptions
from livesnap.clock import Clock
from livesnap.errors import CaptureTimeout, StreamNotFound
from livesnap.jobs.connect import (
    DEFAULT_PER_TICK_MIN_INTERVAL_S,
    LeadOptions,
    LeadTime,
    connect_at_ms,
    resolve,
)
from livesnap.jobs.models import ConnectMode, Job, SnapshotFile, StreamStatus
from livesnap.jobs.ports import CaptureReports
from livesnap.jobs.retry import Backoff
from livesnap.jobs.schedule import TickSchedule
from livesnap.outputs.base import SinkRouter

logger = logging.getLogger(__name__)


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
        metrics = metrics or NoCaptureMetrics()
        self._metrics = metrics
        self._probe = probe
        self._reports = reports
        self._clock = clock
        self._opts = options
        self._rand = rand
        self.schedule = TickSchedule(
            interval_ms=job.interval_s * 1000, start_ms=int(clock.time() * 1000)
        )
        # Missed ticks are counted from the job's last snapshot when it was running already;
        # a start by command or submit (probe) begins afresh (``recording.MissedTicks``).
        self.recorder = Recorder(job, reports=reports, sinks=sinks, clock=clock, metrics=metrics,
                                 schedule=self.schedule, resumed=not probe)
        self.mode = resolve(job.connect_mode, interval_s=job.interval_s,
                            per_tick_min_interval_s=options.per_tick_min_interval_s)
        self.lead = LeadTime(options.lead)
        self._capture_asked = asyncio.Event()  # per tick: capture now, between ticks
        self._stopping = asyncio.Event()
        self._waiters: list[asyncio.Future[SnapshotFile]] = []
        self._wiring = Wiring(
            job=job, source=options.source, keyframe_timeout_s=options.keyframe_timeout_s,
            keyframe_check_s=options.keyframe_check_s, schedule=self.schedule,
            # one renderer for the whole session: the gate compares with the previous capture
            # across reconnects too
            renderer=Renderer(job.image, default_quality=options.source.jpeg_quality),
            recorder=self.recorder, reports=reports, metrics=metrics, clock=clock,
            streams=streams, stopping=self._stopping, waiters=self._waiters,
            on_live=self._on_live,
        )
        self._connection: Connection | None = None
        self._stream_status: StreamStatus | None = None
        self._stream_written: StreamStatus | None = None  # what the job row says
        self.first_live: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # control ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the session to end. ``run`` returns once a live reader has let go; a reader
        still connecting is left to end by itself (it captures nothing more), so a stop
        during a connect takes effect at once."""
        self._stopping.set()
        if self._connection is not None:
            self._connection.stop()

    async def capture_now(self) -> SnapshotFile:
        """The next keyframe, stored and recorded, whatever the schedule says. A per-tick
        job between ticks connects for it."""
        per_tick = self.mode is ConnectMode.PER_TICK
        connection = self._connection
        if not per_tick and (connection is None or not connection.reading
                             or self._stream_status is not StreamStatus.LIVE):
            raise CaptureTimeout("The stream is not live right now.")
        waiter: asyncio.Future[SnapshotFile] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if connection is None or not connection.request_capture():
            self._capture_asked.set()
        try:
            return await asyncio.wait_for(waiter, self._opts.capture_timeout_s)
        except TimeoutError as exc:
            raise CaptureTimeout() from exc
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    # persistent ------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.mode is ConnectMode.PER_TICK:
            await self._run_per_tick()
            return
        attempt = 0
        outage_since: float | None = None
        await self._set_stream(StreamStatus.CONNECTING)
        while not self._stopping.is_set():
            ended = await self._connect()
            if self._stopping.is_set():
                break
            if self._probe_failed(ended.reason):
                return
            if ended.was_live:
                attempt, outage_since = 0, self._clock.monotonic()
                self.schedule.reset_gaps()
            outage_since = outage_since or self._clock.monotonic()
            if await self._outage_over(outage_since, ended.reason):
                return
            await self._set_stream(StreamStatus.RECONNECTING, error=ended.reason)
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
                    await self.recorder.tick_missed(verdict)
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
        await self.recorder.missed.until(self._now_ms(), self.recorder.tick_ms())
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
            ended = await self._connect(until_ms=end_ms, one_capture=True, capture_now=asked)
            reason = ended.reason
            if ended.captured or self._stopping.is_set():
                return ended.captured, reason
            if self._probing:
                return False, reason  # a probing start fails at once
            if not ended.was_live:
                await self._set_stream(StreamStatus.RECONNECTING, error=reason)
                self._metrics.reconnect()
            else:  # live, but no keyframe it could keep: LastError says so until a capture
                await self._report_stream(StreamStatus.LIVE, reason)
                self._stream_written = None  # the next connect writes live again, clearing it
            remaining_s = (end_ms - self._now_ms()) / 1000
            if remaining_s < PER_TICK_MIN_ATTEMPT_S:
                break
            await self._wait_backoff(attempt, limit_s=remaining_s - PER_TICK_MIN_ATTEMPT_S)
            attempt += 1
        return False, reason or "no keyframe in the tick"

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    # connections -----------------------------------------------------------------------------
    async def _connect(
        self, *, until_ms: int | None = None, one_capture: bool = False,
        capture_now: bool = False,
    ) -> Ended:
        """Run one connection until it ends (``capture.connection``)."""
        connection = Connection(self._wiring, until_ms=until_ms, one_capture=one_capture,
                                capture_now=capture_now)
        self._connection = connection
        try:
            return await connection.run()
        finally:
            self._connection = None

    async def _on_live(self, event: Connected) -> None:
        """A connection's stream is live: learn its open time (per tick), say so."""
        if self.mode is ConnectMode.PER_TICK and not event.joined:
            self.lead.observe(event.opened_s)  # a connection joined says nothing of opens
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

    # the job's stream status -----------------------------------------------------------------
    async def _set_stream(self, status: StreamStatus, *, error: str = "") -> None:
        unchanged = status is self._stream_status and status is self._stream_written
        if unchanged or self._stopping.is_set():
            return
        self._stream_status = status
        written = await self._report_stream(status, error)
        # a status the database refused is written again at the next change
        self._stream_written = status if written else None

    async def _report_stream(self, status: StreamStatus, error: str) -> bool:
        report = self._reports.stream_changed(self.job.id, status, error=error)
        return await report_safely(report, "stream_changed", self.job.id)
