"""The capture engine of one node: owns the sessions, enforces the node cap, shuts down.

Implements ``livesnap.jobs.ports.CaptureEngine``. Commands are idempotent: starting a running
job is a no-op, stopping a stopped one too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from livesnap.capture.metrics import CaptureMetrics
from livesnap.capture.session import Session, SessionOptions
from livesnap.capture.shared import StreamHub
from livesnap.clock import Clock
from livesnap.errors import JobLimitExceeded, JobNotStarted, StreamNotFound
from livesnap.jobs.models import Job, StreamStatus
from livesnap.jobs.ports import CaptureReports, CaptureResult
from livesnap.outputs.base import SinkRouter

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    session: Session
    task: asyncio.Task[None]


class CaptureSupervisor:
    """Runs one ``Session`` task per started job on this node."""

    def __init__(
        self,
        *,
        reports: CaptureReports,
        sinks: SinkRouter,
        clock: Clock,
        options: SessionOptions,
        max_sessions: int = 500,
        probe_timeout_s: float = 10.0,
        metrics: CaptureMetrics | None = None,
    ) -> None:
        self._reports = reports
        self._sinks = sinks
        self._clock = clock
        self._options = options
        self._max = max_sessions
        self._probe_timeout_s = probe_timeout_s
        self._running: dict[str, _Running] = {}
        self._metrics = metrics
        self.streams = StreamHub() if options.share_streams else None

    def is_running(self, job_id: str) -> bool:
        entry = self._running.get(job_id)
        return entry is not None and not entry.task.done()

    def running_ids(self) -> list[str]:
        return [job_id for job_id, r in self._running.items() if not r.task.done()]

    def running_count(self) -> int:
        return sum(1 for r in self._running.values() if not r.task.done())

    def connection_count(self) -> int:
        """Stream connections open or opening (without sharing: at most one per session)."""
        return self.running_count() if self.streams is None else self.streams.connections

    def session(self, job_id: str) -> Session | None:
        entry = self._running.get(job_id)
        return None if entry is None or entry.task.done() else entry.session

    async def start(self, job: Job, *, probe: bool) -> None:
        existing = self.session(job.id)
        if existing is not None:
            if probe:
                await self._await_live(job, existing)
            return
        if self.running_count() >= self._max:
            raise JobLimitExceeded("Job limit exceeded: this node runs its maximum of jobs.")
        session = Session(
            job, reports=self._reports, sinks=self._sinks, clock=self._clock,
            options=self._options, probe=probe, metrics=self._metrics, streams=self.streams,
        )
        task = asyncio.create_task(self._run(session), name=f"session-{job.id}")
        self._running[job.id] = _Running(session=session, task=task)
        if probe:
            await self._await_live(job, session)

    async def _run(self, session: Session) -> None:
        try:
            await session.run()
        except Exception:
            logger.exception("session crashed", extra={"action": "session_crash",
                                                       "job_id": session.job.id})
        finally:
            entry = self._running.get(session.job.id)
            if entry is not None and entry.session is session:
                del self._running[session.job.id]

    async def _await_live(self, job: Job, session: Session) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(session.first_live), self._probe_timeout_s)
        except (TimeoutError, StreamNotFound, asyncio.CancelledError) as exc:
            # CancelledError: the session ended before its stream went live, or the caller
            # was cancelled (a shard command that timed out); the latter must stay one
            await self.stop(job.id)
            # The session said "connecting"; nothing is running for the job any more.
            await self._reports.stream_changed(job.id, StreamStatus.OFFLINE)
            task = asyncio.current_task()
            if isinstance(exc, StreamNotFound) or (task is not None and task.cancelling()):
                raise
            raise StreamNotFound("No such stream (no video within the probe time).") from exc

    async def stop(self, job_id: str) -> None:
        entry = self._running.get(job_id)
        if entry is None:
            return
        entry.session.stop()
        await self._wait([entry.task], self._options.source.rw_timeout_s + 5)

    async def capture_now(self, job: Job) -> CaptureResult:
        session = self.session(job.id)
        if session is None:
            raise JobNotStarted()
        return CaptureResult(file=await session.capture_now())

    async def shutdown(self, timeout_s: float) -> None:
        entries = list(self._running.values())
        for entry in entries:
            entry.session.stop()
        await self._wait([e.task for e in entries], timeout_s)

    async def _wait(self, tasks: list[asyncio.Task[None]], timeout_s: float) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            logger.warning("sessions cancelled after timeout",
                           extra={"action": "shutdown", "count": len(pending)})
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait(pending, timeout=1.0)
