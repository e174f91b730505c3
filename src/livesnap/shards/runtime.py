"""One capture shard: the ordinary capture engine for the jobs this shard owns, kept in line
with the database, and stopped for good once a newer instance of the shard takes over.

Ray-free: a capture process of a node runs it as it is, and ``cluster/rayengine.py`` wraps it
in a Ray actor; it runs and is tested in plain asyncio.

* **Reconcile.** Every ``reconcile_s``: the jobs the database says are ``started`` and that
  rendezvous hashing gives to this shard are running, and no others. That is how a restarted
  instance picks its jobs up, and how a command lost in a failover still takes effect.
* **Commands** (start, stop, capture from the API) act at once. A job commanded in the last
  ``pin_s`` is left as commanded, because the API writes the new status only after the
  command returned. Commands and the reconcile take a lock per job: a start waiting for its
  stream's first keyframe holds up no other job.
* **Fencing.** The instance took a new epoch before it started anything; the store it writes
  through refuses every write once the epoch is stale (``FencedOut``), and every reconcile
  reads the epoch too. Either way the instance stops all its streams and stays stopped.
* **Missed ticks.** When a job is taken over (it has snapshots, but no session here), the
  ticks between its last snapshot and the first one here are counted and reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from livesnap.errors import InvalidParameter, JobNotFound, LivesnapError, ShardUnavailable
from livesnap.jobs.models import Job, JobStatus, SnapshotFile, StreamStatus, Verdict
from livesnap.jobs.ports import CaptureEngine, CaptureReport, CaptureReports
from livesnap.shards.assign import owner

logger = logging.getLogger(__name__)

__all__ = ["ShardRuntime", "ShardStats", "ShardStore", "TickLedger"]


class ShardStore(Protocol):
    """What a shard reads (never through the fence: reading is always allowed)."""

    async def jobs_with_status(self, status: JobStatus) -> list[Job]: ...

    async def load_job(self, job_id: str) -> Job | None: ...

    async def current_epoch(self, shard: str) -> int | None: ...


@dataclass
class ShardStats:
    """What ``livesnap cluster status`` shows for one shard instance."""

    name: str
    epoch: int
    started_at: float
    jobs: int = 0
    fenced: bool = False
    takeovers: int = 0
    missed_ticks: int = 0
    reconciles: int = 0
    last_reconcile_at: float | None = None
    missed_by_job: dict[str, int] = field(default_factory=dict)


class TickLedger:
    """``CaptureReports`` that counts the ticks a job missed while it changed shards."""

    def __init__(self, inner: CaptureReports, stats: ShardStats) -> None:
        self._inner = inner
        self._stats = stats
        self._taken: dict[str, int | None] = {}  # job id → its last snapshot before takeover

    def expect(self, job: Job) -> None:
        """``job`` is being taken over: its first snapshot here closes the gap."""
        self._taken[job.id] = job.last_snapshot_ms

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        """Record it (the session counted the ticks missed since the job's last snapshot,
        which the store adds to the job's ``MissedTicks``); keep this instance's tally."""
        file = await self._inner.snapshot_stored(job, report)
        if file is None:
            return None
        stats = self._stats
        stats.missed_ticks += report.missed_ticks
        stats.missed_by_job[job.id] = stats.missed_by_job.get(job.id, 0) + report.missed_ticks
        if job.id in self._taken:
            last_ms = self._taken.pop(job.id)
            stats.takeovers += 1
            gap_s = None if last_ms is None else round((report.create_ms - last_ms) / 1000, 1)
            logger.info("job taken over", extra={
                "action": "takeover", "job_id": job.id, "shard": stats.name,
                "missed_ticks": report.missed_ticks, "gap_s": gap_s})
        return file

    async def stream_changed(
        self, job_id: str, stream_status: StreamStatus, *, error: str = ""
    ) -> None:
        await self._inner.stream_changed(job_id, stream_status, error=error)

    async def stream_gone(self, job_id: str, reason: str) -> None:
        await self._inner.stream_gone(job_id, reason)

    async def next_sequence(self, job_id: str) -> int:
        return await self._inner.next_sequence(job_id)

    async def effective_interval(self, job_id: str, interval_ms: int) -> None:
        await self._inner.effective_interval(job_id, interval_ms)

    async def storage_changed(self, job_id: str, error: str) -> None:
        await self._inner.storage_changed(job_id, error)

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None:
        await self._inner.quality_changed(job_id, verdict)

    async def ticks_missed(self, job_id: str, count: int) -> None:
        await self._inner.ticks_missed(job_id, count)
        self._stats.missed_ticks += count
        self._stats.missed_by_job[job_id] = self._stats.missed_by_job.get(job_id, 0) + count

    async def check_host(self, name: str, host: str) -> None:
        await self._inner.check_host(name, host)


class ShardRuntime:
    """Runs until :meth:`close`, or until fenced out (then it stops every stream)."""

    def __init__(
        self,
        *,
        name: str,
        shards: Sequence[str],
        epoch: int,
        store: ShardStore,
        engine: CaptureEngine,
        ledger: TickLedger,
        stats: ShardStats,
        reconcile_s: float = 5.0,
        pin_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.shards = tuple(shards)
        self.epoch = epoch
        self.stats = stats
        self._store = store
        self._engine = engine
        self._ledger = ledger
        self._reconcile_s = reconcile_s
        self._pin_s = pin_s
        self._stop_timeout_s = stop_timeout_s
        self._pins: dict[str, tuple[bool, float]] = {}  # job id → (run it?, until monotonic)
        self._fenced = asyncio.Event()
        self._closing = asyncio.Event()
        self._jobs = _JobLocks()

    # lifecycle -----------------------------------------------------------------------------
    def fence(self) -> None:
        """A newer instance took over (called by the store on a refused write, or here)."""
        if not self._fenced.is_set():
            logger.warning("shard fenced out: a newer instance took over; stopping all streams",
                           extra={"action": "fenced", "shard": self.name, "epoch": self.epoch})
            self.stats.fenced = True
            self._fenced.set()

    @property
    def fenced(self) -> bool:
        return self._fenced.is_set()

    async def run(self) -> None:
        """Reconcile now and every ``reconcile_s``; on fencing, stop all streams and return."""
        while not self._closing.is_set() and not self.fenced:
            try:
                await self.reconcile()
            except LivesnapError as exc:  # the database is away: keep what runs, try again
                logger.warning("reconcile failed", extra={
                    "action": "reconcile", "shard": self.name, "reason": exc.message})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._reconcile_s):
                    await _first(self._fenced.wait(), self._closing.wait())
        await self._engine.shutdown(self._stop_timeout_s)
        self.stats.jobs = self._engine.running_count()

    def close(self) -> None:
        self._closing.set()

    # reconcile -----------------------------------------------------------------------------
    def owns(self, job_id: str) -> bool:
        return owner(job_id, self.shards) == self.name

    async def reconcile(self) -> None:
        current = await self._store.current_epoch(self.name)
        if current != self.epoch:
            self.fence()
            return
        wanted = {job.id: job for job in await self._store.jobs_with_status(JobStatus.STARTED)
                  if self.owns(job.id)}
        now = time.monotonic()
        self._pins = {k: v for k, v in self._pins.items() if v[1] > now}
        for job_id, job in wanted.items():
            async with self._jobs.hold(job_id):  # a command for this job waits, others not
                pin = self._pins.get(job_id)
                if self.fenced or self._engine.is_running(job_id) or (pin and not pin[0]):
                    continue
                self._ledger.expect(job)
                try:
                    await self._engine.start(job, probe=False)
                except LivesnapError as exc:
                    logger.warning("cannot start job", extra={
                        "action": "reconcile", "shard": self.name, "job_id": job_id,
                        "reason": exc.message})
        for job_id in self._running_ids(wanted):
            async with self._jobs.hold(job_id):
                pin = self._pins.get(job_id)
                if job_id not in wanted and not (pin and pin[0]):
                    await self._engine.stop(job_id)
        self.stats.jobs = self._engine.running_count()
        self.stats.reconciles += 1
        self.stats.last_reconcile_at = time.time()

    def _running_ids(self, wanted: dict[str, Job]) -> list[str]:
        running = getattr(self._engine, "running_ids", None)
        if callable(running):
            return list(running())
        return [job_id for job_id in wanted if self._engine.is_running(job_id)]

    # commands from the API -------------------------------------------------------------------
    async def _owned_job(self, job_id: str) -> Job:
        if self.fenced:
            raise ShardUnavailable(f"Shard {self.name} was replaced; retry.")
        if not self.owns(job_id):
            raise InvalidParameter(f"Job {job_id} belongs to shard {owner(job_id, self.shards)}.")
        job = await self._store.load_job(job_id)
        if job is None:
            raise JobNotFound()
        return job

    async def start(self, job_id: str, *, probe: bool) -> None:
        job = await self._owned_job(job_id)
        self._pins[job_id] = (True, time.monotonic() + self._pin_s)
        async with self._jobs.hold(job_id):  # a probe waits for video: never for all jobs
            await self._engine.start(job, probe=probe)
        self.stats.jobs = self._engine.running_count()

    async def stop(self, job_id: str) -> None:
        self._pins[job_id] = (False, time.monotonic() + self._pin_s)
        async with self._jobs.hold(job_id):
            await self._engine.stop(job_id)
        self.stats.jobs = self._engine.running_count()

    async def capture_now(self, job_id: str) -> SnapshotFile:
        job = await self._owned_job(job_id)
        return (await self._engine.capture_now(job)).file


class _JobLocks:
    """One lock per job id, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, job_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(job_id, (asyncio.Lock(), 0))
        self._locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[job_id]
            if users == 1:
                del self._locks[job_id]
            else:
                self._locks[job_id] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


async def _first(*aws: object) -> None:
    """Wait until the first of these coroutines finishes; cancel the others."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
