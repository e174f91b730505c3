"""``Store`` over SQLAlchemy Core: SQLite or PostgreSQL (asyncpg).

Every method is one transaction (``SqlStore._run``: SQLite's in a worker thread with the
standard ``sqlite3`` driver, PostgreSQL's on the async engine), except the two writes made many
times a second, ``record_snapshot`` and ``record_attempt``: they are group-committed (see
``_GroupCommit``; on a SQLite file their transactions skip SQLAlchemy and run on the
``sqlite3`` driver itself, see ``store/direct.py``). Write transactions start with their write
statement, so that on SQLite the write lock is taken first (a read-then-write transaction could
fail with SQLITE_BUSY instead of waiting out ``busy_timeout``). Database errors leave this
module only as ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection, Engine, RowMapping, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from livesnap.errors import FencedOut, JobLimitExceeded, JobNotFound, StoreError
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
from livesnap.store import rows
from livesnap.store.direct import DirectInsert, DirectStatement, DirectWriter
from livesnap.store.migrate import migrate as apply_migrations
from livesnap.store.tables import (
    cluster_settings,
    delivery_attempts,
    files,
    jobs,
    outbox_events,
    shard_epochs,
    templates,
)

logger = logging.getLogger(__name__)

SQLITE_THREAD_NAME = "ls-sqlite"  # the OS name of the worker threads (top -H, /proc/*/comm)

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
# WAL with synchronous=NORMAL: a commit no longer waits for an fsync (8.5 ms each here, two
# per capture), and a crash of livesnap still loses nothing; only a power failure can lose the
# last commits. At hundreds of streams the FULL setting would keep the disk busy all the time.
_SQLITE_PRAGMAS = (
    "busy_timeout = 5000",
    "foreign_keys = ON",
    "journal_mode = WAL",
    "synchronous = NORMAL",
)


@dataclass(frozen=True)
class Fence:
    """The epoch one capture-shard instance took; its writes need it to be the newest."""

    shard: str
    epoch: int

    @property
    def writer(self) -> str:
        return f"{self.shard}:{self.epoch}"


_GROUP_MAX = 200  # writes per group transaction (far below SQLite's bound-parameter limit)
# Group commits start at least this far apart: under load the records and attempts of
# this long wait for one transaction instead of taking one each (a write that finds the
# writer idle for longer commits at once).
GROUP_GAP_S = 0.02
# A write that may wait (a callback attempt whose job has nothing more to deliver) waits up to
# this long for a write that may not, and commits in its transaction: at a few captures a
# second the attempts ride with the next file record instead of taking a transaction each.
COMPANY_WAIT_S = 0.5


@dataclass(eq=False)
class _SnapshotWrite:
    file: SnapshotFile
    events: Sequence[OutboxEvent]
    missed_ticks: int
    done: asyncio.Future[bool]


@dataclass(eq=False)
class _AttemptWrite:
    attempt: DeliveryAttempt
    delivered: bool
    failed: bool
    next_attempt_ms: int
    done: asyncio.Future[list[str]]
    may_wait: bool = False


_Write = _SnapshotWrite | _AttemptWrite
_T = TypeVar("_T")


class _ThreadedSqlite:
    """SQLite transactions run whole in a worker thread, on a synchronous engine.

    Through aiosqlite every statement is several hand-offs between the event loop and the
    connection's thread (cursor, execute, fetch, close), each waiting for the loop to come
    round: measured 10-16 ms per small transaction at 100 streams, 40-150 ms under API load,
    for well under 1 ms of SQLite work. Here a transaction is one hand-off. The aiosqlite
    engine stays for migrations and monitoring queries.
    """

    def __init__(self, engine: Engine, workers: int = 8) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="livesnap-sqlite",
                                        initializer=_name_os_thread)
        self.writer = DirectWriter(engine)  # the group commit's own connection

    async def run(self, fn: Callable[[], _T]) -> _T:
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The caller gave up, the transaction goes on: wait for it, so that the write
            # lock is not let go while it still writes.
            await asyncio.wait({future})
            if not future.cancelled():
                future.exception()  # retrieved: the caller is gone and cannot see it
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.writer.close()
        self.engine.dispose()


def _name_os_thread() -> None:
    """Give the worker's OS thread a name, so that ``top -H`` and benchmarks can tell the
    database's CPU from the stream readers' (Linux; elsewhere the name stays the process's)."""
    comm = Path(f"/proc/self/task/{threading.get_native_id()}/comm")
    try:
        comm.write_text(SQLITE_THREAD_NAME)
    except OSError as exc:
        logger.debug("cannot name the SQLite worker thread: %s", exc)


class SqlStore:
    """The SQL ``Store``. Build it with ``open_sql_store``; ``close()`` disposes the engine.

    Every method runs one synchronous function in one transaction (``_run``): on SQLite in a
    worker thread (``_ThreadedSqlite``), on PostgreSQL through the async engine's
    ``run_sync``. A store made by :meth:`fenced` checks, inside every write transaction, that
    its shard's epoch is still the newest (docs/cluster.md): a replaced instance gets
    ``FencedOut`` and writes nothing.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        fence: Fence | None = None,
        on_fenced: Callable[[], None] | None = None,
        threaded: _ThreadedSqlite | None = None,
        write_lock: asyncio.Lock | None = None,
        group_gap_s: float = GROUP_GAP_S,
        group_company_s: float = COMPANY_WAIT_S,
        direct_writes: bool = True,
    ) -> None:
        self._engine = engine
        self._fence = fence
        self._on_fenced = on_fenced
        self._threaded = threaded
        # SQLite has one writer at a time. Queueing this process's writers here is much
        # cheaper than letting them collide in SQLite's busy handler, which sleeps and
        # retries (3x slower for 50 concurrent writers); busy_timeout still covers other
        # processes.
        if write_lock is None and engine.dialect.name == "sqlite":
            write_lock = asyncio.Lock()
        self._write_lock = write_lock
        self._group = _GroupCommit(self, group_gap_s, group_company_s)
        # a SQLite file, no fence: the group commits run on its direct writer, on the sqlite3
        # driver itself (direct_writes=False keeps them on SQLAlchemy: to compare the two)
        self._direct = threaded if direct_writes and fence is None else None
        self.group_transactions = 0  # begun, committed or not (tests, diagnostics)
        # answers which records it inserted (RETURNING), so a group learns which were new
        self._insert_files = _files_if_new(self._dialect_insert(files)).returning(
            files.c.job_id, files.c.create_ms)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def sync_engine(self) -> Engine | None:
        """The engine SQLite transactions run on in worker threads (None: the async one)."""
        return None if self._threaded is None else self._threaded.engine

    async def close(self) -> None:
        if self._fence is None:  # a fenced view shares its parent's engines
            if self._threaded is not None:
                await asyncio.to_thread(self._threaded.close)
            await self._engine.dispose()

    # fencing (capture shards) ----------------------------------------------------------------
    async def take_epoch(self, shard: str, now_ms: int) -> int:
        """A new epoch for ``shard``, newer than every earlier one (one atomic upsert)."""
        base = self._dialect_insert(shard_epochs).values(shard=shard, epoch=1, taken_ms=now_ms)
        stmt = base.on_conflict_do_update(
            index_elements=["shard"],
            set_={"epoch": shard_epochs.c.epoch + 1, "taken_ms": now_ms},
        ).returning(shard_epochs.c.epoch)
        return await self._run("take_epoch", lambda conn: int(conn.scalar(stmt) or 0),
                               write=True)

    async def current_epoch(self, shard: str) -> int | None:
        stmt = select(shard_epochs.c.epoch).where(shard_epochs.c.shard == shard)
        value = await self._run("current_epoch", lambda conn: conn.scalar(stmt))
        return None if value is None else int(value)

    async def shard_epochs(self) -> dict[str, tuple[int, int]]:
        """Shard name → (epoch, when it was taken in epoch ms)."""
        stmt = select(shard_epochs.c.shard, shard_epochs.c.epoch, shard_epochs.c.taken_ms)
        found = await self._run("shard_epochs", lambda conn: conn.execute(stmt).all())
        return {row[0]: (int(row[1]), int(row[2])) for row in found}

    async def claim_event(self, event_id: str, claimer: str, now_ms: int, until_ms: int) -> bool:
        """Whether ``claimer`` may deliver the event now: it is undelivered, not failed, and
        nobody else's claim on it runs past ``now_ms``. The claim then holds to ``until_ms``."""
        t = outbox_events.c
        stmt = update(outbox_events).where(
            t.id == event_id, t.delivered_ms.is_(None), t.failed.is_(False),
            or_(t.claimed_until_ms.is_(None), t.claimed_until_ms < now_ms,
                t.claimed_by == claimer),
        ).values(claimed_by=claimer, claimed_until_ms=until_ms)
        claimed = await self._run("claim_event", lambda conn: conn.execute(stmt).rowcount,
                                  write=True)
        return bool(claimed)

    async def agree(self, name: str, value: str, now_ms: int, *, replace: bool = False) -> str:
        """The cluster's value of setting ``name``: the one stored first, by this call if
        none was (two nodes storing at once: the first insert wins, both read it); with
        ``replace``, ``value`` becomes the cluster's (the operator's command that sets it)."""
        row = {"name": name, "value": value, "set_ms": now_ms}
        insert_stmt = (self._dialect_insert(cluster_settings).values(row).on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "set_ms": now_ms}) if replace
            else self._insert_if_absent(cluster_settings, row, ["name"]))
        read = select(cluster_settings.c.value).where(cluster_settings.c.name == name)

        def run(conn: Connection) -> str:
            conn.execute(insert_stmt)
            return str(conn.scalar(read))

        return await self._run("agree", run, write=True)

    async def take_lease(self, name: str, holder: str, now_ms: int, until_ms: int) -> bool:
        """Whether ``holder`` holds the lease ``name`` (a row of ``cluster_settings``: its
        holder, and when it runs out) until ``until_ms``: it had it, or nobody's ran past
        ``now_ms``. One node at a time does what the lease guards (a rebalance)."""
        t = cluster_settings.c
        insert_stmt = self._insert_if_absent(
            cluster_settings, {"name": name, "value": "", "set_ms": 0}, ["name"])
        take = update(cluster_settings).where(
            t.name == name, or_(t.value == holder, t.value == "", t.set_ms < now_ms),
        ).values(value=holder, set_ms=until_ms)

        def run(conn: Connection) -> bool:
            conn.execute(insert_stmt)
            return bool(conn.execute(take).rowcount)

        return await self._run("take_lease", run, write=True)

    def fenced(self, fence: Fence, on_fenced: Callable[[], None] | None = None) -> SqlStore:
        """A view of this store whose writes are refused once ``fence`` is stale."""
        return SqlStore(self._engine, fence=fence, on_fenced=on_fenced,
                        threaded=self._threaded, write_lock=self._write_lock,
                        group_gap_s=self._group.gap_s, group_company_s=self._group.company_s)

    async def confirm_owner(self) -> None:
        """``FencedOut`` unless this view's fence is still current (a view without one: None)."""
        if self._fence is not None:
            await self._run("confirm_owner", lambda conn: None, write=True)

    def _check_fence(self, conn: Connection, fence: Fence) -> None:
        # FOR SHARE: take_epoch's UPDATE of the row waits for this transaction to end, so
        # no write of the old epoch can commit after a newer epoch was taken.
        stmt = select(shard_epochs.c.epoch).where(shard_epochs.c.shard == fence.shard)
        current = conn.scalar(stmt.with_for_update(read=True))
        if current != fence.epoch:
            if self._on_fenced is not None:
                self._on_fenced()
            raise FencedOut(
                f"shard {fence.shard} epoch {fence.epoch} was replaced (now {current})"
            )

    async def _run(
        self, op: str, body: Callable[[Connection], _T], *, write: bool = False
    ) -> _T:
        """``body`` in one transaction; database errors become ``StoreError`` naming ``op``."""
        fence = self._fence if write else None
        with _store_errors(op):
            async with self._serialized(write):
                if self._threaded is not None:
                    threaded = self._threaded
                    return await threaded.run(
                        lambda: self._in_tx_sync(threaded.engine, body, fence))
                async with self._engine.begin() as conn:
                    return await conn.run_sync(self._in_tx, body, fence)

    def _serialized(self, write: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        if write and self._write_lock is not None:
            return self._write_lock
        return contextlib.nullcontext()

    def _in_tx_sync(
        self, engine: Engine, body: Callable[[Connection], _T], fence: Fence | None
    ) -> _T:
        with engine.begin() as conn:
            return self._in_tx(conn, body, fence)

    def _in_tx(self, conn: Connection, body: Callable[[Connection], _T], fence: Fence | None) -> _T:
        if fence is not None:
            self._check_fence(conn, fence)
        return body(conn)

    def _lock_account(self, conn: Connection, scope: str, account: str) -> None:
        """On PostgreSQL, hold the account's ``scope`` lock until the transaction ends, so
        that two API nodes count and write its jobs one after the other. SQLite needs none:
        its one write lock, taken by the write before the count, does that."""
        if self._engine.dialect.name == "postgresql":
            conn.execute(_LOCK_ACCOUNT, {"key": f"livesnap-{scope}:{account}"})

    def _dialect_insert(self, table: Table) -> Any:
        dialect_insert = sqlite_insert if self._engine.dialect.name == "sqlite" else pg_insert
        return dialect_insert(table)

    def _insert_if_absent(self, table: Table, values: dict[str, Any], key: list[str]) -> Any:
        """``INSERT … ON CONFLICT (key) DO NOTHING`` in this engine's dialect."""
        return self._dialect_insert(table).values(values).on_conflict_do_nothing(
            index_elements=key)

    # templates ---------------------------------------------------------------------------
    async def ensure_template(self, template: Template) -> None:
        stmt = self._insert_if_absent(templates, rows.template_values(template), ["id"])
        await self._run("ensure_template", lambda conn: conn.execute(stmt), write=True)

    async def create_template(self, template: Template) -> None:
        stmt = insert(templates).values(rows.template_values(template))
        await self._run("create_template", lambda conn: conn.execute(stmt), write=True)

    async def get_template(self, account: str, template_id: str) -> Template | None:
        stmt = select(templates).where(templates.c.id == template_id, _visible_to(account))
        row = await self._run("get_template", lambda conn: conn.execute(stmt).mappings().first())
        return None if row is None else rows.template_from_row(row)

    async def update_template(self, template: Template) -> bool:
        """Replace name, interval, formats, image options, connect mode and modified time;
        id, type and created stay."""
        if template.account is None:
            return False
        changes = rows.template_values(template)
        for kept in ("id", "account", "type", "created_ms"):
            del changes[kept]
        stmt = update(templates).where(*_custom_of(template.account, template.id))
        stmt = stmt.values(changes)
        return await self._run("update_template", lambda conn: _changed(conn, stmt), write=True)

    async def delete_template(self, account: str, template_id: str) -> bool:
        stmt = delete(templates).where(*_custom_of(account, template_id))
        return await self._run("delete_template", lambda conn: _changed(conn, stmt), write=True)

    async def list_templates(self, account: str, query: TemplateQuery) -> Page[Template]:
        where = [_visible_to(account), *_template_filters(query)]
        order = (templates.c.created_ms, templates.c.id)
        found, total = await self._run(
            "list_templates", lambda conn: _page(conn, templates, where, order, query))
        return Page(items=[rows.template_from_row(row) for row in found], total=total)

    # jobs --------------------------------------------------------------------------------
    async def create_job(
        self, job: Job, events: Sequence[OutboxEvent] = (), *, max_jobs: int | None = None
    ) -> None:
        stmt = insert(jobs).values(rows.job_values(job))

        def body(conn: Connection) -> None:
            if max_jobs is not None:  # one Submit per account at a time
                self._lock_account(conn, "jobs", job.account)
            # insert, then count: on SQLite the insert takes the database's one write lock
            # first, so another process's count comes after this transaction's commit
            conn.execute(stmt)
            if max_jobs is not None:
                kept = conn.execute(_COUNT_JOBS, {"b_account": job.account}).scalar_one()
                if kept > max_jobs:  # raising rolls the insert back
                    raise JobLimitExceeded(kept_jobs_message(max_jobs))
            _insert_events(conn, events)

        await self._run("create_job", body, write=True)

    async def get_job(self, account: str, job_id: str) -> Job | None:
        return await self._one_job(and_(jobs.c.id == job_id, jobs.c.account == account))

    async def load_job(self, job_id: str) -> Job | None:
        return await self._one_job(jobs.c.id == job_id)

    async def _one_job(self, where: ColumnElement[bool]) -> Job | None:
        stmt = select(jobs).where(where)
        row = await self._run("get_job", lambda conn: conn.execute(stmt).mappings().first())
        return None if row is None else rows.job_from_row(row)

    async def list_jobs(self, account: str, query: JobQuery) -> Page[Job]:
        where = [jobs.c.account == account, *_job_filters(query)]
        order = (jobs.c.created_ms, jobs.c.id)
        found, total = await self._run(
            "list_jobs", lambda conn: _page(conn, jobs, where, order, query))
        return Page(items=[rows.job_from_row(row) for row in found], total=total)

    async def jobs_with_status(
        self, status: JobStatus, *, stream_status: StreamStatus | None = None
    ) -> list[Job]:
        stmt = select(jobs).where(jobs.c.status == status.value)
        if stream_status is not None:
            stmt = stmt.where(jobs.c.stream_status == stream_status.value)
        stmt = stmt.order_by(jobs.c.created_ms, jobs.c.id)
        found = await self._run("jobs_with_status", lambda conn: _mappings(conn, stmt))
        return [rows.job_from_row(row) for row in found]

    async def count_jobs(self, account: str, status: JobStatus) -> int:
        params = {"b_account": account, "b_status": status.value}
        return await self._run("count_jobs",
                               lambda conn: int(conn.scalar(_COUNT_WITH_STATUS, params) or 0))

    async def update_job(
        self, job_id: str, patch: JobPatch, *, now_ms: int, events: Sequence[OutboxEvent] = (),
        max_started: int | None = None,
    ) -> Job | None:
        changes = {**rows.patch_values(patch), "modified_ms": now_ms}
        stmt = update(jobs).where(jobs.c.id == job_id).values(changes).returning(*jobs.c)
        # the account's started jobs are limited only by a patch that starts one
        limit = max_started if patch.status is JobStatus.STARTED else None

        def body(conn: Connection) -> RowMapping | None:
            if limit is not None:  # one start per account at a time, across API nodes
                account = conn.execute(_ACCOUNT_OF, {"b_job": job_id}).scalar()
                if account is not None:
                    self._lock_account(conn, "started", account)
            # update, then count (as create_job: on SQLite the write lock comes first)
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return None
            if limit is not None:
                started = conn.execute(_COUNT_WITH_STATUS, {
                    "b_account": row["account"], "b_status": JobStatus.STARTED.value}).scalar_one()
                if started > limit:  # raising rolls the update back
                    raise JobLimitExceeded(started_jobs_message(limit))
            _insert_events(conn, events)
            return row

        row = await self._run("update_job", body, write=True)
        return None if row is None else rows.job_from_row(row)

    async def allocate_sequence(self, job_id: str) -> int:
        # One UPDATE … RETURNING: the row lock (PostgreSQL) or the database write lock
        # (SQLite) makes the increment atomic, so concurrent callers never share a value.
        stmt = update(jobs).where(jobs.c.id == job_id)
        stmt = stmt.values(last_sequence=jobs.c.last_sequence + 1)
        value = await self._run(
            "allocate_sequence", lambda conn: conn.scalar(stmt.returning(jobs.c.last_sequence)),
            write=True)
        if value is None:
            raise JobNotFound(f"No such job: {job_id}")
        return int(value)

    # files -------------------------------------------------------------------------------
    async def record_snapshot(
        self, file: SnapshotFile, events: Sequence[OutboxEvent] = (), missed_ticks: int = 0
    ) -> bool:
        write = _SnapshotWrite(file, events, missed_ticks, _future())
        self._group.submit(write)
        return await write.done  # a cancelled caller's write is skipped if it has not begun

    async def add_missed_ticks(self, job_id: str, count: int) -> None:
        if count <= 0:
            return
        stmt = update(jobs).where(jobs.c.id == job_id).values(
            missed_ticks=jobs.c.missed_ticks + count)
        await self._run("add_missed_ticks", lambda conn: conn.execute(stmt), write=True)

    async def list_files(self, account: str, query: FileQuery) -> list[SnapshotFile]:
        order = files.c.create_ms.desc() if query.descending else files.c.create_ms.asc()
        stmt = select(files).where(
            files.c.job_id == query.job_id,
            files.c.account == account,
            files.c.create_ms.between(query.start_ms, query.end_ms),
        )
        stmt = stmt.order_by(order).limit(max(query.limit, 0))
        found = await self._run("list_files", lambda conn: _mappings(conn, stmt))
        return [rows.file_from_row(row) for row in found]

    async def get_files(self, job_id: str, create_ms: Sequence[int]) -> list[SnapshotFile]:
        if not create_ms:
            return []
        stmt = select(files).where(files.c.job_id == job_id, files.c.create_ms.in_(create_ms))
        stmt = stmt.order_by(files.c.create_ms)
        found = await self._run("get_files", lambda conn: _mappings(conn, stmt))
        return [rows.file_from_row(row) for row in found]

    async def delete_files(self, job_id: str, create_ms: Sequence[int]) -> list[int]:
        if not create_ms:
            return []
        stmt = delete(files).where(
            files.c.job_id == job_id, files.c.create_ms.in_(create_ms)
        ).returning(files.c.create_ms)
        gone = await self._run(
            "delete_files", lambda conn: conn.execute(stmt).scalars().all(), write=True)
        return sorted(int(value) for value in gone)

    async def delete_job(self, job_id: str) -> bool:
        # files and delivery attempts go with their job and events (ON DELETE CASCADE)
        events = delete(outbox_events).where(outbox_events.c.job_id == job_id)
        job = delete(jobs).where(jobs.c.id == job_id)

        def body(conn: Connection) -> bool:
            conn.execute(events)
            return _changed(conn, job)

        return await self._run("delete_job", body, write=True)

    async def object_named_elsewhere(
        self, account: str, endpoint: str, bucket: str, key: str
    ) -> bool:
        named = or_(files.c.object_key == key, files.c.overwrite_key == key)
        stmt = select(files.c.id).where(
            named, files.c.bucket == bucket, files.c.endpoint == endpoint,
            files.c.account != account,
        ).limit(1)
        found = await self._run("object_named_elsewhere",
                                lambda conn: conn.execute(stmt).first())
        return found is not None

    # callback outbox ---------------------------------------------------------------------
    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]:
        """Per job, its oldest undelivered, not failed event if that one is due; the accounts in
        turn (each one's oldest first), so that one account's backlog hides no other's."""
        params = {"b_now": now_ms, "b_limit": max(limit, 0)}
        return await self._events("due_heads", _DUE_HEADS, params)

    async def pending_events(self, job_id: str) -> list[OutboxEvent]:
        stmt = _undelivered().where(outbox_events.c.job_id == job_id)
        return await self._events("pending_events", stmt)

    async def get_events(self, job_id: str, *, failed_only: bool) -> list[OutboxEvent]:
        stmt = _events_oldest_first().where(outbox_events.c.job_id == job_id)
        if failed_only:
            stmt = stmt.where(outbox_events.c.failed == true())
        return await self._events("get_events", stmt)

    async def _events(
        self, op: str, stmt: Select[Any], params: dict[str, Any] | None = None
    ) -> list[OutboxEvent]:
        found = await self._run(op, lambda conn: _mappings(conn, stmt, params))
        return [rows.event_from_row(row) for row in found]

    async def record_attempt(
        self,
        attempt: DeliveryAttempt,
        *,
        delivered: bool,
        failed: bool,
        next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]:
        write = _AttemptWrite(attempt, delivered, failed, next_attempt_ms, _future(), may_wait)
        self._group.submit(write)
        return await write.done

    def commit_soon(self) -> None:
        """Writes waiting for company (``may_wait``) commit now: a delivery waits on one."""
        self._group.hurry()

    async def _write_group(self, group: Sequence[_Write]) -> list[Any]:
        """One transaction for all of ``group``; each write's result, in order."""
        snapshots = [w for w in group if isinstance(w, _SnapshotWrite)]
        attempts = [w for w in group if isinstance(w, _AttemptWrite)]
        op = "record_snapshot" if snapshots else "record_attempt"

        # In both ways, attempts first: the events the group's records add are not in their
        # answer (this process offers those to its dispatcher once the group commits; the
        # dispatcher would otherwise take them for events written elsewhere).
        def body(conn: Connection) -> tuple[dict[int, bool], dict[str, list[str]]]:
            pending = _write_attempts(conn, attempts) if attempts else {}
            recorded = self._write_snapshots(conn, snapshots) if snapshots else {}
            return recorded, pending

        self.group_transactions += 1
        threaded = self._direct
        if threaded is None:
            recorded, pending = await self._run(op, body, write=True)
        else:
            def direct() -> tuple[dict[int, bool], dict[str, list[str]]]:
                with threaded.writer.transaction() as cursor:
                    pending = _direct_attempts(cursor, attempts) if attempts else {}
                    return _direct_snapshots(cursor, snapshots) if snapshots else {}, pending

            with _store_errors(op):
                async with self._serialized(True):
                    recorded, pending = await threaded.run(direct)
        return [recorded.get(id(w)) if isinstance(w, _SnapshotWrite)
                else pending.get(w.attempt.job_id, []) for w in group]

    def _write_snapshots(
        self, conn: Connection, writes: Sequence[_SnapshotWrite]
    ) -> dict[int, bool]:
        """Insert the files not recorded before; count them and queue their events.

        Three statements whatever the number of files (executemany), so a group costs about
        what one capture did alone."""
        values = [rows.file_values(w.file) for w in writes]
        if self._fence is not None:
            for row in values:
                row["writer"] = self._fence.writer
        inserted = {(row[0], int(row[1])) for row in conn.execute(self._insert_files, values)}
        recorded: dict[int, bool] = {}
        for w in writes:  # the same capture twice in a group: the first one is the record
            key = (w.file.job_id, w.file.create_ms)
            recorded[id(w)] = key in inserted
            inserted.discard(key)
        new = [w for w in writes if recorded[id(w)]]
        if new:
            conn.execute(_COUNT_SNAPSHOT, _snapshot_counts(new))
            _insert_events(conn, [e for w in new for e in w.events])
        return recorded

    async def delivery_log(self, job_id: str, limit: int) -> list[DeliveryAttempt]:
        stmt = select(delivery_attempts).where(delivery_attempts.c.job_id == job_id)
        stmt = stmt.order_by(delivery_attempts.c.at_ms.desc(), delivery_attempts.c.id.desc())
        stmt = stmt.limit(max(limit, 0))
        found = await self._run("delivery_log", lambda conn: _mappings(conn, stmt))
        return [rows.attempt_from_row(row) for row in found]

    async def requeue_events(self, job_id: str, now_ms: int) -> int:
        """Failed events become undelivered, due at ``now_ms``, with a fresh attempt count."""
        stmt = update(outbox_events).where(
            outbox_events.c.job_id == job_id, outbox_events.c.failed == true()
        )
        stmt = stmt.values(failed=False, delivered_ms=None, next_attempt_ms=now_ms, attempts=0)
        return await self._run(
            "requeue_events", lambda conn: int(conn.execute(stmt).rowcount), write=True)

    async def prune_events(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` events delivered before ``before_ms``, or given up and
        created before it, with their delivery attempts; how many."""
        c = outbox_events.c
        delivered = select(c.id).where(c.delivered_ms < before_ms)  # ix_outbox_events_due
        failed = select(c.id).where(c.delivered_ms.is_(None), c.failed == true(),
                                    c.created_ms < before_ms)

        def body(conn: Connection) -> int:
            # a batch at a time: one short write transaction; two queries, as one with OR
            # would read the whole table
            ids = list(conn.scalars(delivered.limit(max(limit, 0))))
            if len(ids) < limit:
                ids += conn.scalars(failed.limit(limit - len(ids)))
            if not ids:
                return 0
            # their attempts go by the foreign key's ON DELETE CASCADE (ix_delivery_attempts_event)
            return int(conn.execute(delete(outbox_events).where(c.id.in_(ids))).rowcount)

        return await self._run("prune_events", body, write=True)


class _GroupCommit:
    """Group commit for ``record_snapshot`` and ``record_attempt``.

    At 100 streams these come 40 times a second, and on SQLite each used to be a transaction
    of its own behind the write lock: about 10-16 ms of thread hand-offs each, more than half
    of every second, so that under API load the records fell minutes behind the captures.
    Now a write joins a queue; one writer task commits everything queued while the previous
    transaction ran, in one transaction, and then answers each caller. A caller still returns
    only after its write committed, so every guarantee of the single writes holds. If a group
    breaks a constraint, its writes are made again one by one, so one bad write (an unknown
    job, a taken event id) fails alone; a stale fence or a failing database fails them all at
    once, as each would have.

    Groups start at least ``gap_s`` apart: a write that finds the writer idle for longer
    commits at once, and under load the writes of the last ``gap_s`` share a transaction
    (at 200 streams, 40 records and 40 callback attempts a second take about 20
    transactions instead of about 70; each costs ~0.4 ms of CPU whatever it holds).

    At a few captures a second nothing shares a transaction that way: each record and each
    attempt took one. A write that ``may_wait`` (an attempt whose job has nothing else to
    deliver, so no delivery waits on it) waits up to ``company_s`` for one that may not, and
    joins its transaction: the attempts ride with the next records (measured: one
    transaction per capture instead of two at 20 streams). It waits only if such a write came
    within the last ``company_s``: where records are rare or written by another process, a
    wait would only hold the delivery's slot.
    """

    def __init__(
        self, store: SqlStore, gap_s: float = GROUP_GAP_S, company_s: float = COMPANY_WAIT_S
    ) -> None:
        self._store = store
        self.gap_s = gap_s
        self.company_s = company_s
        self._started = -gap_s  # loop time of the last group's start
        self._queue: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        self._company: asyncio.Future[None] | None = None  # the writer waits for one
        self._last_eager = float("-inf")  # loop time of the last write that may not wait

    def submit(self, write: _Write) -> None:
        """Queue ``write``; its ``done`` future is answered once its group committed."""
        self._queue.append(write)
        if not _may_wait(write):
            self._last_eager = asyncio.get_running_loop().time()
            self.hurry()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._run(), name="store-group-commit")

    def hurry(self) -> None:
        """Stop waiting for company: what is queued commits now."""
        if self._company is not None and not self._company.done():
            self._company.set_result(None)

    async def _await_company(self) -> None:
        """While every queued write may wait, and one that may not came within the last
        ``company_s`` (so another is likely soon): until one comes, or ``company_s``. A store
        that writes no file records (an API node whose capture runs elsewhere) never waits."""
        if not all(_may_wait(w) for w in self._queue):
            return
        if asyncio.get_running_loop().time() - self._last_eager > self.company_s:
            return
        self._company = company = _future()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.company_s):
                    await company
        finally:
            self._company = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        group: list[_Write] = []
        try:
            while self._queue:
                await self._await_company()
                wait = self._started + self.gap_s - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # what comes meanwhile joins this group
                self._started = loop.time()
                group = [w for w in self._queue[:_GROUP_MAX] if not w.done.done()]
                del self._queue[:_GROUP_MAX]
                if group:
                    await self._commit(group)
                group = []
        except BaseException as exc:
            # cancelled (the loop is closing) or a bug: no caller may wait forever
            for w in (*group, *self._queue):
                _settle(w, exc)
            self._queue.clear()
            raise

    async def _commit(self, group: Sequence[_Write]) -> None:
        try:
            results = await self._store._write_group(group)
        except FencedOut as exc:
            for w in group:
                _settle(w, exc)
        except StoreError as exc:
            if len(group) == 1 or not isinstance(exc.__cause__, _INTEGRITY_ERRORS):
                # the database itself failed (locked, gone, full): each write alone would
                # fail the same way, after as long a wait
                for w in group:
                    _settle(w, exc)
                return
            for w in group:  # one write broke a constraint: find it, each alone
                await self._commit([w])
        else:
            for w, result in zip(group, results, strict=True):
                _settle(w, result)


def _may_wait(write: _Write) -> bool:
    return isinstance(write, _AttemptWrite) and write.may_wait


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


def _settle(write: _Write, outcome: object) -> None:
    """Answer the caller waiting on ``write`` (unless it gave up waiting)."""
    done: asyncio.Future[Any] = write.done
    if done.done():
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


def _write_attempts(conn: Connection, writes: Sequence[_AttemptWrite]) -> dict[str, list[str]]:
    """Log the attempts, update their events; per job, its events still pending after them."""
    conn.execute(_INSERT_ATTEMPTS, [rows.attempt_values(w.attempt) for w in writes])
    conn.execute(_RECORD_ATTEMPT, _attempt_changes(writes))
    jobs = dict.fromkeys(w.attempt.job_id for w in writes)
    return {job: list(conn.scalars(_PENDING_OF_JOB, {"b_job": job})) for job in jobs}


def _attempt_changes(writes: Sequence[_AttemptWrite]) -> list[dict[str, Any]]:
    """``_RECORD_ATTEMPT``'s parameters for each attempt."""
    return [{
        "b_id": w.attempt.event_id,
        "b_failed": w.failed,
        "b_next": w.next_attempt_ms,
        "b_error": w.attempt.error,
        "b_delivered": w.attempt.at_ms if w.delivered else None,
    } for w in writes]


def _snapshot_counts(writes: Sequence[_SnapshotWrite]) -> list[dict[str, Any]]:
    """``_COUNT_SNAPSHOT``'s parameters for each new record."""
    return [{"b_job": w.file.job_id, "b_ms": w.file.create_ms,
             "b_missed": max(0, w.missed_ticks)} for w in writes]


# the group commit's transactions on the sqlite3 driver (store/direct.py): the same statements
# and the same answers as _write_attempts and SqlStore._write_snapshots
def _direct_attempts(
    cursor: sqlite3.Cursor, writes: Sequence[_AttemptWrite]
) -> dict[str, list[str]]:
    _DIRECT_INSERT_ATTEMPTS.execute_many(cursor, [rows.attempt_values(w.attempt) for w in writes])
    _DIRECT_RECORD_ATTEMPT.execute_many(cursor, _attempt_changes(writes))
    jobs = dict.fromkeys(w.attempt.job_id for w in writes)
    pending = _DIRECT_PENDING_OF_JOB
    return {job: [row[0] for row in cursor.execute(pending.sql, pending.bind({"b_job": job}))]
            for job in jobs}


def _direct_snapshots(cursor: sqlite3.Cursor, writes: Sequence[_SnapshotWrite]) -> dict[int, bool]:
    """Insert the files not recorded before (a capture twice in a group: the first one is the
    record); count them and queue their events."""
    recorded: dict[int, bool] = {}
    for w in writes:
        values = rows.file_values(w.file)
        insert_file = _DIRECT_INSERT_FILE.of(values)
        recorded[id(w)] = cursor.execute(insert_file.sql, insert_file.bind(values)).rowcount == 1
    new = [w for w in writes if recorded[id(w)]]
    if new:
        _DIRECT_COUNT_SNAPSHOT.execute_many(cursor, _snapshot_counts(new))
        _DIRECT_INSERT_EVENTS.execute_many(
            cursor, [rows.event_values(e) for w in new for e in w.events])
    return recorded


@contextlib.contextmanager
def _store_errors(op: str) -> Iterator[None]:
    """Database errors, through SQLAlchemy or straight from sqlite3, as ``StoreError``."""
    try:
        yield
    except _INTEGRITY_ERRORS as exc:
        raise StoreError(f"{op}: duplicate id or unknown reference") from exc
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise StoreError(f"{op}: the database failed ({type(exc).__name__})") from exc


# query pieces ----------------------------------------------------------------------------
def _visible_to(account: str) -> ColumnElement[bool]:
    """The account's own templates and the system ones (account NULL)."""
    return or_(templates.c.account == account, templates.c.account.is_(None))


def _custom_of(account: str, template_id: str) -> list[ColumnElement[bool]]:
    return [
        templates.c.id == template_id,
        templates.c.account == account,
        templates.c.type == TemplateType.CUSTOM.value,
    ]


def _id_or_name(table: Table, keyword: str) -> ColumnElement[bool]:
    """Exact id, or the name containing the keyword case-insensitively (``%``/``_`` literal)."""
    name = func.lower(table.c.name).contains(keyword.lower(), autoescape=True)
    return or_(table.c.id == keyword, name)


def _template_filters(query: TemplateQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if query.keyword:
        where.append(_id_or_name(templates, query.keyword))
    elif query.ids:
        where.append(templates.c.id.in_(list(query.ids)))
    if query.type is not None:
        where.append(templates.c.type == query.type.value)
    return where


def _job_filters(query: JobQuery) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [jobs.c.created_ms.between(query.start_ms, query.end_ms)]
    if query.keyword:
        where.append(_id_or_name(jobs, query.keyword))
    if query.status is not None:
        where.append(jobs.c.status == query.status.value)
    return where


def _page(
    conn: Connection,
    table: Table,
    where: list[ColumnElement[bool]],
    order: tuple[Any, ...],
    query: TemplateQuery | JobQuery,
) -> tuple[Sequence[RowMapping], int]:
    """One page of ``table`` rows ordered by ``order``, and the count before paging."""
    total = conn.scalar(select(func.count()).select_from(table).where(*where))
    size = max(query.page_size, 0)
    keys = [column.desc() if query.descending else column.asc() for column in order]
    stmt = select(table).where(*where).order_by(*keys)
    stmt = stmt.offset(max(query.page_no - 1, 0) * size).limit(size)
    return conn.execute(stmt).mappings().all(), int(total or 0)


def _mappings(
    conn: Connection, stmt: Select[Any], params: dict[str, Any] | None = None
) -> Sequence[RowMapping]:
    return conn.execute(stmt, params).mappings().all()


def _changed(conn: Connection, stmt: Any) -> bool:
    """Run an UPDATE or DELETE; whether it touched a row."""
    return bool(conn.execute(stmt).rowcount > 0)


def _count_snapshot_stmt() -> Any:
    """Bump a job's snapshot count (and missed ticks) and move its last snapshot time forward
    only; executemany parameters ``b_job``, ``b_ms``, ``b_missed``."""
    # Typed: asyncpg binds a bare int as INTEGER, too small for epoch ms.
    new_ms = bindparam("b_ms", type_=BigInteger())
    last = jobs.c.last_snapshot_ms
    newest = case((or_(last.is_(None), last < new_ms), new_ms), else_=last)
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("b_job"))
        .values(snapshot_count=jobs.c.snapshot_count + 1, last_snapshot_ms=newest,
                missed_ticks=jobs.c.missed_ticks + bindparam("b_missed", type_=Integer()))
    )


def _record_attempt_stmt() -> Any:
    """One delivery attempt's outcome on its event; executemany parameters ``b_*``."""
    c = outbox_events.c
    return (
        update(outbox_events)
        .where(c.id == bindparam("b_id"))
        .values(
            attempts=c.attempts + 1,
            failed=bindparam("b_failed"),
            next_attempt_ms=bindparam("b_next", type_=BigInteger()),
            last_error=bindparam("b_error"),
            delivered_ms=func.coalesce(bindparam("b_delivered", type_=BigInteger()),
                                       c.delivered_ms),
        )
    )


def _due_heads_stmt() -> Select[Any]:
    """Each job's oldest undelivered, not failed event, if due by ``b_now``, at most
    ``b_limit``: the accounts in turn (each one's oldest, then each one's second oldest, …),
    so that one account's backlog never hides another's events. Built once: the dispatcher
    asks about twice per delivery, and building the windowed subquery cost more CPU than
    running it."""
    c = outbox_events.c
    rank = func.row_number().over(partition_by=c.job_id, order_by=(c.created_ms, c.seq))
    pending = (
        select(outbox_events, rank.label("job_rank"))
        .where(c.delivered_ms.is_(None), c.failed == false())
        .subquery()
    )
    p = pending.c
    url_turn = func.row_number().over(partition_by=(p.account, p.url),
                                      order_by=(p.created_ms, p.seq))
    heads = (
        select(*(p[col.name] for col in outbox_events.c), url_turn.label("url_turn"))
        .where(p.job_rank == 1, p.next_attempt_ms <= bindparam("b_now", type_=BigInteger()))
        .subquery()
    )
    h = heads.c
    # within an account, its receivers (callback URLs) in turn too
    turn = func.row_number().over(partition_by=h.account,
                                  order_by=(h.url_turn, h.created_ms, h.seq))
    turns = select(*(h[col.name] for col in outbox_events.c),
                   turn.label("account_turn")).subquery()
    t = turns.c
    return (
        select(*(t[col.name] for col in outbox_events.c))
        .order_by(t.account_turn, t.created_ms, t.seq)
        .limit(bindparam("b_limit", type_=Integer()))
    )


_DUE_HEADS = _due_heads_stmt()
_COUNT_JOBS = select(func.count()).select_from(jobs).where(
    jobs.c.account == bindparam("b_account"))
_LOCK_ACCOUNT = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_COUNT_WITH_STATUS = select(func.count()).select_from(jobs).where(
    jobs.c.account == bindparam("b_account"), jobs.c.status == bindparam("b_status"))
_ACCOUNT_OF = select(jobs.c.account).where(jobs.c.id == bindparam("b_job"))
_INSERT_ATTEMPTS = insert(delivery_attempts)
_INSERT_EVENTS = insert(outbox_events)
_COUNT_SNAPSHOT = _count_snapshot_stmt()
_RECORD_ATTEMPT = _record_attempt_stmt()


def _events_oldest_first() -> Select[Any]:
    return select(outbox_events).order_by(outbox_events.c.created_ms, outbox_events.c.seq)


def _undelivered() -> Select[Any]:
    return _events_oldest_first().where(
        outbox_events.c.delivered_ms.is_(None), outbox_events.c.failed == false()
    )


# The first ``PENDING_LIMIT + 1`` undelivered, not failed events of the job ``b_job``: their
# ids, oldest first (through ``ix_outbox_events_pending``).
_PENDING_OF_JOB = (_undelivered().with_only_columns(outbox_events.c.id)
                   .where(outbox_events.c.job_id == bindparam("b_job"))
                   .limit(PENDING_LIMIT + 1))


def _files_if_new(dialect_insert: Any) -> Any:
    """A file record's idempotent insert (the key is the files table's unique index)."""
    return dialect_insert.on_conflict_do_nothing(index_elements=["job_id", "create_ms"])


_INTEGRITY_ERRORS = (IntegrityError, sqlite3.IntegrityError)
_DIRECT_INSERT_FILE = DirectInsert(_files_if_new(sqlite_insert(files)))
_DIRECT_INSERT_ATTEMPTS = DirectInsert(_INSERT_ATTEMPTS)
_DIRECT_INSERT_EVENTS = DirectInsert(_INSERT_EVENTS)
_DIRECT_COUNT_SNAPSHOT = DirectStatement(_COUNT_SNAPSHOT)
_DIRECT_RECORD_ATTEMPT = DirectStatement(_RECORD_ATTEMPT)
_DIRECT_PENDING_OF_JOB = DirectStatement(_PENDING_OF_JOB)


def _insert_events(conn: Connection, events: Sequence[OutboxEvent]) -> None:
    if events:
        conn.execute(_INSERT_EVENTS, [rows.event_values(e) for e in events])


# engine ----------------------------------------------------------------------------------
def _async_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise StoreError("the database URL is not valid") from exc
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StoreError(f"unsupported database driver {parsed.drivername!r}")
    return parsed.set(drivername=driver)


def _sqlite_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLite's own lower() folds ASCII only; use Python's, as MemoryStore does.
    dbapi_connection.create_function("lower", 1, _sqlite_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    try:
        for pragma in _SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


def create_store_engine(url: str) -> AsyncEngine:
    """An async engine for a SQLite or PostgreSQL URL (the async driver is filled in)."""
    parsed = _async_url(url)
    try:
        engine = create_async_engine(parsed)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(f"cannot create a database engine: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
    return engine


def _threaded_sqlite(engine: AsyncEngine) -> _ThreadedSqlite | None:
    """Worker threads on a synchronous engine for a SQLite file (None for PostgreSQL, and for
    an in-memory database, which a second engine would not see)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    # LIFO: the connection used last is taken again, and its page cache is still valid; in
    # the default order every transaction took the least recently used one, whose cache the
    # others' commits had made stale (at 20 streams, 24 page reads per capture against 0.7
    # with LIFO: strace, same bench)
    sync_engine = create_engine(url.set(drivername="sqlite"), pool_use_lifo=True)
    event.listen(sync_engine, "connect", _on_sqlite_connect)
    return _ThreadedSqlite(sync_engine)


async def open_sql_store(
    url: str, *, migrate: bool = True, group_gap_s: float = GROUP_GAP_S,
    group_company_s: float = COMPANY_WAIT_S, direct_writes: bool = True,
) -> SqlStore:
    """Connect, bring the schema up to date (unless ``migrate=False``) and return the store
    (``group_gap_s``, ``group_company_s``: see ``_GroupCommit``; ``direct_writes=False``
    runs a SQLite file's group commits through SQLAlchemy too, see ``store/direct.py``)."""
    engine = create_store_engine(url)
    if migrate:
        try:
            await apply_migrations(engine)
        except BaseException:
            await engine.dispose()
            raise
    return SqlStore(engine, threaded=_threaded_sqlite(engine), group_gap_s=group_gap_s,
                    group_company_s=group_company_s, direct_writes=direct_writes)
