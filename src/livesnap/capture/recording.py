"""Storing and recording one job's captures, and counting the ticks that got none.

A capture goes through three steps, one method each on ``Recorder``:

1. ``capture``: the JPEG gets its report (create time, sequence number, keys, metadata,
   ticks missed since the previous capture) and is handed to its route's upload queue, which
   stores every object in the background (spooling while the store is away);
2. ``record``: the upload queue calls it once every object is stored; the file record (and
   its callback event) is written, retried for as long as the database fails, because a
   record given up would leave stored objects unrecorded;
3. the job's ``LastError`` is settled (a storage or quality error the capture ends) and the
   capture-now callers waiting for it get the file.

Each upload carries its report as a note, which the spool writes with the capture before its
upload starts: a process killed before a capture is stored and recorded leaves it on disk, and
the next one stores and records it (``recovered_upload``) before its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Awaitable

from livesnap.capture.metrics import CaptureMetrics
from livesnap.capture.pointer import latest_pointer
from livesnap.capture.source import CapturedFrame
from livesnap.clock import Clock
from livesnap.errors import FencedOut, OutputError, StoreError
from livesnap.jobs import imaging, naming
from livesnap.jobs.models import Job, SnapshotFile, Verdict
from livesnap.jobs.ports import CaptureReport, CaptureReports
from livesnap.jobs.schedule import TickSchedule, ticks_missed, ticks_passed
from livesnap.outputs.base import (
    ObjectMeta,
    PendingObject,
    Route,
    SinkRouter,
    SpooledCapture,
    Upload,
)

logger = logging.getLogger(__name__)

# A stored capture whose record cannot be written (the database is locked or away) is retried
# with these pauses, doubling, for as long as it takes: its objects exist, and a record given
# up would leave them unrecorded and without a callback. The job's later captures wait in the
# upload queue (and its bounded spool) meanwhile.
RECORD_RETRY_FIRST_S = 0.5
RECORD_RETRY_MAX_S = 5.0

Waiters = list[asyncio.Future[SnapshotFile]]


async def report_safely(call: Awaitable[None], what: str, job_id: str) -> bool:
    """Await a status report; a failing database is logged, never allowed to end the
    session (capture goes on; the next report writes the state again)."""
    try:
        await call
    except FencedOut:
        raise  # this instance was replaced: the runtime stops it
    except StoreError as exc:
        logger.warning("job state not written: %s", exc.message, extra={
            "action": "report_failed", "job_id": job_id, "report": what})
        return False
    return True


class MissedTicks:
    """Ticks that ended without a file, added to the job's ``MissedTicks``.

    Counted from the job's last snapshot when the job was running already (resume after a
    restart, a takeover by another shard); a start by command or submit (``previous_ms`` None)
    begins afresh: the time the job was stopped is not "missed". A tick is counted once:
    either as it ends (``add``) or at the next capture (``at_capture``), which leaves out
    those counted already.
    """

    def __init__(self, reports: CaptureReports, job_id: str, previous_ms: int | None) -> None:
        self._reports = reports
        self._job_id = job_id
        self._previous_ms = previous_ms
        self._counted = 0  # ticks since the previous capture already added

    async def add(self, count: int) -> None:
        """Add ``count`` ticks that ended without a file now."""
        if count <= 0:
            return
        report = self._reports.ticks_missed(self._job_id, count)
        if await report_safely(report, "ticks_missed", self._job_id):
            self._counted += count  # a failed write is left to the next capture

    async def until(self, now_ms: int, interval_ms: int) -> None:
        """Add the ticks whose windows have ended by ``now_ms`` (the job pauses: no capture
        will count them)."""
        passed = ticks_passed(previous_ms=self._previous_ms, now_ms=now_ms,
                              interval_ms=interval_ms)
        await self.add(passed - self._counted)

    def at_capture(self, create_ms: int, interval_ms: int) -> int:
        """The ticks missed before a capture at ``create_ms`` not counted yet; it becomes the
        previous capture."""
        missed = ticks_missed(previous_ms=self._previous_ms, capture_ms=create_ms,
                              interval_ms=interval_ms)
        self._previous_ms, counted, self._counted = create_ms, self._counted, 0
        return max(0, missed - counted)


class Recorder:
    """Stores and records one job's captures (see the module's docstring)."""

    def __init__(
        self, job: Job, *, reports: CaptureReports, sinks: SinkRouter, clock: Clock,
        metrics: CaptureMetrics, schedule: TickSchedule, resumed: bool,
    ) -> None:
        self.job = job
        self._reports = reports
        self._sinks = sinks
        self._clock = clock
        self._metrics = metrics
        self._schedule = schedule
        self.missed = MissedTicks(reports, job.id, job.last_snapshot_ms if resumed else None)
        self._last_create_ms = 0
        self._storage_error = ""  # the storage trouble LastError shows now ("" = none)
        self._quality_error = False  # LastError shows a tick with no usable keyframe
        self._reported_interval: int | None = None

    # 1. capture ------------------------------------------------------------------------------
    async def capture(self, frame: CapturedFrame, waiters: Waiters) -> None:
        """Hand a capture to its route's upload queue; ``waiters`` get its file once it is
        recorded. A capture that cannot be handed over is reported and lost."""
        try:
            await self._upload(frame, waiters)
        except FencedOut:
            raise
        except (OutputError, StoreError) as exc:  # StoreError: no sequence number
            await self.storage_trouble(f"snapshot not stored: {exc.message}", True)
            return
        await self._report_interval()

    async def _upload(self, frame: CapturedFrame, waiters: Waiters) -> None:
        job = self.job
        create_ms = self._create_ms(frame)
        numbered = job.sequence_format is not None and "{Sequence}" in job.sequence_format
        sequence = await self._reports.next_sequence(job.id) if numbered else None
        route = self._route()
        stream_ms = None if frame.stream_time is None else int(frame.stream_time * 1000)
        report = CaptureReport(
            job_id=job.id, create_ms=create_ms, sequence=sequence,
            sequence_key=self._key(route.key_prefix, job.sequence_format, create_ms, sequence),
            overwrite_key=self._key(route.key_prefix, job.overwrite_format, create_ms, None),
            width=frame.image.width, height=frame.image.height, size=len(frame.image.data),
            stream_time_ms=stream_ms,
            lag_ms=max(0, int((self._clock.time() - frame.arrival_wall) * 1000)),
            quality=frame.verdict, skipped_frames=frame.skipped,
            missed_ticks=self.missed.at_capture(create_ms, self.tick_ms()),
        )
        await route.uploads.submit(Upload(
            job_id=job.id, data=frame.image.data,
            objects=self._objects(report, frame.image.content_type),
            on_stored=functools.partial(self.record, report, waiters),
            on_trouble=self.storage_trouble, note=_note(report),
        ))

    def _objects(self, report: CaptureReport, image_type: str) -> tuple[PendingObject, ...]:
        """The capture's objects, in the order they are stored."""
        meta = self._metadata(report)
        objects: list[PendingObject] = []
        if report.sequence_key:
            objects.append(PendingObject(key=report.sequence_key, meta=ObjectMeta(
                content_type=image_type, metadata=meta)))
        if report.overwrite_key:
            objects.append(PendingObject(key=report.overwrite_key, meta=ObjectMeta(
                content_type=image_type, cache_control="no-cache", metadata=meta,
                rewritten=True)))
            if self.job.image.latest_pointer:  # last: it may only name an object that exists
                objects.append(PendingObject(
                    key=imaging.pointer_key(report.overwrite_key),
                    data=latest_pointer(self.job, report),
                    meta=ObjectMeta(content_type="application/json", cache_control="no-cache",
                                    metadata=meta, rewritten=True)))
        return tuple(objects)

    def _route(self) -> Route:
        """Where the job's objects go (its account's route to its storage target)."""
        storage = self.job.storage
        return self._sinks.route(self.job.account, storage.storage_type.value,
                                 storage.endpoint, storage.bucket)

    def _create_ms(self, frame: CapturedFrame) -> int:
        # Strictly increasing: the file record is unique on (job, CreateTimestamp).
        create_ms = max(int(frame.arrival_wall * 1000), self._last_create_ms + 1)
        self._last_create_ms = create_ms
        return create_ms

    def tick_ms(self) -> int:
        """The interval ticks are counted in: the job's, or the GOP when that is longer."""
        return max(self.job.interval_s * 1000, self._schedule.effective_interval_ms or 0)

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
        effective = self._schedule.effective_interval_ms
        if effective is not None and effective != self._reported_interval:
            self._reported_interval = effective
            await self._report(self._reports.effective_interval(self.job.id, effective),
                               "effective_interval")

    # 2. record -------------------------------------------------------------------------------
    async def record(self, report: CaptureReport, waiters: Waiters) -> None:
        """Every object of a capture is stored: write its record (the upload queue calls this),
        then settle ``LastError`` and answer the capture-now callers."""
        try:
            file, late = await write_record(self._reports, self.job, report, self._clock)
        except FencedOut:
            await self._remove_unowned(report)
            raise
        self._metrics.snapshot_stored((report.lag_ms or 0) / 1000)
        for waiter in waiters:
            if file is not None and not waiter.done():
                waiter.set_result(file)
        await self._settle_errors(report, late)

    async def _remove_unowned(self, report: CaptureReport) -> None:
        """This instance was replaced (a cluster shard another node took over): the record was
        refused, so the sequence object it would have owned goes too. The overwrite object is
        left: the instance that owns the job now writes it."""
        if not report.sequence_key:
            return
        job = self.job
        try:
            await self._route().sink.delete(report.sequence_key)
        except OutputError as exc:
            logger.warning("object of a refused record not removed: %s", exc.message, extra={
                "action": "fenced_object_left", "job_id": job.id, "key": report.sequence_key})
            return
        logger.info("object of a refused record removed", extra={
            "action": "fenced_object_removed", "job_id": job.id, "key": report.sequence_key})

    # 3. what LastError says ------------------------------------------------------------------
    async def _settle_errors(self, report: CaptureReport, late: str) -> None:
        """A recorded capture ends a storage error, and a quality error if it passed the gate;
        a late record says so until the next storage error or stream change."""
        if self._storage_error:
            self._storage_error = ""
            await self._report(self._reports.storage_changed(self.job.id, ""), "storage_changed")
        if late:
            await self._report(self._reports.storage_changed(self.job.id, late), "storage_changed")
        if self._quality_error and report.quality in (Verdict.OK, Verdict.UNCHECKED):
            self._quality_error = False
            await self._report(self._reports.quality_changed(self.job.id, Verdict.OK),
                               "quality_changed")

    async def storage_trouble(self, message: str, lost: bool) -> None:
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

    async def tick_missed(self, verdict: Verdict) -> None:
        """No keyframe of a tick passed the quality gate: ``LastError`` says so until a capture
        passes, and the tick is counted."""
        logger.info("no usable keyframe in a tick", extra={
            "action": "tick_missed", "job_id": self.job.id, "reason": verdict.value})
        self._quality_error = True
        await self._report(self._reports.quality_changed(self.job.id, verdict),
                           "quality_changed")
        await self.missed.add(1)

    async def _report(self, call: Awaitable[None], what: str) -> bool:
        return await report_safely(call, what, self.job.id)


async def write_record(
    reports: CaptureReports, job: Job, report: CaptureReport, clock: Clock
) -> tuple[SnapshotFile | None, str]:
    """Write a stored capture's record, retrying while the database fails (see
    ``RECORD_RETRY_FIRST_S``); the record, and what ``LastError`` says if it came late."""
    delay, reason = RECORD_RETRY_FIRST_S, ""
    while True:
        try:
            file = await reports.snapshot_stored(job, report)
        except FencedOut:
            raise
        except StoreError as exc:
            if not reason:
                logger.warning("snapshot stored but not recorded yet: %s", exc.message,
                               extra={"action": "record_delayed", "job_id": job.id,
                                      "create_ms": report.create_ms})
            reason = exc.message
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECORD_RETRY_MAX_S)
            continue
        if not reason:
            return file, ""
        late_s = max(0.0, clock.time() - report.create_ms / 1000)
        logger.warning("snapshot recorded late", extra={
            "action": "record_late", "job_id": job.id, "seconds": round(late_s, 1)})
        return file, (f"snapshot recorded {late_s:.0f} s after capture: the database was "
                      f"unavailable ({reason})")


# captures an earlier process spooled ----------------------------------------------------------
_NOTE_FIELDS = tuple(f.name for f in dataclasses.fields(CaptureReport))


def _note(report: CaptureReport) -> str:
    """The capture's report, as the spool keeps it beside a spooled capture (its fields are
    plain values: read one by one, not through ``dataclasses.asdict``, whose deep copy cost
    more than the rest of this)."""
    fields = {name: getattr(report, name) for name in _NOTE_FIELDS}
    fields["quality"] = None if report.quality is None else report.quality.value
    return json.dumps(fields)


def _report_from_note(note: str) -> CaptureReport | None:
    try:
        fields = json.loads(note)
        quality = fields.pop("quality")
        return CaptureReport(**fields, quality=None if quality is None else Verdict(quality))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def recovered_upload(
    spooled: SpooledCapture, job: Job, *, reports: CaptureReports, clock: Clock
) -> Upload | str:
    """The upload of a capture an earlier process spooled, which records it once stored; or
    why it is not stored.

    Only its sequence object is stored: the job's overwrite object (and latest pointer) shows
    a newer picture by now, or will within an interval of the job's resuming, and must never
    go back in time. So a capture of a job without sequence objects is not stored again.
    """
    report = _report_from_note(spooled.note)
    if report is None or report.job_id != job.id:
        return "its description cannot be read"
    objects = tuple(o for o in spooled.objects if o.key == report.sequence_key)
    if not objects:
        return "it has only an overwrite object, which newer captures replace"

    async def stored() -> None:
        file, _late = await write_record(reports, job, report, clock)
        if file is not None:
            logger.info("spooled snapshot of an earlier run stored and recorded", extra={
                "action": "spool_recovered", "job_id": job.id, "create_ms": report.create_ms})

    async def trouble(message: str, lost: bool) -> None:
        await report_safely(reports.storage_changed(job.id, message), "storage_changed",
                            job.id)

    return Upload(job_id=job.id, data=b"", objects=objects, on_stored=stored,
                  on_trouble=trouble, note=spooled.note)
