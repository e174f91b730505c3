"""``Store`` in plain dicts: the fake for tests and for running without a database.

Behaves as ``SqlStore`` does (the contract suite runs over both). One ``asyncio.Lock``
makes each method a transaction; a method checks everything before it changes anything,
so a failing call leaves no trace.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from livesnap.errors import JobLimitExceeded, JobNotFound, StoreError
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
    StreamStatus,
    Template,
    TemplateQuery,
    TemplateType,
    kept_jobs_message,
    started_jobs_message,
)
from livesnap.jobs.ports import PENDING_LIMIT
from livesnap.store.rows import encode_data

T = TypeVar("T", Template, Job)


class MemoryStore:
    """The in-memory ``Store``. Objects are frozen; event payloads are copied in and out."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._templates: dict[str, Template] = {}
        self._jobs: dict[str, Job] = {}
        self._files: dict[tuple[str, int], SnapshotFile] = {}
        self._events: dict[str, OutboxEvent] = {}  # insertion order breaks created_ms ties
        self._claims: dict[str, tuple[str, int]] = {}  # event id -> (claimer, until ms)
        self._attempts: list[DeliveryAttempt] = []

    async def close(self) -> None:
        return None

    # templates ---------------------------------------------------------------------------
    async def ensure_template(self, template: Template) -> None:
        async with self._lock:
            self._templates.setdefault(template.id, template)

    async def create_template(self, template: Template) -> None:
        async with self._lock:
            if template.id in self._templates:
                raise StoreError(f"create_template: duplicate id {template.id!r}")
            self._templates[template.id] = template

    async def get_template(self, account: str, template_id: str) -> Template | None:
        async with self._lock:
            found = self._templates.get(template_id)
        return found if found is not None and _visible(found, account) else None

    async def update_template(self, template: Template) -> bool:
        """Replace name, interval, formats, image options, connect mode and modified time;
        id, type and created stay."""
        async with self._lock:
            old = self._custom(template.account, template.id)
            if old is None:
                return False
            self._templates[old.id] = old.evolve(
                name=template.name,
                interval_s=template.interval_s,
                overwrite_format=template.overwrite_format,
                sequence_format=template.sequence_format,
                modified_ms=template.modified_ms,
                image=template.image,
                connect_mode=template.connect_mode,
            )
            return True

    async def delete_template(self, account: str, template_id: str) -> bool:
        async with self._lock:
            if self._custom(account, template_id) is None:
                return False
            del self._templates[template_id]
            return True

    def _custom(self, account: str | None, template_id: str) -> Template | None:
        found = self._templates.get(template_id)
        if found is None or account is None or found.account != account:
            return None
        return found if found.type is TemplateType.CUSTOM else None

    async def list_templates(self, account: str, query: TemplateQuery) -> Page[Template]:
        async with self._lock:
            found = [t for t in self._templates.values() if _visible(t, account)]
        return _page([t for t in found if _template_matches(t, query)], query)

    # jobs --------------------------------------------------------------------------------
    async def create_job(
        self, job: Job, events: Sequence[OutboxEvent] = (), *, max_jobs: int | None = None
    ) -> None:
        async with self._lock:
            if job.id in self._jobs:
                raise StoreError(f"create_job: duplicate id {job.id!r}")
            if max_jobs is not None and sum(
                    1 for j in self._jobs.values() if j.account == job.account) >= max_jobs:
                raise JobLimitExceeded(kept_jobs_message(max_jobs))
            self._check_new_events(events)
            self._jobs[job.id] = job
            self._add_events(events)

    async def get_job(self, account: str, job_id: str) -> Job | None:
        async with self._lock:
            found = self._jobs.get(job_id)
        return found if found is not None and found.account == account else None

    async def load_job(self, job_id: str) -> Job | None:
        async with self._lock:
            return self._jobs.get(job_id)

    async def list_jobs(self, account: str, query: JobQuery) -> Page[Job]:
        async with self._lock:
            found = [j for j in self._jobs.values() if j.account == account]
        return _page([j for j in found if _job_matches(j, query)], query)

    async def jobs_with_status(
        self, status: JobStatus, *, stream_status: StreamStatus | None = None
    ) -> list[Job]:
        async with self._lock:
            found = [j for j in self._jobs.values() if j.status is status
                     and (stream_status is None or j.stream_status is stream_status)]
        return sorted(found, key=lambda j: (j.created_ms, j.id))

    async def count_jobs(self, account: str, status: JobStatus) -> int:
        async with self._lock:
            return sum(
                1 for j in self._jobs.values() if j.account == account and j.status is status
            )

    async def update_job(
        self, job_id: str, patch: JobPatch, *, now_ms: int, events: Sequence[OutboxEvent] = (),
        max_started: int | None = None,
    ) -> Job | None:
        async with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if max_started is not None and patch.status is JobStatus.STARTED:
                started = sum(1 for j in self._jobs.values() if j.account == job.account
                              and j.status is JobStatus.STARTED and j.id != job_id)
                if started >= max_started:
                    raise JobLimitExceeded(started_jobs_message(max_started))
            self._check_new_events(events)
            job = job.evolve(**_patch_changes(patch), modified_ms=now_ms)
            self._jobs[job_id] = job
            self._add_events(events)
            return job

    async def allocate_sequence(self, job_id: str) -> int:
        async with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise JobNotFound(f"No such job: {job_id}")
            self._jobs[job_id] = job.evolve(last_sequence=job.last_sequence + 1)
            return job.last_sequence + 1

    async def add_missed_ticks(self, job_id: str, count: int) -> None:
        async with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and count > 0:
                self._jobs[job_id] = job.evolve(missed_ticks=job.missed_ticks + count)

    # files -------------------------------------------------------------------------------
    async def record_snapshot(
        self, file: SnapshotFile, events: Sequence[OutboxEvent] = (), missed_ticks: int = 0
    ) -> bool:
        async with self._lock:
            if (file.job_id, file.create_ms) in self._files:
                return False
            job = self._jobs.get(file.job_id)
            if job is None:
                raise StoreError(f"record_snapshot: unknown job {file.job_id!r}")
            self._check_new_events(events)
            self._files[(file.job_id, file.create_ms)] = file
            self._jobs[job.id] = _counted(job, file.create_ms, missed_ticks)
            self._add_events(events)
            return True

    async def list_files(self, account: str, query: FileQuery) -> list[SnapshotFile]:
        async with self._lock:
            found = [
                f
                for f in self._files.values()
                if f.job_id == query.job_id
                and f.account == account
                and query.start_ms <= f.create_ms <= query.end_ms
            ]
        found.sort(key=lambda f: f.create_ms, reverse=query.descending)
        return found[: max(query.limit, 0)]

    async def get_files(self, job_id: str, create_ms: Sequence[int]) -> list[SnapshotFile]:
        async with self._lock:
            found = [self._files.get((job_id, ms)) for ms in set(create_ms)]
        return sorted((f for f in found if f is not None), key=lambda f: f.create_ms)

    async def delete_files(self, job_id: str, create_ms: Sequence[int]) -> list[int]:
        async with self._lock:
            gone = [ms for ms in set(create_ms) if self._files.pop((job_id, ms), None)]
        return sorted(gone)

    async def delete_job(self, job_id: str) -> bool:
        async with self._lock:
            if self._jobs.pop(job_id, None) is None:
                return False
            self._files = {k: f for k, f in self._files.items() if f.job_id != job_id}
            self._drop_events({e.id for e in self._events.values() if e.job_id == job_id})
            return True

    async def object_named_elsewhere(
        self, account: str, endpoint: str, bucket: str, key: str
    ) -> bool:
        async with self._lock:
            return any(
                f.account != account and f.endpoint == endpoint and f.bucket == bucket
                and key in (f.object_key, f.overwrite_key)
                for f in self._files.values()
            )

    # callback outbox ---------------------------------------------------------------------
    def _check_new_events(self, events: Sequence[OutboxEvent]) -> None:
        ids = [e.id for e in events]
        if len(set(ids)) != len(ids) or any(i in self._events for i in ids):
            raise StoreError("duplicate outbox event id")
        for e in events:
            encode_data(e.data)  # the SQL store would refuse data that is not JSON

    def _add_events(self, events: Sequence[OutboxEvent]) -> None:
        for e in events:
            self._events[e.id] = _copy(e)

    def _select_events(self, keep: Callable[[OutboxEvent], bool]) -> list[OutboxEvent]:
        """Matching events, oldest first, as copies (callers may not touch stored data)."""
        found = [e for e in self._events.values() if keep(e)]
        found.sort(key=lambda e: e.created_ms)  # stable: insertion order among equals
        return [_copy(e) for e in found]

    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]:
        """Per job, its oldest undelivered, not failed event if that one is due; the accounts in
        turn (each one's oldest first), so that one account's backlog hides no other's."""
        async with self._lock:
            heads: dict[str, OutboxEvent] = {}
            for e in self._select_events(_undelivered):
                heads.setdefault(e.job_id, e)
        due = [e for e in heads.values() if e.next_attempt_ms <= now_ms]
        # as the SQL store orders them: in an account its callback URLs in turn, then the
        # accounts in turn; oldest first within a turn
        by_url = _in_turns(due, lambda e: (e.account, e.url))
        return _in_turns(by_url, lambda e: e.account)[: max(limit, 0)]

    async def claim_event(self, event_id: str, claimer: str, now_ms: int, until_ms: int) -> bool:
        async with self._lock:
            event = self._events.get(event_id)
            if event is None or not _undelivered(event):
                return False
            holder, held_until = self._claims.get(event_id, ("", -1))
            if holder not in ("", claimer) and held_until >= now_ms:
                return False
            self._claims[event_id] = (claimer, until_ms)
            return True

    async def pending_events(self, job_id: str) -> list[OutboxEvent]:
        async with self._lock:
            return self._select_events(lambda e: _undelivered(e) and e.job_id == job_id)

    async def get_events(self, job_id: str, *, failed_only: bool) -> list[OutboxEvent]:
        async with self._lock:
            return self._select_events(
                lambda e: e.job_id == job_id and (e.failed or not failed_only)
            )

    def commit_soon(self) -> None:
        """Nothing here waits to commit (see ``SqlStore.commit_soon``)."""

    async def record_attempt(
        self,
        attempt: DeliveryAttempt,
        *,
        delivered: bool,
        failed: bool,
        next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]:
        async with self._lock:
            found = self._events.get(attempt.event_id)
            if found is None:
                raise StoreError(f"record_attempt: unknown event {attempt.event_id!r}")
            self._attempts.append(attempt)
            self._events[found.id] = dataclasses.replace(
                found,
                attempts=found.attempts + 1,
                failed=failed,
                next_attempt_ms=next_attempt_ms,
                last_error=attempt.error,
                delivered_ms=attempt.at_ms if delivered else found.delivered_ms,
            )
            job_id = attempt.job_id
            pending = self._select_events(lambda e: _undelivered(e) and e.job_id == job_id)
            return [e.id for e in pending[: PENDING_LIMIT + 1]]

    async def delivery_log(self, job_id: str, limit: int) -> list[DeliveryAttempt]:
        async with self._lock:
            found = [(a.at_ms, n, a) for n, a in enumerate(self._attempts) if a.job_id == job_id]
        found.sort(key=lambda item: item[:2], reverse=True)
        return [a for _, _, a in found[: max(limit, 0)]]

    async def prune_events(self, before_ms: int, limit: int) -> int:
        async with self._lock:
            old = [e.id for e in self._events.values() if _prunable(e, before_ms)]
            gone = set(old[: max(limit, 0)])
            self._drop_events(gone)
            return len(gone)

    def _drop_events(self, gone: set[str]) -> None:
        """Delete these events with their attempts and claims (the caller holds the lock)."""
        self._events = {i: e for i, e in self._events.items() if i not in gone}
        self._attempts = [a for a in self._attempts if a.event_id not in gone]
        self._claims = {i: c for i, c in self._claims.items() if i not in gone}

    async def requeue_events(self, job_id: str, now_ms: int) -> int:
        """Failed events become undelivered, due at ``now_ms``, with a fresh attempt count."""
        async with self._lock:
            failed = [e for e in self._events.values() if e.job_id == job_id and e.failed]
            for e in failed:
                self._events[e.id] = dataclasses.replace(
                    e, failed=False, delivered_ms=None, next_attempt_ms=now_ms, attempts=0
                )
            return len(failed)


# pure helpers ----------------------------------------------------------------------------
def _prunable(event: OutboxEvent, before_ms: int) -> bool:
    if event.delivered_ms is not None:
        return event.delivered_ms < before_ms
    return event.failed and event.created_ms < before_ms


def _visible(template: Template, account: str) -> bool:
    return template.account is None or template.account == account


def _id_or_name(item: Template | Job, keyword: str) -> bool:
    return item.id == keyword or keyword.lower() in item.name.lower()


def _template_matches(template: Template, query: TemplateQuery) -> bool:
    if query.keyword:
        if not _id_or_name(template, query.keyword):
            return False
    elif query.ids and template.id not in query.ids:
        return False
    return query.type is None or template.type is query.type


def _job_matches(job: Job, query: JobQuery) -> bool:
    if not query.start_ms <= job.created_ms <= query.end_ms:
        return False
    if query.keyword and not _id_or_name(job, query.keyword):
        return False
    return query.status is None or job.status is query.status


def _page(items: Iterable[T], query: TemplateQuery | JobQuery) -> Page[T]:
    ordered = sorted(items, key=lambda i: (i.created_ms, i.id), reverse=query.descending)
    size = max(query.page_size, 0)
    start = max(query.page_no - 1, 0) * size
    return Page(items=ordered[start : start + size], total=len(ordered))


def _patch_changes(patch: JobPatch) -> dict[str, Any]:
    values = {f.name: getattr(patch, f.name) for f in dataclasses.fields(patch)}
    if patch.last_error is not None:
        values["last_error"] = patch.last_error.text
    return {name: value for name, value in values.items() if value is not None}


def _counted(job: Job, create_ms: int, missed_ticks: int) -> Job:
    last = job.last_snapshot_ms
    return job.evolve(
        snapshot_count=job.snapshot_count + 1,
        missed_ticks=job.missed_ticks + max(0, missed_ticks),
        last_snapshot_ms=create_ms if last is None else max(last, create_ms),
    )


def _copy(event: OutboxEvent) -> OutboxEvent:
    # OutboxEvent has no evolve() (unlike Template and Job), hence dataclasses.replace.
    return dataclasses.replace(event, data=copy.deepcopy(event.data))


def _undelivered(event: OutboxEvent) -> bool:
    return event.delivered_ms is None and not event.failed


def _in_turns(events: list[OutboxEvent], key: Callable[[OutboxEvent], object]) -> list[OutboxEvent]:
    """``events`` (in order) with the groups ``key`` names taking turns: each group's first,
    then each group's second, …; the order within a turn kept (the sort is stable)."""
    seen: dict[object, int] = {}
    ranked = []
    for event in events:
        seen[key(event)] = turn = seen.get(key(event), 0) + 1
        ranked.append((turn, event))
    ranked.sort(key=lambda pair: pair[0])
    return [event for _, event in ranked]
