"""``JobManager``: the use cases, over the ports. The only async module of the domain.

Rules it enforces (design.md §4): templates are account-scoped and the system template is
read-only; jobs copy their template at submit; Submit probes the stream in the background,
and a job whose stream is not live yet waits for it (``waiting.py``: probed again with capped
backoff until it starts, also when its stream stayed away past the outage window); ``start``
probes synchronously; ``stop`` pauses and ends the waiting; ``restart`` = stop + start; limits
per account and per node. It also implements ``CaptureReports`` for the capture engine: file
records and status changes are written together with their callback events.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from livesnap.clock import Clock
from livesnap.errors import (
    Forbidden,
    InvalidParameter,
    JobAlreadyStarted,
    JobLimitExceeded,
    JobNotFound,
    JobNotStarted,
    LivesnapError,
    MissingParameter,
    OutputError,
    ShardUnavailable,
    StreamNotFound,
    TemplateNotFound,
)
from livesnap.jobs import imaging, naming, urls
from livesnap.jobs.events import captured_event, status_event
from livesnap.jobs.hooks import HookCall, StreamEvent, stream_key
from livesnap.jobs.models import (
    INT64_MAX,
    SYSTEM_TEMPLATE_ID,
    ConnectMode,
    DeleteResult,
    DeliveryAttempt,
    FileQuery,
    ImageOptions,
    Job,
    JobPatch,
    JobQuery,
    JobSpec,
    JobStatus,
    LastError,
    OutboxEvent,
    Page,
    SnapshotFile,
    StreamStatus,
    Template,
    TemplateQuery,
    TemplateSpec,
    TemplateType,
    Verdict,
    started_jobs_message,
)
from livesnap.jobs.ports import (
    CaptureEngine,
    CaptureReport,
    ObjectRemover,
    Resolver,
    StorageInfo,
    StorageRouting,
    Store,
)
from livesnap.jobs.waiting import WaitPolicy

logger = logging.getLogger(__name__)

MAX_NAME_LEN = 128
FILE_PAGE = 1000  # file records read at a time when a job is deleted


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Caps on running (``started``) jobs, and on the jobs an account keeps."""

    jobs_per_account: int = 100
    jobs_per_node: int = 500
    kept_jobs_per_account: int = 1000  # started or not (counted by the store, at Submit)


@dataclass(frozen=True, kw_only=True)
class Policy:
    limits: Limits = field(default_factory=Limits)
    blocked_networks: tuple[urls.Network, ...] = ()
    waiting: WaitPolicy = field(default_factory=WaitPolicy)
    # False where another manager does the waiting (a capture shard's, whose node's serving
    # manager finds its waiting jobs in the store): jobs are marked waiting, not watched
    watch_waiting: bool = True


_PROBING = (StreamStatus.CONNECTING, StreamStatus.OFFLINE)
# a publish hook's start of a waiting job is tried again after these pauses if it finds no
# stream yet (the origin lets the publisher in after the hook's answer)
HOOK_RETRIES_S = (0.5, 1.0, 2.0)
WAITING_SWEEP_S = 10.0  # how often the store is read for jobs waiting that nobody watches


def system_template(now_ms: int) -> Template:
    """The read-only template every account sees (5 s, both formats)."""
    return Template(
        id=SYSTEM_TEMPLATE_ID,
        account=None,
        name="System 5s overwrite + sequence",
        type=TemplateType.SYSTEM,
        interval_s=5,
        overwrite_format="snapshot/{JobId}.jpg",
        sequence_format="snapshot/{JobId}/{UnixTimestamp}.jpg",
        created_ms=now_ms,
        modified_ms=now_ms,
    )


def check_template_spec(spec: TemplateSpec, image: ImageOptions | None = None) -> None:
    """Raise ``InvalidParameter``/``MissingParameter`` unless the spec is valid.

    ``image``: the options the template will have (default: the spec's changes applied to
    the defaults, as on create).
    """
    if not spec.name.strip():
        raise MissingParameter("TemplateName is mandatory for this action.")
    if len(spec.name) > MAX_NAME_LEN:
        raise InvalidParameter(f"TemplateName must be at most {MAX_NAME_LEN} characters.")
    if not 5 <= spec.interval_s <= 3600:
        raise InvalidParameter("TimeInterval must be between 5 and 3600 seconds.")
    if not spec.overwrite_format and not spec.sequence_format:
        raise MissingParameter("At least one of OverwriteFormat and SequenceFormat is required.")
    if spec.overwrite_format:
        naming.check_overwrite_format(spec.overwrite_format)
    if spec.sequence_format:
        naming.check_sequence_format(spec.sequence_format)
    imaging.check_image_options(
        image if image is not None else spec.image.apply(ImageOptions()),
        overwrite_format=spec.overwrite_format or None,
        sequence_format=spec.sequence_format or None,
    )


class Waiting:
    """One task per job waiting for its stream (``waiting.py``); ``watch`` is idempotent,
    ``forget`` ends a job's task. ``attempt(job_id)`` tries the job: True when it needs no
    more watching (it started, was stopped or deleted)."""

    def __init__(
        self,
        *,
        attempt: Callable[[str], Awaitable[bool]],
        policy: WaitPolicy | None = None,
        unit: Callable[[], float] = random.random,
    ) -> None:
        self._attempt = attempt
        self._policy = policy or WaitPolicy()
        self._unit = unit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._hosts: dict[str, tuple[asyncio.Semaphore, int]] = {}  # and how many watch it

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def watch(self, job_id: str, host: str) -> None:
        if job_id in self._tasks:
            return
        task = asyncio.create_task(self._watch(job_id, host), name=f"waiting-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda done: self._done(job_id, done))

    def forget(self, job_id: str) -> None:
        task = self._tasks.pop(job_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(job_id) is task:
            del self._tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            logger.error("waiting job's watch failed", exc_info=task.exception(),
                         extra={"action": "waiting", "job_id": job_id})

    async def _watch(self, job_id: str, host: str) -> None:
        semaphore = self._join(host)
        try:
            misses = 0
            while True:
                await asyncio.sleep(self._policy.wait_s(misses, self._unit()))
                async with semaphore:
                    if await self._attempt(job_id):
                        return
                misses += 1
        finally:
            self._leave(host)

    def _join(self, host: str) -> asyncio.Semaphore:
        semaphore, users = self._hosts.get(host, (None, 0))
        if semaphore is None:
            semaphore = asyncio.Semaphore(self._policy.per_host)
        self._hosts[host] = (semaphore, users + 1)
        return semaphore

    def _leave(self, host: str) -> None:
        semaphore, users = self._hosts[host]
        if users <= 1:
            del self._hosts[host]
        else:
            self._hosts[host] = (semaphore, users - 1)


class JobManager:
    """Use cases for templates, jobs and files; ``CaptureReports`` for the engine."""

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        policy: Policy | None = None,
        resolver: Resolver | None = None,
        remover: ObjectRemover | None = None,
        storage: StorageRouting | None = None,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy or Policy()
        self._resolver = resolver
        self._remover = remover
        self._storage = storage
        self._new_id = new_id
        self._engine: CaptureEngine | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._starting: dict[str, int] = {}  # account -> starts between limit check and status
        self._probes: set[asyncio.Task[None]] = set()
        self._waiting = Waiting(attempt=self._attempt_waiting, policy=self._policy.waiting)
        self._sweep: asyncio.Task[None] | None = None
        self._events_hook: Callable[[Sequence[OutboxEvent]], None] | None = None

    def attach_engine(self, engine: CaptureEngine) -> None:
        """The capture engine (it needs the manager too, so it is attached after both exist)."""
        self._engine = engine

    @property
    def engine(self) -> CaptureEngine:
        if self._engine is None:
            raise RuntimeError("no capture engine attached")
        return self._engine

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    # lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Make sure the system template exists."""
        await self._store.ensure_template(system_template(self._now_ms()))

    async def resume(self) -> int:
        """Restart capture for every job that was ``started`` (after a restart)."""
        jobs = await self._store.jobs_with_status(JobStatus.STARTED)
        for job in jobs:
            await self.engine.start(job, probe=False)
        logger.info("resumed started jobs", extra={"action": "resume", "count": len(jobs)})
        return len(jobs)

    async def resume_waiting(self) -> int:
        """Watch every job the store says is waiting and nobody here watches yet (after a
        restart, or marked waiting by a capture process); the number of jobs waiting."""
        count = 0
        for status in (JobStatus.INIT, JobStatus.PAUSED):
            for job in await self._store.jobs_with_status(
                    status, stream_status=StreamStatus.WAITING):
                self._wait_for_stream(job)
                count += 1
        return count

    def start_waiting_sweep(self, every_s: float = WAITING_SWEEP_S) -> None:
        """Call :meth:`resume_waiting` now and every ``every_s`` until :meth:`close`."""

        async def sweep() -> None:
            while True:
                try:
                    await self.resume_waiting()
                except LivesnapError as exc:  # the database is down: try again next round
                    logger.warning("waiting jobs not read", extra={
                        "action": "waiting", "reason": exc.message})
                await asyncio.sleep(every_s)

        if self._sweep is None:
            self._sweep = asyncio.create_task(sweep(), name="waiting-sweep")

    def waiting_count(self) -> int:
        """Jobs whose stream this node is waiting for."""
        return len(self._waiting)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Cancel background probes and stop capture within ``timeout_s``."""
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.wait(self._probes, timeout=timeout_s)
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.wait([self._sweep])
            self._sweep = None
        await self._waiting.close()
        if self._engine is not None:
            await self._engine.shutdown(timeout_s)

    # templates -----------------------------------------------------------------------------
    async def create_template(self, account: str, spec: TemplateSpec) -> Template:
        image = spec.image.apply(ImageOptions())
        check_template_spec(spec, image)
        now = self._now_ms()
        template = Template(
            id=self._new_id(),
            account=account,
            name=spec.name,
            type=TemplateType.CUSTOM,
            interval_s=spec.interval_s,
            overwrite_format=spec.overwrite_format or None,
            sequence_format=spec.sequence_format or None,
            created_ms=now,
            modified_ms=now,
            image=image,
            connect_mode=spec.connect_mode or ConnectMode.AUTO,
        )
        await self._store.create_template(template)
        return template

    async def get_template(self, account: str, template_id: str) -> Template:
        template = await self._store.get_template(account, template_id)
        if template is None:
            raise TemplateNotFound()
        return template

    async def update_template(self, account: str, template_id: str, spec: TemplateSpec) -> None:
        current = await self.get_template(account, template_id)
        if current.type is TemplateType.SYSTEM:
            raise Forbidden()
        image = spec.image.apply(current.image)
        check_template_spec(spec, image)
        updated = current.evolve(
            name=spec.name,
            interval_s=spec.interval_s,
            overwrite_format=spec.overwrite_format or None,
            sequence_format=spec.sequence_format or None,
            modified_ms=self._now_ms(),
            image=image,
            connect_mode=spec.connect_mode or current.connect_mode,
        )
        if not await self._store.update_template(updated):
            raise TemplateNotFound()

    async def delete_template(self, account: str, template_id: str) -> None:
        current = await self.get_template(account, template_id)
        if current.type is TemplateType.SYSTEM:
            raise Forbidden()
        if not await self._store.delete_template(account, template_id):
            raise TemplateNotFound()

    async def list_templates(self, account: str, query: TemplateQuery) -> Page[Template]:
        return await self._store.list_templates(account, query)

    # jobs ----------------------------------------------------------------------------------
    async def submit_job(self, account: str, spec: JobSpec) -> Job:
        """Store a new ``init`` job and probe its stream in the background."""
        await self._check_spec(account, spec)
        template = await self.get_template(account, spec.template_id)
        now = self._now_ms()
        job = Job(
            id=self._new_id(),
            account=account,
            name=spec.name,
            template_id=template.id,
            template_name=template.name,
            interval_s=template.interval_s,
            overwrite_format=template.overwrite_format,
            sequence_format=template.sequence_format,
            image=template.image,
            connect_mode=spec.connect_mode or template.connect_mode,
            stream_url=spec.stream_url,
            stream_type=spec.stream_type,
            storage=spec.storage,
            callback_url=spec.callback_url,
            status=JobStatus.INIT,
            created_ms=now,
            modified_ms=now,
        )
        await self._store.create_job(job, max_jobs=self._policy.limits.kept_jobs_per_account)
        self._background(self._probe_at_submit(job), f"probe-{job.id}")
        return job

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task that :meth:`close` cancels."""
        task = asyncio.create_task(work, name=name)
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _check_spec(self, account: str, spec: JobSpec) -> None:
        if not spec.name.strip():
            raise MissingParameter("JobName is mandatory for this action.")
        if len(spec.name) > MAX_NAME_LEN:
            raise InvalidParameter(f"JobName must be at most {MAX_NAME_LEN} characters.")
        if self._storage is not None:
            info = self._storage.describe(account, spec.storage)
            if not info.writable:
                raise InvalidParameter(info.description)
        stream_host = urls.check_stream_url(spec.stream_url)
        await self.check_host("StreamInput.Url", stream_host)
        if spec.callback_url:
            callback_host = urls.check_callback_url(spec.callback_url)
            await self.check_host("CallbackUrl", callback_host)

    async def check_host(self, name: str, host: str) -> None:
        """``InvalidParameter`` if ``host`` resolves into a blocked network."""
        blocked = self._policy.blocked_networks
        if not blocked:
            return
        addresses = [host]
        if self._resolver is not None and not urls.is_ip_literal(host):
            try:
                addresses = await self._resolver.resolve(host)
            except OSError:
                return  # an unresolvable name is checked again when it is used
        bad = urls.blocked_address(addresses, blocked)
        if bad is not None:
            raise InvalidParameter(f"{name} points to a blocked network address ({bad}).")

    async def _probe_at_submit(self, job: Job) -> None:
        async with self._lock(job.id):
            current = await self._store.load_job(job.id)
            if current is None or current.status is not JobStatus.INIT:
                return
            try:
                await self._start_locked(current, reason="stream live at submit")
            except (StreamNotFound, JobLimitExceeded) as exc:
                await self._store.update_job(
                    job.id,
                    JobPatch(last_error=LastError.stream(exc.message),
                             stream_status=StreamStatus.WAITING),
                    now_ms=self._now_ms(),
                )
                self._wait_for_stream(current)
                logger.info(
                    "job waiting for its stream",
                    extra={"action": "submit_probe", "job_id": job.id, "reason": exc.message},
                )

    def _wait_for_stream(self, job: Job) -> None:
        if self._policy.watch_waiting:
            self._waiting.watch(job.id, urls.check_stream_url(job.stream_url))

    async def _attempt_waiting(self, job_id: str, *, reason: str = "stream live") -> bool:
        """Try to start a waiting job; True when it needs no more watching."""
        async with self._lock(job_id):
            job = await self._store.load_job(job_id)
            if job is None or job.status is JobStatus.STARTED:
                return True
            if job.stream_status is not StreamStatus.WAITING:
                return True  # stopped by hand meanwhile
            try:
                await self._start_locked(job, reason=reason)
            except (StreamNotFound, JobLimitExceeded) as exc:
                patch = JobPatch(last_error=LastError.stream(exc.message),
                                 stream_status=StreamStatus.WAITING)
                await self._change(job_id, patch, reason="")
                return False
            self._waiting.forget(job_id)  # from now on its stream reports are a started job's
            logger.info("waiting job started", extra={"action": "waiting", "job_id": job_id})
            return True

    # publish hooks -------------------------------------------------------------------------
    async def stream_event(self, call: HookCall) -> int:
        """Act on a publish hook for every job on its stream, in the background (an origin
        such as nginx-rtmp lets the publisher in only once it has the answer); how many jobs
        the hook names. ``hooks.py`` says how streams are matched."""
        key = stream_key(call.url)
        if call.event is None or key is None:
            return 0
        candidates = [
            *await self._store.jobs_with_status(JobStatus.STARTED),
            *await self._store.jobs_with_status(JobStatus.INIT,
                                                stream_status=StreamStatus.WAITING),
            *await self._store.jobs_with_status(JobStatus.PAUSED,
                                                stream_status=StreamStatus.WAITING),
        ]
        named = [job.id for job in candidates if stream_key(job.stream_url) == key]
        for job_id in named:
            self._background(self._on_stream_event(job_id, call.event), f"hook-{job_id}")
        return len(named)

    async def _on_stream_event(self, job_id: str, event: StreamEvent) -> None:
        async with self._lock(job_id):
            job = await self._store.load_job(job_id)
            if job is None:
                return
            if job.status is JobStatus.STARTED:
                if event is StreamEvent.PUBLISHED and job.stream_status is StreamStatus.LIVE:
                    return
                # connect again now, not after the reconnect backoff: a published stream is
                # read at once, and one that ended is picked up the moment it is back
                await self.engine.stop(job.id)
                await self.engine.start(job, probe=False)
                logger.info("job reconnected by a publish hook", extra={
                    "action": "publish_hook", "job_id": job.id, "event": event.value})
                return
        if event is not StreamEvent.PUBLISHED or job.stream_status is not StreamStatus.WAITING:
            return
        # An origin may call the hook before it lets the publisher in (nginx-rtmp's
        # on_publish waits for the answer): a probe that finds nothing yet is tried again
        # shortly, well before the job's own next probe.
        for pause in (0.0, *HOOK_RETRIES_S):
            await asyncio.sleep(pause)
            if await self._attempt_waiting(job_id, reason="stream published (publish hook)"):
                self._waiting.forget(job_id)
                return

    async def get_job(self, account: str, job_id: str) -> Job:
        job = await self._store.get_job(account, job_id)
        if job is None:
            raise JobNotFound()
        return job

    def storage_info(self, job: Job) -> StorageInfo | None:
        """Where the job's snapshots go (None when no router is attached)."""
        if self._storage is None:
            return None
        return self._storage.describe(job.account, job.storage)

    async def list_jobs(self, account: str, query: JobQuery) -> Page[Job]:
        return await self._store.list_jobs(account, query)

    async def command(self, account: str, job_id: str, command: str) -> SnapshotFile | None:
        """``start`` | ``stop`` | ``restart`` | ``capture`` (one snapshot now)."""
        job = await self.get_job(account, job_id)
        if command == "capture":
            return await self._capture_now(job)
        async with self._lock(job.id):
            job = await self.get_job(account, job_id)
            if command == "start":
                if job.status is JobStatus.STARTED:
                    raise JobAlreadyStarted()
                await self._start_locked(job, reason="start command")
                self._waiting.forget(job.id)
            elif command == "stop":
                await self._stop_locked(job, reason="stop command")
                self._waiting.forget(job.id)
            elif command == "restart":
                job = await self._stop_locked(job, reason="restart command")
                await self._start_locked(job, reason="restart command")
            else:
                raise InvalidParameter("Command must be one of: start, stop, restart, capture.")
        return None

    async def delete_job(self, account: str, job_id: str, *, delete_objects: bool) -> int:
        """Stop the job and delete it with its file records and callback events (livesnap's
        ``DeleteLiveSnapshotJob``); with ``delete_objects`` its stored objects first. How many
        file records went. If an object cannot be deleted, the job stays (stopped) with the
        files whose objects remain, and ``OutputError`` says why."""
        job = await self.get_job(account, job_id)
        async with self._lock(job.id):
            job = await self.get_job(account, job_id)
            if job.status is JobStatus.STARTED:
                job = await self._stop_locked(job, reason="delete")
            else:
                await self.engine.stop(job.id)
            self._waiting.forget(job.id)
            files = await self._all_files(job)
            if delete_objects:
                failures = {f.create_ms: await self._delete_object(job, f) for f in files}
                failed = {ms: reason for ms, reason in failures.items() if reason}
                if failed:
                    await self._store.delete_files(job.id, [ms for ms in failures
                                                            if ms not in failed])
                    first = next(iter(failed.values()))
                    raise OutputError(
                        f"{len(failed)} of the job's {len(files)} objects could not be deleted "
                        f"(first: {first}); the job and those files are kept, stopped.")
            if not await self._store.delete_job(job.id):
                raise JobNotFound()
        logger.info("job deleted", extra={"action": "delete_job", "job_id": job.id,
                                          "files": len(files), "objects": delete_objects})
        return len(files)

    async def _all_files(self, job: Job) -> list[SnapshotFile]:
        """Every file record of the job, oldest first (a page at a time)."""
        found: list[SnapshotFile] = []
        start = 0
        while True:
            page = await self._store.list_files(job.account, FileQuery(
                job_id=job.id, start_ms=start, end_ms=INT64_MAX, limit=FILE_PAGE))
            found += page
            if len(page) < FILE_PAGE:
                return found
            start = page[-1].create_ms + 1

    async def _start_locked(self, job: Job, *, reason: str) -> None:
        reserved = await self._check_limits(job)
        try:
            deferred = ""  # why the capture has not begun although the job is started
            try:
                await self.engine.start(job, probe=True)
            except StreamNotFound as exc:
                await self._change(job.id, JobPatch(last_error=LastError.stream(exc.message)),
                                   reason="")
                raise
            except ShardUnavailable as exc:  # its shard starts it when back (reconcile)
                deferred = f"{exc.message} The job starts capturing when the shard is back."
            try:  # the database checks the account's started jobs again (other API nodes)
                await self._change(
                    job.id,
                    JobPatch(status=JobStatus.STARTED, status_reason=reason,
                             last_error=LastError.stream(deferred)),
                    reason=reason, max_started=self._policy.limits.jobs_per_account,
                )
            except JobLimitExceeded as exc:
                await self.engine.stop(job.id)
                await self._change(job.id, JobPatch(last_error=LastError.stream(exc.message)),
                                   reason="")
                raise
        finally:
            if reserved:
                self._starting[job.account] -= 1
                if not self._starting[job.account]:
                    del self._starting[job.account]

    async def _check_limits(self, job: Job) -> bool:
        """``JobLimitExceeded`` unless ``job`` may start; True if a start slot was reserved.

        The per-account count comes from the store, but a start is only written there once
        its probe has answered (seconds later), and the lock is per job: so starts of one
        account that are still probing are counted here too, or a burst of submits on live
        streams would all pass the check and start past the limit.
        """
        limits = self._policy.limits
        if self.engine.is_running(job.id):
            return False
        if self.engine.running_count() >= limits.jobs_per_node:
            raise JobLimitExceeded("Job limit exceeded: this node runs its maximum of jobs.")
        started = await self._store.count_jobs(job.account, JobStatus.STARTED)
        # no await from here to the reservation: the check and the count are one step
        if started + self._starting.get(job.account, 0) >= limits.jobs_per_account:
            raise JobLimitExceeded(started_jobs_message(limits.jobs_per_account))
        self._starting[job.account] = self._starting.get(job.account, 0) + 1
        return True

    async def _stop_locked(self, job: Job, *, reason: str) -> Job:
        await self.engine.stop(job.id)
        patch = JobPatch(
            status=JobStatus.PAUSED, stream_status=StreamStatus.OFFLINE, status_reason=reason
        )
        return await self._change(job.id, patch, reason=reason) or job

    async def _capture_now(self, job: Job) -> SnapshotFile:
        if job.status is not JobStatus.STARTED:
            raise JobNotStarted()
        # the engine raises JobNotStarted too when no session runs (it may be on another node)
        result = await self.engine.capture_now(job)
        return result.file

    async def _change(
        self, job_id: str, patch: JobPatch, *, reason: str, max_started: int | None = None
    ) -> Job | None:
        """Apply a patch; a status change also enqueues its callback event, atomically."""
        now = self._now_ms()
        before = await self._store.load_job(job_id)
        if before is None:
            return None
        after = _apply(before, patch)
        if after == before:
            return before  # nothing to write (a waiting job's probes report the same again)
        changed = (before.status, before.stream_status) != (after.status, after.stream_status)
        events: list[OutboxEvent] = []
        if changed and before.callback_url:
            events.append(status_event(self._new_id(), before, after, reason=reason, now_ms=now))
        updated = await self._store.update_job(job_id, patch, now_ms=now, events=events,
                                               max_started=max_started)
        if events and updated is not None:
            self._events_written(events)
        return updated

    # files ---------------------------------------------------------------------------------
    async def list_files(self, account: str, query: FileQuery) -> list[SnapshotFile]:
        await self.get_job(account, query.job_id)
        return await self._store.list_files(account, query)

    async def delete_files(
        self, account: str, job_id: str, create_ms: Sequence[int], *, delete_objects: bool
    ) -> list[DeleteResult]:
        job = await self.get_job(account, job_id)
        wanted = list(dict.fromkeys(create_ms))
        files = {f.create_ms: f for f in await self._store.get_files(job.id, wanted)}
        failures: dict[int, str] = {}
        if delete_objects:
            for ms, file in files.items():
                reason = await self._delete_object(job, file)
                if reason:
                    failures[ms] = reason
        deletable = [ms for ms in files if ms not in failures]
        deleted = set(await self._store.delete_files(job.id, deletable))
        return [DeleteResult(create_ms=ms, result=_delete_result(ms, files, failures, deleted))
                for ms in wanted]

    async def _delete_object(self, job: Job, file: SnapshotFile) -> str:
        if self._remover is None:
            return "object storage is not configured on this node"
        if await self._store.object_named_elsewhere(
                job.account, file.endpoint, file.bucket, file.object_key):
            # a bucket shared without prefixes, before accounts had them: not ours alone
            return "the object is also another account's file; it was not deleted"
        try:
            await self._remover.delete(job.account, job.storage, file.object_key)
        except OutputError as exc:
            return exc.message
        return ""

    # callbacks -------------------------------------------------------------------------------
    def on_events_written(self, hook: Callable[[Sequence[OutboxEvent]], None]) -> None:
        """Call ``hook`` with the events of each write that enqueued callback events, once it
        committed (the dispatcher delivers them from memory); with none when older events
        were made due again."""
        self._events_hook = hook

    def _events_written(self, events: Sequence[OutboxEvent]) -> None:
        if self._events_hook is not None:
            self._events_hook(events)

    async def delivery_log(self, account: str, job_id: str, limit: int) -> list[DeliveryAttempt]:
        """The job's most recent callback delivery attempts, newest first."""
        job = await self.get_job(account, job_id)
        return await self._store.delivery_log(job.id, limit)

    async def replay_failed(self, account: str, job_id: str) -> int:
        """Queue the job's failed callback events again, due now; how many."""
        job = await self.get_job(account, job_id)
        count = await self._store.requeue_events(job.id, self._now_ms())
        if count:
            self._events_written(())
        logger.info("callbacks replayed",
                    extra={"action": "replay_callbacks", "job_id": job.id, "count": count})
        return count

    # CaptureReports --------------------------------------------------------------------------
    async def next_sequence(self, job_id: str) -> int:
        return await self._store.allocate_sequence(job_id)

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        """Record one stored capture and its callback event; None if already recorded."""
        is_overlay = report.sequence_key is None
        key = report.sequence_key or report.overwrite_key or ""
        file = SnapshotFile(
            job_id=job.id,
            account=job.account,
            create_ms=report.create_ms,
            endpoint=job.storage.endpoint,
            bucket=job.storage.bucket,
            object_key=key,
            is_overlay=is_overlay,
            overwrite_key=report.overwrite_key,
            sequence=report.sequence,
            width=report.width,
            height=report.height,
            size=report.size,
            stream_time_ms=report.stream_time_ms,
            lag_ms=report.lag_ms,
            quality=report.quality,
            skipped_frames=report.skipped_frames,
        )
        now = self._now_ms()
        events = [captured_event(self._new_id(), job, file, now_ms=now)] if job.callback_url else []
        if not await self._store.record_snapshot(file, events, report.missed_ticks):
            return None
        if events:
            self._events_written(events)
        return file

    async def stream_changed(
        self, job_id: str, stream_status: StreamStatus, *, error: str = ""
    ) -> None:
        if stream_status in _PROBING and job_id in self._waiting:
            # a waiting job's probe says "connecting", then "offline" when it fails (maybe
            # after the job was marked waiting): the job is still waiting, nothing to write
            stream_status = StreamStatus.WAITING
        patch = JobPatch(stream_status=stream_status, last_error=LastError.stream(error))
        reason = error or f"stream {stream_status.value}"
        await self._change(job_id, patch, reason=reason)

    async def stream_gone(self, job_id: str, reason: str) -> None:
        async with self._lock(job_id):
            job = await self._store.load_job(job_id)
            if job is None or job.status is not JobStatus.STARTED:
                return
            await self.engine.stop(job_id)
            patch = JobPatch(
                status=JobStatus.PAUSED,
                stream_status=StreamStatus.WAITING,
                status_reason=reason,
                last_error=LastError.stream(reason),
            )
            await self._change(job_id, patch, reason=reason)
            self._wait_for_stream(job)

    async def effective_interval(self, job_id: str, interval_ms: int) -> None:
        await self._store.update_job(
            job_id, JobPatch(effective_interval_ms=interval_ms), now_ms=self._now_ms()
        )

    async def storage_changed(self, job_id: str, error: str) -> None:
        """``LastError`` shows a storage problem; clearing it leaves other errors alone."""
        await self._set_error(job_id, LastError.storage(error))

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None:
        """``LastError`` shows that a tick had no keyframe fit to keep, until one passes."""
        text = "" if verdict is Verdict.OK else f"no usable keyframe in a tick ({verdict.value})"
        await self._set_error(job_id, LastError.quality(text))

    async def ticks_missed(self, job_id: str, count: int) -> None:
        await self._store.add_missed_ticks(job_id, count)

    async def _set_error(self, job_id: str, error: LastError) -> None:
        """Set ``LastError``; clearing it (no message) clears only an error of the same kind."""
        if not error.message:
            job = await self._store.load_job(job_id)
            if job is None or LastError.of(job.last_error).kind is not error.kind:
                return
        await self._store.update_job(job_id, JobPatch(last_error=error), now_ms=self._now_ms())

def _apply(job: Job, patch: JobPatch) -> Job:
    changes: dict[str, object] = {}
    for name in ("status", "stream_status", "status_reason", "last_error"):
        value = getattr(patch, name)
        if value is not None:
            changes[name] = value.text if isinstance(value, LastError) else value
    if patch.effective_interval_ms is not None:
        changes["effective_interval_ms"] = patch.effective_interval_ms or None
    return job.evolve(**changes)


def _delete_result(
    ms: int, files: dict[int, SnapshotFile], failures: dict[int, str], deleted: set[int]
) -> str:
    if ms in failures:
        return failures[ms]
    if ms not in files:
        return "FileNotFound"
    return "OK" if ms in deleted else "FileNotFound"


__all__ = ["JobManager", "Limits", "LivesnapError", "Policy", "check_template_spec"]
