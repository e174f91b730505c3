"""One contract for ``livesnap.jobs.ports.Store``, run over memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livesnap.errors import JobLimitExceeded, JobNotFound, StoreError
from livesnap.jobs.models import (
    SYSTEM_TEMPLATE_ID,
    ConnectMode,
    DeliveryAttempt,
    EventType,
    FileQuery,
    ImageFormat,
    ImageOptions,
    Job,
    JobPatch,
    JobQuery,
    JobStatus,
    LastError,
    OutboxEvent,
    SnapshotFile,
    StorageTarget,
    StorageType,
    StreamStatus,
    Template,
    TemplateQuery,
    TemplateType,
    Verdict,
)
from livesnap.jobs.ports import PENDING_LIMIT, Store
from livesnap.store import MemoryStore, SqlStore, open_sql_store
from livesnap.store.sql import SQLITE_THREAD_NAME

T0 = 1_700_000_000_000  # epoch ms, beyond 32 bits on purpose


# fixtures --------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str | None) -> AsyncIterator[Store]:
    backend: Store = MemoryStore() if store_url is None else await open_sql_store(store_url)
    yield backend
    await backend.close()


# factories -------------------------------------------------------------------------------
def template(tid: str, account: str | None = "acct-a", **changes: Any) -> Template:
    values: dict[str, Any] = {
        "id": tid,
        "account": account,
        "name": f"name of {tid}",
        "type": TemplateType.CUSTOM if account else TemplateType.SYSTEM,
        "interval_s": 5,
        "overwrite_format": "snapshot/{JobId}.jpg",
        "sequence_format": "snapshot/{JobId}/{UnixTimestamp}.jpg",
        "created_ms": T0,
        "modified_ms": T0,
    }
    return Template(**(values | changes))


def job(jid: str, account: str = "acct-a", **changes: Any) -> Job:
    values: dict[str, Any] = {
        "id": jid,
        "account": account,
        "name": f"job {jid}",
        "template_id": "tpl",
        "template_name": "tpl name",
        "interval_s": 5,
        "overwrite_format": "snapshot/{JobId}.jpg",
        "sequence_format": None,
        "stream_url": "rtmp://127.0.0.1/live/x",
        "stream_type": "rtmp",
        "storage": StorageTarget(
            storage_type=StorageType.OSS, endpoint="oss-cn-shanghai.aliyuncs.com", bucket="b"
        ),
        "callback_url": "http://127.0.0.1:9/cb",
        "status": JobStatus.INIT,
        "created_ms": T0,
        "modified_ms": T0,
    }
    return Job(**(values | changes))


def snap(job_id: str, create_ms: int, account: str = "acct-a", **changes: Any) -> SnapshotFile:
    values: dict[str, Any] = {
        "job_id": job_id,
        "account": account,
        "create_ms": create_ms,
        "endpoint": "oss-cn-shanghai.aliyuncs.com",
        "bucket": "b",
        "object_key": f"snapshot/{job_id}/{create_ms}.jpg",
        "is_overlay": False,
        "sequence": 1,
        "width": 1280,
        "height": 720,
        "size": 12345,
    }
    return SnapshotFile(**(values | changes))


def event(job_id: str, created_ms: int = T0, **changes: Any) -> OutboxEvent:
    values: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "job_id": job_id,
        "account": "acct-a",
        "url": "http://127.0.0.1:9/cb",
        "type": EventType.CAPTURED,
        "data": {"JobId": job_id, "n": created_ms, "名前": ["ü", {"x": None}]},
        "created_ms": created_ms,
    }
    return OutboxEvent(**(values | changes))


def attempt(ev: OutboxEvent, at_ms: int, error: str = "") -> DeliveryAttempt:
    return DeliveryAttempt(
        event_id=ev.id, job_id=ev.job_id, at_ms=at_ms, status_code=500, latency_ms=3, error=error
    )


def ids(items: list[Any]) -> list[str]:
    return [item.id for item in items]


# the port itself -------------------------------------------------------------------------
STORE_METHODS = [name for name, value in vars(Store).items() if inspect.iscoroutinefunction(value)]


@pytest.mark.parametrize("cls", [MemoryStore, SqlStore])
@pytest.mark.parametrize("name", STORE_METHODS)
def test_every_port_method_has_the_port_signature(cls: type, name: str) -> None:
    expected = inspect.signature(getattr(Store, name))
    actual = inspect.signature(getattr(cls, name))
    assert list(actual.parameters.values()) == list(expected.parameters.values())
    assert inspect.iscoroutinefunction(getattr(cls, name))


# templates -------------------------------------------------------------------------------
async def test_system_template_is_seen_by_every_account(store: Store) -> None:
    system = template(SYSTEM_TEMPLATE_ID, account=None)
    await store.ensure_template(system)
    await store.ensure_template(system.evolve(name="changed"))  # insert-if-absent only
    for account in ("acct-a", "acct-b"):
        assert await store.get_template(account, SYSTEM_TEMPLATE_ID) == system
        page = await store.list_templates(account, TemplateQuery())
        assert ids(page.items) == [SYSTEM_TEMPLATE_ID]


async def test_system_template_cannot_be_updated_or_deleted(store: Store) -> None:
    system = template(SYSTEM_TEMPLATE_ID, account=None)
    await store.ensure_template(system)
    assert not await store.update_template(system.evolve(name="x"))
    assert not await store.update_template(system.evolve(account="acct-a", name="x"))
    assert not await store.delete_template("acct-a", SYSTEM_TEMPLATE_ID)
    assert await store.get_template("acct-a", SYSTEM_TEMPLATE_ID) == system


async def test_duplicate_template_id_is_a_store_error(store: Store) -> None:
    await store.create_template(template("t1"))
    with pytest.raises(StoreError):
        await store.create_template(template("t1", account="acct-b"))
    assert await store.get_template("acct-b", "t1") is None


async def test_templates_are_private_to_their_account(store: Store) -> None:
    mine = template("t1")
    await store.create_template(mine)
    assert await store.get_template("acct-b", "t1") is None
    assert not await store.update_template(mine.evolve(account="acct-b", name="stolen"))
    assert not await store.delete_template("acct-b", "t1")
    assert (await store.list_templates("acct-b", TemplateQuery())).total == 0
    assert await store.get_template("acct-a", "t1") == mine


async def test_update_template_replaces_fields_and_keeps_creation(store: Store) -> None:
    await store.create_template(template("t1"))
    new = template(
        "t1", name="renamed", interval_s=60, overwrite_format=None, created_ms=1, modified_ms=T0 + 9
    )
    assert await store.update_template(new)
    assert await store.get_template("acct-a", "t1") == new.evolve(created_ms=T0)
    assert not await store.update_template(template("missing"))


async def test_delete_template(store: Store) -> None:
    await store.create_template(template("t1"))
    assert await store.delete_template("acct-a", "t1")
    assert await store.get_template("acct-a", "t1") is None
    assert not await store.delete_template("acct-a", "t1")


async def _seed_templates(store: Store) -> None:
    await store.ensure_template(template(SYSTEM_TEMPLATE_ID, account=None, created_ms=T0))
    names = {"t1": "Alpha 100%", "t2": "beta_1", "t3": "ALPHA two", "t4": "gamma", "t5": "betax1"}
    for n, (tid, name) in enumerate(names.items(), start=1):
        await store.create_template(template(tid, name=name, created_ms=T0 + n // 2))
    await store.create_template(template("other", account="acct-b", name="alpha"))


async def test_list_templates_sorts_by_creation_then_id(store: Store) -> None:
    await _seed_templates(store)
    desc = await store.list_templates("acct-a", TemplateQuery(page_size=100))
    assert ids(desc.items) == ["t5", "t4", "t3", "t2", "t1", SYSTEM_TEMPLATE_ID]
    asc = await store.list_templates("acct-a", TemplateQuery(page_size=100, descending=False))
    assert ids(asc.items) == list(reversed(ids(desc.items)))
    assert desc.total == asc.total == 6


async def test_list_templates_pages(store: Store) -> None:
    await _seed_templates(store)
    pages = [
        await store.list_templates(
            "acct-a", TemplateQuery(page_no=n, page_size=4, descending=False)
        )
        for n in (1, 2, 3)
    ]
    assert [ids(p.items) for p in pages] == [
        [SYSTEM_TEMPLATE_ID, "t1", "t2", "t3"],
        ["t4", "t5"],
        [],
    ]
    assert {p.total for p in pages} == {6}


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("t4", ["t4"]),  # exact id
        ("alpha", ["t1", "t3"]),  # case-insensitive substring of the name
        ("0%", ["t1"]),  # '%' is literal
        ("a_1", ["t2"]),  # '_' is literal
        ("TWO", ["t3"]),
        ("t", [SYSTEM_TEMPLATE_ID, "t2", "t3", "t5"]),  # names with "t"; ids match only exactly
        ("nothing", []),
    ],
)
async def test_list_templates_keyword(store: Store, keyword: str, expected: list[str]) -> None:
    await _seed_templates(store)
    query = TemplateQuery(keyword=keyword, descending=False, ids=["t5"])  # ids ignored
    page = await store.list_templates("acct-a", query)
    assert (ids(page.items), page.total) == (expected, len(expected))


async def test_list_templates_ids_and_type(store: Store) -> None:
    await _seed_templates(store)
    by_ids = TemplateQuery(ids=["t2", "t4", SYSTEM_TEMPLATE_ID, "other"], descending=False)
    assert ids((await store.list_templates("acct-a", by_ids)).items) == [
        SYSTEM_TEMPLATE_ID, "t2", "t4"
    ]  # fmt: skip
    system = await store.list_templates("acct-a", TemplateQuery(type=TemplateType.SYSTEM))
    assert (ids(system.items), system.total) == ([SYSTEM_TEMPLATE_ID], 1)
    custom = TemplateQuery(type=TemplateType.CUSTOM, ids=["t1", "t2", SYSTEM_TEMPLATE_ID])
    assert ids((await store.list_templates("acct-a", custom)).items) == ["t2", "t1"]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    created=st.lists(st.integers(min_value=0, max_value=5), min_size=0, max_size=12),
    page_size=st.integers(min_value=1, max_value=5),
    descending=st.booleans(),
)
async def test_paging_returns_every_template_once(
    store: Store, created: list[int], page_size: int, descending: bool
) -> None:
    account = f"acct-{uuid.uuid4().hex}"  # a fresh account per example: examples share a store
    for n, offset in enumerate(created):
        await store.create_template(template(f"{account}-{n}", account, created_ms=T0 + offset))
    seen: list[str] = []
    for page_no in range(1, len(created) // page_size + 2):
        query = TemplateQuery(page_no=page_no, page_size=page_size, descending=descending)
        page = await store.list_templates(account, query)
        assert page.total == len(created)
        seen += ids(page.items)
    assert sorted(seen) == sorted(f"{account}-{n}" for n in range(len(created)))
    assert len(seen) == len(set(seen))


# jobs ------------------------------------------------------------------------------------
async def test_create_get_and_load_job(store: Store) -> None:
    created = job("j1", last_sequence=3, effective_interval_ms=4000, callback_url=None)
    await store.create_job(created)
    assert await store.get_job("acct-a", "j1") == created
    assert await store.get_job("acct-b", "j1") is None
    assert await store.load_job("j1") == created
    assert await store.load_job("nope") is None
    with pytest.raises(StoreError):
        await store.create_job(job("j1", account="acct-b"))


async def test_create_job_enqueues_its_events(store: Store) -> None:
    first, second = event("j1", T0 + 1), event("j1", T0)
    await store.create_job(job("j1"), [first, second])
    assert await store.pending_events("j1") == [second, first]


async def _seed_jobs(store: Store) -> None:
    specs = [
        ("j1", "Front door", JobStatus.STARTED, T0),
        ("j2", "back DOOR", JobStatus.PAUSED, T0 + 10),
        ("j3", "garden", JobStatus.STARTED, T0 + 10),
        ("j4", "door_2", JobStatus.INIT, T0 + 20),
        ("j5", "late", JobStatus.STARTED, T0 + 30),
    ]
    for jid, name, status, created in specs:
        await store.create_job(job(jid, name=name, status=status, created_ms=created))
    await store.create_job(job("x1", account="acct-b", name="door", created_ms=T0 + 10))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ["j4", "j3", "j2", "j1"]),  # window bounds are inclusive; j5 is after it
        ({"descending": False}, ["j1", "j2", "j3", "j4"]),
        ({"start_ms": T0 + 10, "end_ms": T0 + 10}, ["j3", "j2"]),
        ({"keyword": "door"}, ["j4", "j2", "j1"]),
        ({"keyword": "j3"}, ["j3"]),
        ({"keyword": "r_"}, ["j4"]),
        ({"status": JobStatus.STARTED}, ["j3", "j1"]),
        ({"keyword": "DOOR", "status": JobStatus.PAUSED}, ["j2"]),
    ],
)
async def test_list_jobs_filters(
    store: Store, changes: dict[str, Any], expected: list[str]
) -> None:
    await _seed_jobs(store)
    query = JobQuery(**({"start_ms": T0, "end_ms": T0 + 20, "page_size": 100} | changes))
    page = await store.list_jobs("acct-a", query)
    assert (ids(page.items), page.total) == (expected, len(expected))


async def test_list_jobs_pages(store: Store) -> None:
    await _seed_jobs(store)
    query = JobQuery(start_ms=0, end_ms=T0 * 2, page_size=2, page_no=2)
    page = await store.list_jobs("acct-a", query)
    assert (ids(page.items), page.total) == (["j3", "j2"], 5)
    other = await store.list_jobs("acct-b", JobQuery(start_ms=0, end_ms=T0 * 2))
    assert (ids(other.items), other.total) == (["x1"], 1)


async def test_jobs_with_status_and_count_jobs(store: Store) -> None:
    await _seed_jobs(store)
    await store.create_job(job("x2", account="acct-b", status=JobStatus.STARTED, created_ms=1))
    started = await store.jobs_with_status(JobStatus.STARTED)
    assert ids(started) == ["x2", "j1", "j3", "j5"]
    assert await store.count_jobs("acct-a", JobStatus.STARTED) == 3
    assert await store.count_jobs("acct-b", JobStatus.STARTED) == 1
    assert await store.count_jobs("acct-b", JobStatus.PAUSED) == 0


async def test_update_job_applies_the_patch_and_enqueues_events(store: Store) -> None:
    before = job("j1", status_reason="was", last_error="boom", effective_interval_ms=5000)
    await store.create_job(before)
    ev = event("j1", type=EventType.STATUS_CHANGED)
    patch = JobPatch(status=JobStatus.STARTED, stream_status=StreamStatus.LIVE, last_error=LastError.stream(""))
    after = await store.update_job("j1", patch, now_ms=T0 + 5, events=[ev])
    expected = before.evolve(
        status=JobStatus.STARTED, stream_status=StreamStatus.LIVE, last_error="", modified_ms=T0 + 5
    )
    assert after == expected  # status_reason and effective_interval_ms unchanged (None)
    assert await store.load_job("j1") == expected
    assert await store.pending_events("j1") == [ev]


async def test_update_job_of_an_unknown_job_writes_nothing(store: Store) -> None:
    patch = JobPatch(status=JobStatus.PAUSED)
    assert await store.update_job("nope", patch, now_ms=T0, events=[event("nope")]) is None
    assert await store.pending_events("nope") == []


async def test_update_job_is_atomic(store: Store) -> None:
    first = event("j1")
    await store.create_job(job("j1"), [first])
    patch = JobPatch(status=JobStatus.PAUSED, status_reason="stopped")
    with pytest.raises(StoreError):  # the event id is taken: the whole update rolls back
        await store.update_job("j1", patch, now_ms=T0 + 1, events=[event("j1", id=first.id)])
    assert await store.load_job("j1") == job("j1")
    assert await store.pending_events("j1") == [first]


async def test_allocate_sequence_never_repeats_under_concurrency(store: Store) -> None:
    await store.create_job(job("j1"))
    await store.create_job(job("j2", last_sequence=7))
    values = await asyncio.gather(*(store.allocate_sequence("j1") for _ in range(50)))
    assert sorted(values) == list(range(1, 51))
    assert await store.allocate_sequence("j2") == 8
    loaded = await store.load_job("j1")
    assert loaded is not None and loaded.last_sequence == 50
    with pytest.raises(JobNotFound):
        await store.allocate_sequence("nope")


# files -----------------------------------------------------------------------------------
async def test_record_snapshot_is_idempotent(store: Store) -> None:
    await store.create_job(job("j1"))
    first = event("j1", T0 + 100)
    assert await store.record_snapshot(snap("j1", T0 + 100), [first])
    assert not await store.record_snapshot(snap("j1", T0 + 100, size=1), [event("j1")])
    loaded = await store.load_job("j1")
    assert loaded is not None
    assert (loaded.snapshot_count, loaded.last_snapshot_ms) == (1, T0 + 100)
    assert await store.pending_events("j1") == [first]
    assert await store.get_files("j1", [T0 + 100]) == [snap("j1", T0 + 100)]


async def test_record_snapshot_keeps_the_latest_time(store: Store) -> None:
    await store.create_job(job("j1"))
    for ms in (T0 + 200, T0 + 100, T0 + 300):
        assert await store.record_snapshot(snap("j1", ms))
    loaded = await store.load_job("j1")
    assert loaded is not None
    assert (loaded.snapshot_count, loaded.last_snapshot_ms) == (3, T0 + 300)


async def test_missed_ticks_can_be_added_without_a_file(store: Store) -> None:
    await store.create_job(job("j1"))
    await store.add_missed_ticks("j1", 3)
    await store.add_missed_ticks("j1", 0)  # nothing
    await store.add_missed_ticks("nope", 2)  # an unknown job: nothing, no error
    assert await store.record_snapshot(snap("j1", T0 + 100), missed_ticks=1)
    loaded = await store.load_job("j1")
    assert loaded is not None and (loaded.missed_ticks, loaded.snapshot_count) == (4, 1)


async def test_the_jobs_an_account_keeps_are_capped_in_the_transaction(store: Store) -> None:
    await store.create_job(job("b1", "acct-b"), max_jobs=1)
    # five Submits of one account at once against a limit of two: exactly two get in
    outcomes = await asyncio.gather(
        *(store.create_job(job(f"a{n}"), [event(f"a{n}")], max_jobs=2) for n in range(5)),
        return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, JobLimitExceeded)]
    assert len(refused) == 3 and outcomes.count(None) == 2, outcomes
    assert "at most 2 jobs per account" in refused[0].message
    kept = [n for n in range(5) if await store.load_job(f"a{n}") is not None]
    assert len(kept) == 2
    for n in set(range(5)) - set(kept):  # a refused job left no events behind
        assert await store.get_events(f"a{n}", failed_only=False) == []
    assert await store.delete_job(f"a{kept[0]}")
    await store.create_job(job("a9"), max_jobs=2)  # a deleted job frees its place
    await store.create_job(job("a10"))  # no limit given: none applied


async def test_the_started_jobs_of_an_account_are_capped_in_the_transaction(store: Store) -> None:
    for n in range(5):
        await store.create_job(job(f"a{n}"))
    await store.create_job(job("b0", "acct-b"))
    start = JobPatch(status=JobStatus.STARTED)
    outcomes = await asyncio.gather(
        *(store.update_job(f"a{n}", start, now_ms=T0, max_started=2) for n in range(5)),
        return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, JobLimitExceeded)]
    assert len(refused) == 3, outcomes
    assert "at most 2 started jobs per account" in refused[0].message
    started = [n for n in range(5)
               if (loaded := await store.load_job(f"a{n}")) and loaded.status is JobStatus.STARTED]
    assert len(started) == 2
    # a started job patched as started again counts once; another account is apart
    assert await store.update_job(f"a{started[0]}", start, now_ms=T0 + 1, max_started=2)
    assert await store.update_job("b0", start, now_ms=T0, max_started=1)
    # other changes are never limited, nor starts without a limit
    refused_one = next(n for n in range(5) if n not in started)
    assert await store.update_job(f"a{refused_one}", JobPatch(last_error=LastError.stream("x")), now_ms=T0,
                                  max_started=2)
    assert await store.update_job(f"a{refused_one}", start, now_ms=T0)


async def test_delete_job_takes_its_files_events_and_attempts(store: Store) -> None:
    first, second = event("j1", T0), event("j1", T0 + 1)
    await store.create_job(job("j1"), [first, second])
    await store.create_job(job("j2"), [event("j2", T0)])
    await store.record_snapshot(snap("j1", T0))
    await store.record_snapshot(snap("j2", T0))
    await store.record_attempt(attempt(first, T0 + 5), delivered=True, failed=False,
                               next_attempt_ms=0)
    assert await store.delete_job("j1")
    assert await store.load_job("j1") is None
    assert await store.get_files("j1", [T0]) == []
    assert await store.get_events("j1", failed_only=False) == []
    assert await store.delivery_log("j1", 10) == []
    assert [e.job_id for e in await store.due_heads(T0 + 10, limit=10)] == ["j2"]
    assert [f.job_id for f in await store.get_files("j2", [T0])] == ["j2"]  # untouched
    assert not await store.delete_job("j1")


async def test_an_object_named_by_another_accounts_record_is_found(store: Store) -> None:
    await store.create_job(job("ja", "acct-a"))
    await store.create_job(job("jb", "acct-b"))
    await store.record_snapshot(snap("ja", T0, "acct-a", object_key="cam/1.jpg",
                                     overwrite_key="cam/latest.jpg"))
    await store.record_snapshot(snap("jb", T0, "acct-b", object_key="b/cam/1.jpg"))
    ep = "oss-cn-shanghai.aliyuncs.com"
    assert await store.object_named_elsewhere("acct-b", ep, "b", "cam/1.jpg")
    assert await store.object_named_elsewhere("acct-b", ep, "b", "cam/latest.jpg")  # overwrite
    assert not await store.object_named_elsewhere("acct-a", ep, "b", "cam/1.jpg")  # its own
    assert not await store.object_named_elsewhere("acct-b", ep, "other", "cam/1.jpg")
    assert not await store.object_named_elsewhere("acct-b", "elsewhere", "b", "cam/1.jpg")
    assert not await store.object_named_elsewhere("acct-a", ep, "b", "b/cam/2.jpg")


async def test_record_snapshot_adds_missed_ticks_once(store: Store) -> None:
    await store.create_job(job("j1"))
    assert await store.record_snapshot(snap("j1", T0 + 100), missed_ticks=2)
    assert await store.record_snapshot(snap("j1", T0 + 200))
    assert not await store.record_snapshot(snap("j1", T0 + 200), missed_ticks=5)  # a retry
    loaded = await store.load_job("j1")
    assert loaded is not None and loaded.missed_ticks == 2


async def test_record_snapshot_is_atomic(store: Store) -> None:
    taken = event("j1")
    await store.create_job(job("j1"), [taken])
    with pytest.raises(StoreError):
        await store.record_snapshot(snap("j1", T0), [event("j1", id=taken.id)])
    assert await store.get_files("j1", [T0]) == []
    assert await store.load_job("j1") == job("j1")
    with pytest.raises(StoreError):
        await store.record_snapshot(snap("unknown-job", T0))


async def test_concurrent_records_each_count_once_and_fail_alone(store: Store) -> None:
    # Many captures recorded at once (the SQL store commits them as one group): each is
    # recorded once, in order, and a bad one fails alone.
    taken = event("j1")
    await store.create_job(job("j1"), [taken])
    await store.create_job(job("j2"))
    good = [(snap(j, T0 + 10 * n), [event(j, T0 + 10 * n)], n % 3)
            for n in range(20) for j in ("j1", "j2")]
    writes = [store.record_snapshot(f, evs, missed) for f, evs, missed in good]
    writes.append(store.record_snapshot(snap("j1", T0 + 50, size=1)))  # same capture again
    writes.append(store.record_snapshot(snap("unknown-job", T0)))
    writes.append(store.record_snapshot(snap("j2", T0 + 5), [event("j2", id=taken.id)]))
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert results[:40] == [True] * 40
    assert results[40] is False
    assert isinstance(results[41], StoreError) and isinstance(results[42], StoreError)
    for jid in ("j1", "j2"):
        loaded = await store.load_job(jid)
        assert loaded is not None
        assert (loaded.snapshot_count, loaded.last_snapshot_ms) == (20, T0 + 190)
        assert loaded.missed_ticks == sum(n % 3 for n in range(20))
        created = [f.create_ms for f in await store.list_files(
            "acct-a", FileQuery(job_id=jid, start_ms=T0, end_ms=T0 + 1000, limit=100))]
        assert created == [T0 + 10 * n for n in range(20)]  # not the failed T0 + 5
        expected = [evs[0].id for f, evs, _ in good if f.job_id == jid]
        pending = ids(await store.pending_events(jid))
        assert pending == ([taken.id] if jid == "j1" else []) + expected
    assert (await store.get_files("j1", [T0 + 50]))[0].size == 12345  # the first one stays


async def test_files_round_trip_every_field(store: Store) -> None:
    await store.create_job(job("j1"))
    full = snap(
        "j1", T0, is_overlay=True, overwrite_key="o.jpg", sequence=None, stream_time_ms=2**40
    )
    full = replace(full, lag_ms=17, quality=Verdict.OK, skipped_frames=3)
    await store.record_snapshot(full)
    query = FileQuery(job_id="j1", start_ms=T0, end_ms=T0)
    assert await store.list_files("acct-a", query) == [full]


IMAGE = ImageOptions(format=ImageFormat.WEBP, quality=70, width=640, height=360,
                     quality_gate=False, latest_pointer=True)


async def test_image_options_round_trip_on_templates_and_jobs(store: Store) -> None:
    await store.create_template(template("t1", image=IMAGE))
    await store.create_template(template("t2"))
    assert (await store.get_template("acct-a", "t1")) == template("t1", image=IMAGE)
    assert (await store.get_template("acct-a", "t2")).image == ImageOptions()
    changed = template("t1", image=IMAGE.evolve(format=ImageFormat.PNG, quality=None))
    assert await store.update_template(changed)
    assert (await store.get_template("acct-a", "t1")).image == changed.image
    await store.create_job(job("j1", image=IMAGE))
    loaded = await store.load_job("j1")
    assert loaded is not None and loaded.image == IMAGE


async def test_connect_mode_round_trips_on_templates_and_jobs(store: Store) -> None:
    await store.create_template(template("t1", connect_mode=ConnectMode.PER_TICK))
    await store.create_template(template("t2"))
    assert (await store.get_template("acct-a", "t1")).connect_mode is ConnectMode.PER_TICK
    assert (await store.get_template("acct-a", "t2")).connect_mode is ConnectMode.AUTO
    assert await store.update_template(template("t1", connect_mode=ConnectMode.PERSISTENT))
    assert (await store.get_template("acct-a", "t1")).connect_mode is ConnectMode.PERSISTENT
    await store.create_job(job("j1", connect_mode=ConnectMode.PER_TICK))
    await store.create_job(job("j2"))
    loaded = await store.load_job("j1")
    assert loaded is not None and loaded.connect_mode is ConnectMode.PER_TICK
    other = await store.load_job("j2")
    assert other is not None and other.connect_mode is ConnectMode.AUTO


async def _seed_files(store: Store) -> list[int]:
    await store.create_job(job("j1"))
    await store.create_job(job("j2"))
    times = [T0 + n * 1000 for n in range(6)]
    for ms in times:
        await store.record_snapshot(snap("j1", ms))
    await store.record_snapshot(snap("j2", T0 + 2000))
    return times


async def test_list_files_window_order_and_limit(store: Store) -> None:
    times = await _seed_files(store)

    async def listed(**changes: Any) -> list[int]:
        values: dict[str, Any] = {"job_id": "j1", "start_ms": times[1], "end_ms": times[4]}
        query = FileQuery(**(values | changes))
        return [f.create_ms for f in await store.list_files("acct-a", query)]

    assert await listed() == times[1:5]  # both bounds inclusive
    assert await listed(limit=2) == times[1:3]
    assert await listed(descending=True, limit=3) == [times[4], times[3], times[2]]
    assert await listed(start_ms=times[1] + 1, end_ms=times[4] - 1) == times[2:4]
    assert await listed(start_ms=times[5] + 1, end_ms=times[5] + 9) == []


async def test_list_files_of_another_account_is_empty(store: Store) -> None:
    times = await _seed_files(store)
    query = FileQuery(job_id="j1", start_ms=times[0], end_ms=times[-1], limit=100)
    assert await store.list_files("acct-b", query) == []
    assert len(await store.list_files("acct-a", query)) == 6


async def test_get_and_delete_files(store: Store) -> None:
    times = await _seed_files(store)
    wanted = [times[3], times[0], T0 - 1]
    assert [f.create_ms for f in await store.get_files("j1", wanted)] == [times[0], times[3]]
    assert await store.delete_files("j1", [*wanted, times[0]]) == [times[0], times[3]]
    assert await store.delete_files("j1", wanted) == []
    assert await store.get_files("j1", wanted) == []
    assert await store.delete_files("j1", []) == []
    assert [f.job_id for f in await store.get_files("j2", [T0 + 2000])] == ["j2"]


# callback outbox -------------------------------------------------------------------------
async def test_due_heads_one_per_job_oldest_first_when_due(store: Store) -> None:
    a, b = event("j1", T0 + 2), event("j2", T0 + 1)
    head = event("j1", T0, next_attempt_ms=T0 + 500)  # j1's oldest event, retrying later
    await store.create_job(job("j1"), [a, head])
    await store.create_job(job("j2"), [b])
    assert await store.due_heads(T0 + 499, limit=10) == [b]  # a waits behind j1's head
    assert await store.due_heads(T0 + 500, limit=10) == [head, b]
    assert await store.due_heads(T0 + 500, limit=1) == [head]
    await store.record_attempt(attempt(head, T0 + 501), delivered=True, failed=False,
                               next_attempt_ms=0)
    assert await store.due_heads(T0 + 501, limit=10) == [b, a]


async def test_due_heads_take_the_accounts_in_turn(store: Store) -> None:
    # account B's five jobs have older events than account A's two: A still comes second
    b_events = [event(f"b{n}", T0 + n, account="acct-b") for n in range(5)]
    for e in b_events:
        await store.create_job(job(e.job_id, "acct-b"), [e])
    a_events = [event(f"a{n}", T0 + 100 + n) for n in range(2)]
    for e in a_events:
        await store.create_job(job(e.job_id), [e])
    assert await store.due_heads(T0 + 1000, limit=2) == [b_events[0], a_events[0]]
    assert await store.due_heads(T0 + 1000, limit=10) == [
        b_events[0], a_events[0], b_events[1], a_events[1], *b_events[2:]]


async def test_due_heads_take_an_accounts_receivers_in_turn(store: Store) -> None:
    slow = [event(f"s{n}", T0 + n, url="http://slow.test/cb") for n in range(4)]
    fast = event("f", T0 + 50, url="http://fast.test/cb")
    for e in [*slow, fast]:
        await store.create_job(job(e.job_id), [e])
    assert await store.due_heads(T0 + 1000, limit=2) == [slow[0], fast]


async def test_record_attempt_outcomes(store: Store) -> None:
    ok, retry, dead = event("j1", T0), event("j1", T0 + 1), event("j1", T0 + 2)
    await store.create_job(job("j1"), [ok, retry, dead])
    delivered: dict[str, Any] = {"delivered": True, "failed": False, "next_attempt_ms": 0}
    await store.record_attempt(attempt(ok, T0 + 10), **delivered)
    await store.record_attempt(
        attempt(retry, T0 + 11, "HTTP 500"), delivered=False, failed=False, next_attempt_ms=T0 + 99
    )
    await store.record_attempt(
        attempt(dead, T0 + 12, "gave up"), delivered=False, failed=True, next_attempt_ms=0
    )
    assert await store.due_heads(T0 + 98, limit=10) == []
    expected = replace(retry, attempts=1, next_attempt_ms=T0 + 99, last_error="HTTP 500")
    assert await store.due_heads(T0 + 99, limit=10) == [expected]
    events = {e.id: e for e in await store.get_events("j1", failed_only=False)}
    assert (events[ok.id].delivered_ms, events[ok.id].attempts) == (T0 + 10, 1)
    assert (events[dead.id].failed, events[dead.id].last_error) == (True, "gave up")
    assert await store.get_events("j1", failed_only=True) == [events[dead.id]]


async def test_record_attempt_of_an_unknown_event_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.record_attempt(
            attempt(event("j1"), T0), delivered=True, failed=False, next_attempt_ms=0
        )


async def test_record_attempt_names_what_the_job_still_has_to_deliver(store: Store) -> None:
    mine = [event("j1", T0 + n) for n in range(4)]
    await store.create_job(job("j1"), mine)
    await store.create_job(job("j2"), [event("j2", T0)])

    async def record(ev: OutboxEvent, *, delivered: bool, failed: bool = False) -> list[str]:
        return await store.record_attempt(attempt(ev, T0 + 50), delivered=delivered,
                                          failed=failed, next_attempt_ms=T0 + 60)

    left = ids(mine)
    assert await record(mine[0], delivered=True) == left[1:]  # another job's are not counted
    assert await record(mine[1], delivered=False, failed=True) == left[2:]  # given up
    assert await record(mine[2], delivered=False) == left[2:]  # to retry: still pending
    many = [event("j3", T0 + n) for n in range(PENDING_LIMIT + 5)]
    await store.create_job(job("j3"), many)
    assert await record(many[0], delivered=True) == [e.id for e in many[1:PENDING_LIMIT + 2]]


async def test_concurrent_attempts_are_each_recorded_and_fail_alone(store: Store) -> None:
    events = [event("j1", T0 + n) for n in range(30)]
    await store.create_job(job("j1"), events)
    writes = [
        store.record_attempt(attempt(ev, T0 + 100 + n, f"try {n}"), delivered=n % 2 == 0,
                             failed=n % 5 == 0, next_attempt_ms=T0 + 1000 + n)
        for n, ev in enumerate(events)
    ]
    writes.insert(7, store.record_attempt(attempt(event("j1"), T0), delivered=True,
                                          failed=False, next_attempt_ms=0))  # unknown event
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert isinstance(results.pop(7), StoreError)
    # the last write is in the last group: it sees every other write done
    still = [ev.id for n, ev in enumerate(events) if n % 2 and n % 5]
    assert results[-1] == still
    stored = {e.id: e for e in await store.get_events("j1", failed_only=False)}
    for n, ev in enumerate(events):
        got = stored[ev.id]
        assert got.attempts == 1 and got.last_error == f"try {n}"
        assert got.delivered_ms == (T0 + 100 + n if n % 2 == 0 else None)
        assert (got.failed, got.next_attempt_ms) == (n % 5 == 0, T0 + 1000 + n)
    log = await store.delivery_log("j1", 100)
    assert sorted(a.at_ms for a in log) == [T0 + 100 + n for n in range(30)]


async def test_sql_store_commits_concurrent_records_together(tmp_path: Path) -> None:
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        await sql.create_job(job("j1"))
        before = sql.group_transactions
        results = await asyncio.gather(
            *(sql.record_snapshot(snap("j1", T0 + n), [event("j1", T0 + n)]) for n in range(50)))
        assert results == [True] * 50
        # one transaction per group, not one per capture
        assert 1 <= sql.group_transactions - before <= 5
        loaded = await sql.load_job("j1")
        assert loaded is not None and loaded.snapshot_count == 50
    finally:
        await sql.close()


async def test_sql_store_writes_that_come_soon_after_a_group_join_the_next_one(
        tmp_path: Path) -> None:
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}", group_gap_s=1.0)
    try:
        await sql.create_job(job("j1"), [event("j1", T0 + n) for n in range(5)])
        before = sql.group_transactions
        assert await sql.record_snapshot(snap("j1", T0), [])  # the writer was idle: alone
        assert sql.group_transactions - before == 1
        # right after it, one at a time as the loop hands them in: they wait for the gap
        # and share one transaction
        writes = []
        for n in range(1, 5):
            writes.append(asyncio.ensure_future(sql.record_snapshot(snap("j1", T0 + n), [])))
            await asyncio.sleep(0)
        assert await asyncio.gather(*writes) == [True] * 4
        assert sql.group_transactions - before == 2
    finally:
        await sql.close()


async def test_sql_store_an_attempt_that_may_wait_rides_with_the_next_record(
        tmp_path: Path) -> None:
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
                               group_gap_s=0.0, group_company_s=30.0)
    try:
        e1 = event("j1", T0)
        await sql.create_job(job("j1"), [e1])
        assert await sql.record_snapshot(snap("j1", T0), [])  # records are being written
        before = sql.group_transactions
        delivered: dict[str, Any] = {"delivered": True, "failed": False, "next_attempt_ms": 0}
        waiting = asyncio.ensure_future(
            sql.record_attempt(attempt(e1, T0 + 1), may_wait=True, **delivered))
        await asyncio.sleep(0.3)
        # held back: nothing to share with yet
        assert not waiting.done() and sql.group_transactions == before
        assert await sql.record_snapshot(snap("j1", T0 + 2), [])
        assert await waiting == []
        assert sql.group_transactions - before == 1  # the record and the attempt: one
        assert [a.event_id for a in await sql.delivery_log("j1", limit=5)] == [e1.id]
        # commit_soon lets a held-back attempt go alone
        e2 = event("j2", T0 + 3)
        await sql.create_job(job("j2"), [e2])
        waiting = asyncio.ensure_future(
            sql.record_attempt(attempt(e2, T0 + 4), may_wait=True, **delivered))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        sql.commit_soon()
        assert await asyncio.wait_for(waiting, 5) == []
    finally:
        await sql.close()


async def test_sql_store_an_attempt_that_may_wait_commits_alone_after_the_wait(
        tmp_path: Path) -> None:
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
                               group_company_s=0.2)
    try:
        e1, e2 = event("j1", T0), event("j1", T0 + 1)
        await sql.create_job(job("j1"), [e1, e2])
        assert await sql.record_snapshot(snap("j1", T0), [])
        pending = await asyncio.wait_for(sql.record_attempt(
            attempt(e1, T0 + 1), delivered=True, failed=False, next_attempt_ms=0,
            may_wait=True), 5)
        assert pending == [e2.id]
        assert [e.id for e in await sql.pending_events("j1")] == [e2.id]
    finally:
        await sql.close()


async def test_sql_store_that_writes_no_records_does_not_hold_attempts_back(
        tmp_path: Path) -> None:
    # an API node whose capture (and file records) run in other processes: nothing would
    # come to share the transaction with, so waiting would only hold the delivery's slot
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}",
                               group_company_s=3600)
    try:
        events = [event("j1", T0 + n) for n in range(3)]
        await sql.create_job(job("j1"), events)
        for n, ev in enumerate(events):
            pending = await asyncio.wait_for(sql.record_attempt(
                attempt(ev, T0 + 10 + n), delivered=True, failed=False, next_attempt_ms=0,
                may_wait=True), 30)
            assert pending == [e.id for e in events[n + 1:]]
    finally:
        await sql.close()


async def test_delivery_log_newest_first(store: Store) -> None:
    e1, e2, other = event("j1"), event("j1"), event("j2")
    await store.create_job(job("j1"), [e1, e2])
    await store.create_job(job("j2"), [other])
    retry: dict[str, Any] = {"delivered": False, "failed": False, "next_attempt_ms": T0}
    for ev, at in ((e1, T0 + 1), (e2, T0 + 3), (e1, T0 + 2), (other, T0 + 9), (e2, T0 + 3)):
        await store.record_attempt(attempt(ev, at, error=f"{ev.id}@{at}"), **retry)
    log = await store.delivery_log("j1", limit=10)
    assert [(a.event_id, a.at_ms) for a in log] == [
        (e2.id, T0 + 3), (e2.id, T0 + 3), (e1.id, T0 + 2), (e1.id, T0 + 1)
    ]  # fmt: skip
    assert log[0] == attempt(e2, T0 + 3, error=f"{e2.id}@{T0 + 3}")
    assert len(await store.delivery_log("j1", limit=2)) == 2
    assert [a.event_id for a in await store.delivery_log("j2", limit=10)] == [other.id]


async def test_pending_events_per_job_in_order(store: Store) -> None:
    same_ms = [event("j1", T0) for _ in range(5)]  # ties keep insertion order
    future = event("j1", T0 - 1, next_attempt_ms=T0 * 2)
    await store.create_job(job("j1"), [*same_ms, future])
    await store.create_job(job("j2"), [event("j2", T0 - 5)])
    await store.record_attempt(
        attempt(same_ms[2], T0), delivered=True, failed=False, next_attempt_ms=0
    )
    pending = await store.pending_events("j1")
    assert ids(pending) == ids([future, *same_ms[:2], *same_ms[3:]])


async def test_an_event_is_claimed_by_one_dispatcher_until_its_claim_runs_out(
        store: Store) -> None:
    first, done = event("j1", T0), event("j1", T0 + 1)
    await store.create_job(job("j1"), [first, done])
    claim = store.claim_event  # type: ignore[attr-defined]
    assert await claim(first.id, "node-a", T0, T0 + 100)
    assert not await claim(first.id, "node-b", T0 + 50, T0 + 150)  # a's claim holds
    assert await claim(first.id, "node-a", T0 + 60, T0 + 160)  # a retries: extends its own
    assert not await claim(first.id, "node-b", T0 + 160, T0 + 260)  # to the ms
    assert await claim(first.id, "node-b", T0 + 161, T0 + 261)  # ran out: b may take it
    await store.record_attempt(attempt(done, T0), delivered=True, failed=False, next_attempt_ms=0)
    assert not await claim(done.id, "node-a", T0, T0 + 100)  # delivered: nothing to claim
    assert not await claim("no-such-event", "node-a", T0, T0 + 100)


async def test_requeue_failed_events(store: Store) -> None:
    dead, alive = event("j1", T0), event("j1", T0 + 1)
    await store.create_job(job("j1"), [dead, alive])
    await store.record_attempt(
        attempt(dead, T0 + 5), delivered=False, failed=True, next_attempt_ms=0
    )
    assert await store.requeue_events("j1", T0 + 50) == 1
    assert await store.requeue_events("j2", T0 + 50) == 0
    assert await store.get_events("j1", failed_only=True) == []
    due = await store.due_heads(T0 + 50, limit=10)
    assert ids(due) == [dead.id]  # the requeued head goes first; alive waits behind it
    assert (due[0].attempts, due[0].failed, due[0].next_attempt_ms) == (0, False, T0 + 50)
    assert await store.requeue_events("j1", T0 + 60) == 0


async def test_prune_events_deletes_only_what_was_done_with_before_the_cutoff(
        store: Store) -> None:
    cutoff = T0 + 500
    delivered_old, delivered_new = event("j1", T0), event("j1", T0 + 1)
    failed_old, failed_new = event("j1", T0 + 2), event("j1", cutoff)
    retrying_old, other_job = event("j1", T0 + 3), event("j2", T0)
    await store.create_job(job("j1"), [delivered_old, delivered_new, failed_old, failed_new,
                                       retrying_old])
    await store.create_job(job("j2"), [other_job])
    done: dict[str, Any] = {"delivered": True, "failed": False, "next_attempt_ms": 0}
    gave_up: dict[str, Any] = {"delivered": False, "failed": True, "next_attempt_ms": 0}
    await store.record_attempt(attempt(delivered_old, cutoff - 1), **done)
    await store.record_attempt(attempt(delivered_new, cutoff), **done)  # not *before* it
    await store.record_attempt(attempt(failed_old, cutoff + 100), **gave_up)  # created before
    await store.record_attempt(attempt(failed_new, cutoff + 100), **gave_up)
    await store.record_attempt(attempt(retrying_old, T0 + 4), delivered=False, failed=False,
                               next_attempt_ms=T0 * 2)  # old but still being delivered
    await store.record_attempt(attempt(other_job, T0 + 5), **done)

    assert await store.prune_events(cutoff, limit=2) == 2  # a batch at most
    assert await store.prune_events(cutoff, limit=10) == 1
    assert await store.prune_events(cutoff, limit=10) == 0
    left = {e.id for e in await store.get_events("j1", failed_only=False)}
    assert left == {delivered_new.id, failed_new.id, retrying_old.id}
    assert await store.get_events("j2", failed_only=False) == []
    logged = {a.event_id for a in await store.delivery_log("j1", 100)}
    assert logged == left  # the attempts of deleted events went with them
    assert await store.delivery_log("j2", 100) == []
    assert ids(await store.pending_events("j1")) == [retrying_old.id]
    assert await store.requeue_events("j1", cutoff) == 1  # the failed one left can be resent


async def test_a_locked_database_fails_a_group_once_not_write_by_write(tmp_path: Path) -> None:
    # Splitting a failed group finds a write that broke a constraint; when the database
    # itself is unavailable every write would wait out busy_timeout again, one after another.
    path = tmp_path / "store.db"
    sql = await open_sql_store(f"sqlite+aiosqlite:///{path}")
    holder = sqlite3.connect(path)
    try:
        await sql.create_job(job("j1"))
        before = sql.group_transactions
        holder.execute("BEGIN EXCLUSIVE")  # another process holding the database
        results = await asyncio.gather(
            *(sql.record_snapshot(snap("j1", T0 + n)) for n in range(10)),
            return_exceptions=True)
        assert all(isinstance(r, StoreError) for r in results), results
        # one group (at most two), not 10 more transactions
        assert 1 <= sql.group_transactions - before <= 2
        holder.rollback()
        assert await sql.record_snapshot(snap("j1", T0))  # and it writes again at once
    finally:
        holder.close()
        await sql.close()


async def test_sqlite_transactions_run_in_named_worker_threads(tmp_path: Path) -> None:
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    try:
        assert sql.sync_engine is not None
        await sql.create_job(job("j1"))
        assert SQLITE_THREAD_NAME in thread_names()  # top -H and the benchmarks tell them apart
        assert await sql.load_job("j1") == job("j1")
    finally:
        await sql.close()
    assert SQLITE_THREAD_NAME not in thread_names()  # close() ended them


def thread_names() -> set[str]:
    """The OS names of this process's threads (Linux); a thread may end while they are listed."""
    names = set()
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            names.add((task / "comm").read_text().strip())
    return names


# SQLite's group commits on the sqlite3 driver (store/direct.py) ---------------------------
GROUP_ROWS = {
    "files": "SELECT job_id, account, create_ms, object_key, is_overlay, overwrite_key, "
             "sequence, width, height, size, stream_time_ms, lag_ms, quality, skipped_frames "
             "FROM files",
    "events": "SELECT id, job_id, type, data, created_ms, attempts, next_attempt_ms, "
              "delivered_ms, failed, last_error FROM outbox_events",
    "attempts": "SELECT event_id, job_id, at_ms, status_code, latency_ms, error "
                "FROM delivery_attempts",
    "jobs": "SELECT id, snapshot_count, last_snapshot_ms, missed_ticks FROM jobs",
}


async def group_commit_story(sql: SqlStore) -> list[Any]:
    """Records and attempts in shared groups, with a duplicate capture, missed ticks, every
    attempt outcome and one attempt of an unknown event; what each caller got back."""
    first = [event("j1", T0 + n, id=f"e1-{n}") for n in range(3)]
    await sql.create_job(job("j1"), first)
    await sql.create_job(job("j2"))
    delivered: dict[str, Any] = {"delivered": True, "failed": False, "next_attempt_ms": 0}
    writes = [
        sql.record_snapshot(snap("j1", T0 + 10, quality=Verdict.OK, lag_ms=40),
                            [event("j1", T0 + 10, id="e1-10")], missed_ticks=2),
        sql.record_snapshot(snap("j1", T0 + 10), [event("j1", T0 + 10, id="e1-dup")]),
        sql.record_snapshot(snap("j2", T0 + 5, is_overlay=True, sequence=None), []),
        sql.record_attempt(attempt(first[0], T0 + 20), **delivered),
        sql.record_attempt(attempt(first[1], T0 + 21, "HTTP 500"), delivered=False,
                           failed=False, next_attempt_ms=T0 + 90),
        sql.record_attempt(attempt(first[2], T0 + 22, "gave up"), delivered=False,
                           failed=True, next_attempt_ms=0, may_wait=True),
        sql.record_attempt(attempt(event("j1", id="nobody"), T0), **delivered),
    ]
    results = await asyncio.gather(*writes, return_exceptions=True)
    later = await asyncio.gather(
        sql.record_snapshot(snap("j2", T0 + 1), [event("j2", T0 + 1, id="e2-1")]),  # older
        sql.record_snapshot(snap("j1", T0 + 10), []))  # recorded before
    whole = await asyncio.gather(  # one group that commits whole
        sql.record_attempt(attempt(event("j1", id="e1-10"), T0 + 30), **delivered),
        sql.record_attempt(attempt(first[1], T0 + 31, "gave up"), delivered=False,
                           failed=True, next_attempt_ms=0, may_wait=True),
        sql.record_snapshot(snap("j1", T0 + 40), [event("j1", T0 + 40, id="e1-40")]))
    return [type(r).__name__ if isinstance(r, BaseException) else r
            for r in (*results, *later, *whole)]


async def test_sqlite_group_commits_on_the_driver_match_sqlalchemy(tmp_path: Path) -> None:
    answers, contents = {}, {}
    for direct in (True, False):
        path = tmp_path / f"direct-{direct}.db"
        sql = await open_sql_store(f"sqlite:///{path}", direct_writes=direct)
        try:
            answers[direct] = await group_commit_story(sql)
            assert sql.group_transactions >= 2
        finally:
            await sql.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            contents[direct] = {name: sorted(db.execute(query).fetchall())
                                for name, query in GROUP_ROWS.items()}
    assert answers[True] == answers[False]
    # the unknown event split the group: each write went alone, in order
    assert answers[True] == [True, False, True, ["e1-1", "e1-2", "e1-10"],
                             ["e1-1", "e1-2", "e1-10"], ["e1-1", "e1-10"], "StoreError",
                             True, False, [], [], True]
    assert contents[True] == contents[False]
    jobs_rows = dict((row[0], row[1:]) for row in contents[True]["jobs"])
    assert jobs_rows == {"j1": (2, T0 + 40, 2), "j2": (2, T0 + 5, 0)}
    assert len(contents[True]["files"]) == 4 and len(contents[True]["attempts"]) == 5


async def test_sqlite_group_commit_rolls_back_a_failed_group_whole(tmp_path: Path) -> None:
    # a write that breaks a constraint: its group rolls back, then each write goes alone
    path = tmp_path / "store.db"
    sql = await open_sql_store(f"sqlite:///{path}", group_gap_s=0.5)
    try:
        await sql.create_job(job("j1"))
        results = await asyncio.gather(
            sql.record_snapshot(snap("j1", T0), [event("j1", T0, id="once")]),
            sql.record_snapshot(snap("j1", T0 + 1), [event("j1", T0 + 1, id="once")]),
            return_exceptions=True)
        assert results[0] is True and isinstance(results[1], StoreError)
        loaded = await sql.load_job("j1")
        assert loaded is not None and loaded.snapshot_count == 1
        assert [f.create_ms for f in await sql.get_files("j1", [T0, T0 + 1])] == [T0]
    finally:
        await sql.close()
