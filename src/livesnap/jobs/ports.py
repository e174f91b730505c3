"""What the domain needs from the outside world: small protocols that adapters implement.

``Store`` is implemented by ``livesnap.store`` (SQLite, PostgreSQL, memory);
``CaptureEngine`` by ``livesnap.capture`` (and a stand-in for nodes without capture);
``CaptureReports`` by ``JobManager``, for the capture engine to report back through;
``ObjectRemover`` and ``StorageRouting`` by the storage router (``livesnap.outputs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from livesnap.jobs.models import (
    DeliveryAttempt,
    FileQuery,
    Job,
    JobPatch,
    JobQuery,
    JobStatus,
    OutboxEvent,
    Page,
    SnapshotFile,
    StorageTarget,
    StreamStatus,
    Template,
    TemplateQuery,
    Verdict,
)

# ``Store.record_attempt`` lists at most this many + 1 of a job's pending events
PENDING_LIMIT = 32


class Store(Protocol):
    """Persistence. Every method is one transaction; account scoping is done here."""

    async def close(self) -> None: ...

    # templates ---------------------------------------------------------------------------
    async def ensure_template(self, template: Template) -> None:
        """Insert the template if no template with its id exists (the system template)."""

    async def create_template(self, template: Template) -> None: ...

    async def get_template(self, account: str, template_id: str) -> Template | None:
        """The account's template, or a system template; None otherwise."""

    async def update_template(self, template: Template) -> bool:
        """Replace a custom template of ``template.account``; False if there is none."""

    async def delete_template(self, account: str, template_id: str) -> bool: ...

    async def list_templates(self, account: str, query: TemplateQuery) -> Page[Template]:
        """The account's templates and the system templates, by creation time."""

    # jobs --------------------------------------------------------------------------------
    async def create_job(
        self, job: Job, events: Sequence[OutboxEvent] = (), *, max_jobs: int | None = None
    ) -> None:
        """Store a new job (and its events); with ``max_jobs``, ``JobLimitExceeded`` instead if
        its account would keep more jobs than that, counted in the same transaction (so that
        several API nodes on one database cannot pass the limit together)."""

    async def get_job(self, account: str, job_id: str) -> Job | None: ...

    async def load_job(self, job_id: str) -> Job | None:
        """A job by id whatever its account (for the capture engine)."""

    async def list_jobs(self, account: str, query: JobQuery) -> Page[Job]: ...

    async def jobs_with_status(
        self, status: JobStatus, *, stream_status: StreamStatus | None = None
    ) -> list[Job]:
        """Every job in that status (and stream status, if given), all accounts (used to
        resume after a restart, and to find the jobs waiting for their stream)."""

    async def count_jobs(self, account: str, status: JobStatus) -> int: ...

    async def update_job(
        self, job_id: str, patch: JobPatch, *, now_ms: int, events: Sequence[OutboxEvent] = (),
        max_started: int | None = None,
    ) -> Job | None:
        """Apply ``patch`` and enqueue ``events`` in one transaction; the job after, or None.
        With ``max_started``, a patch that starts the job raises ``JobLimitExceeded`` instead
        if its account would then have more started jobs, counted in the same transaction."""

    async def allocate_sequence(self, job_id: str) -> int:
        """The job's next ``{Sequence}`` value (1, 2, …); never hands out a value twice."""

    # files -------------------------------------------------------------------------------
    async def record_snapshot(
        self, file: SnapshotFile, events: Sequence[OutboxEvent] = (), missed_ticks: int = 0
    ) -> bool:
        """Insert the file record, bump the job's count and last time, add ``missed_ticks``
        (ticks without a capture before this one) to the job's, enqueue ``events``.

        One transaction. False (and nothing written) if the job already has a file with
        the same ``create_ms``: recording is idempotent.
        """

    async def add_missed_ticks(self, job_id: str, count: int) -> None:
        """Add ``count`` ticks that ended without a file to the job's ``MissedTicks`` now
        (a tick the quality gate or a decode error lost, an outage that paused the job)."""

    async def list_files(self, account: str, query: FileQuery) -> list[SnapshotFile]: ...

    async def get_files(self, job_id: str, create_ms: Sequence[int]) -> list[SnapshotFile]: ...

    async def delete_files(self, job_id: str, create_ms: Sequence[int]) -> list[int]:
        """Delete these file records; the ``create_ms`` values that existed and are gone."""

    async def delete_job(self, job_id: str) -> bool:
        """Delete the job with its file records, its callback events and their attempts, in
        one transaction; False if there was no such job."""

    async def object_named_elsewhere(
        self, account: str, endpoint: str, bucket: str, key: str
    ) -> bool:
        """True if a file record of another account names this object (its sequence or
        overwrite key at this endpoint and bucket)."""

    # callback outbox ---------------------------------------------------------------------
    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]:
        """Per job, its oldest undelivered, not failed event if that one is due; the accounts
        in turn (each one's oldest first), so that one account's backlog hides no other's.

        A job's later events wait behind its head, which keeps callbacks in order per job.
        """

    async def pending_events(self, job_id: str) -> list[OutboxEvent]:
        """Undelivered, not failed events of a job, oldest first (per-job ordering)."""

    async def record_attempt(
        self,
        attempt: DeliveryAttempt,
        *,
        delivered: bool,
        failed: bool,
        next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]:
        """Log one delivery attempt and update its event; the ids of the job's events still
        undelivered and not failed once it is written, oldest first, at most
        ``PENDING_LIMIT + 1`` of them (the dispatcher learns from it whether it knows all that
        the job still has to deliver). ``may_wait``: nothing waits on this write, so the store
        may hold it back a little to commit it with others (until ``commit_soon``)."""

    def commit_soon(self) -> None:
        """Writes held back by ``may_wait`` commit now."""

    async def delivery_log(self, job_id: str, limit: int) -> list[DeliveryAttempt]: ...

    async def get_events(self, job_id: str, *, failed_only: bool) -> list[OutboxEvent]: ...

    async def requeue_events(self, job_id: str, now_ms: int) -> int:
        """Mark a job's failed events undelivered and due now; how many (replay)."""

    async def prune_events(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` events delivered before ``before_ms``, or given up and
        created before it, with their delivery attempts; how many (retention)."""


@dataclass(frozen=True, kw_only=True)
class CaptureResult:
    """What a capture-now request produced."""

    file: SnapshotFile


class CaptureEngine(Protocol):
    """Runs capture sessions. Commands are idempotent."""

    async def start(self, job: Job, *, probe: bool) -> None:
        """Start capturing ``job``.

        With ``probe``, wait until the stream is live and raise ``StreamNotFound`` (leaving
        nothing running) if it is not; without, start and keep reconnecting in the background.
        """

    async def stop(self, job_id: str) -> None: ...

    async def capture_now(self, job: Job) -> CaptureResult:
        """One snapshot of a started job now (the next keyframe)."""

    def is_running(self, job_id: str) -> bool: ...

    def running_count(self) -> int: ...

    async def shutdown(self, timeout_s: float) -> None:
        """Stop every session within ``timeout_s`` (jobs keep their status)."""


@dataclass(frozen=True, kw_only=True)
class CaptureReport:
    """One JPEG the engine has stored; the manager records it."""

    job_id: str
    create_ms: int
    sequence: int | None
    sequence_key: str | None
    overwrite_key: str | None
    width: int
    height: int
    size: int
    stream_time_ms: int | None
    lag_ms: int | None
    quality: Verdict | None = None
    skipped_frames: int = 0
    missed_ticks: int = 0  # ticks without a capture since the previous capture (or takeover)


class CaptureReports(Protocol):
    """How the capture engine reports back (implemented by ``JobManager``)."""

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None: ...

    async def stream_changed(
        self, job_id: str, stream_status: StreamStatus, *, error: str = ""
    ) -> None: ...

    async def stream_gone(self, job_id: str, reason: str) -> None:
        """The outage window passed: the job goes to ``paused``."""

    async def next_sequence(self, job_id: str) -> int: ...

    async def effective_interval(self, job_id: str, interval_ms: int) -> None: ...

    async def storage_changed(self, job_id: str, error: str) -> None:
        """The job's snapshots cannot be stored (``error``), or can again (``""``)."""

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None:
        """No keyframe of a whole tick passed the quality gate (``verdict`` says why), or a
        capture passed again (``Verdict.OK``)."""

    async def ticks_missed(self, job_id: str, count: int) -> None:
        """``count`` ticks ended without a file; counted now, so that the next capture (which
        counts the ticks since the previous one) leaves them out."""

    async def check_host(self, name: str, host: str) -> None:
        """``InvalidParameter`` if ``host`` resolves into a blocked network (at connect time)."""


class ObjectRemover(Protocol):
    """Deletes stored snapshot objects (``DeleteOriginalFile=true``)."""

    async def delete(self, account: str, target: StorageTarget, key: str) -> None:
        """Delete one of ``account``'s objects; raise ``OutputError`` with a reason if it
        fails."""


@dataclass(frozen=True, kw_only=True)
class StorageInfo:
    """Where a storage target's objects really go (``GetLiveSnapshotJob`` shows it)."""

    writable: bool  # False: no route at all (not configured, and the fallback is off)
    fallback: bool  # local disk stands in for an unconfigured OSS/S3 target
    description: str


class StorageRouting(Protocol):
    """Storage routing as the use cases see it (design.md §4 "Storage routing")."""

    def describe(self, account: str, target: StorageTarget) -> StorageInfo:
        """How ``account``'s jobs write ``target``; an unwritable one says why in
        ``description``."""


class Resolver(Protocol):
    """Host name to addresses (for the blocked-network check)."""

    async def resolve(self, host: str) -> list[str]: ...
