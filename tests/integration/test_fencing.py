"""Shard fencing in the SQL store, on SQLite and on a real PostgreSQL (docs/cluster.md).

A shard instance takes an epoch; a fenced view of the store writes only while that epoch is
the newest. Once a newer instance takes one, every write of the old view is refused with
``FencedOut``, writes nothing, and tells its owner.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from tests.contract.test_store_contract import event, job, snap

from livesnap.errors import FencedOut
from livesnap.jobs.models import JobPatch, JobStatus, LastError
from livesnap.store.sql import Fence, SqlStore, open_sql_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fence.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = await open_sql_store(url)
    yield opened
    await opened.close()


async def test_epochs_only_grow_per_shard(store: SqlStore) -> None:
    assert await store.current_epoch("shard-0") is None
    assert [await store.take_epoch("shard-0", 1000 + i) for i in range(3)] == [1, 2, 3]
    assert await store.take_epoch("shard-1", 5000) == 1
    assert await store.shard_epochs() == {"shard-0": (3, 1002), "shard-1": (1, 5000)}


async def test_a_replaced_instance_can_write_nothing(store: SqlStore) -> None:
    await store.create_job(job("j1", status=JobStatus.STARTED))
    old_epoch = await store.take_epoch("shard-0", 1)
    told: list[str] = []
    old = store.fenced(Fence("shard-0", old_epoch), on_fenced=lambda: told.append("fenced"))
    assert await old.record_snapshot(snap("j1", 1_000), [event("j1")])
    assert await old.allocate_sequence("j1") == 1

    new_epoch = await store.take_epoch("shard-0", 2)  # the restarted instance
    new = store.fenced(Fence("shard-0", new_epoch))
    with pytest.raises(FencedOut):
        await old.record_snapshot(snap("j1", 2_000), [event("j1")])
    with pytest.raises(FencedOut):
        await old.update_job("j1", JobPatch(last_error=LastError.stream("stale")), now_ms=3)
    with pytest.raises(FencedOut):
        await old.allocate_sequence("j1")
    assert told == ["fenced"] * 3
    # nothing of the refused writes is there; reads still work through the old view
    current = await old.load_job("j1")
    assert current is not None and current.last_error == "" and current.snapshot_count == 1
    assert len(await store.pending_events("j1")) == 1

    assert await new.record_snapshot(snap("j1", 2_000))
    assert await new.allocate_sequence("j1") == 2
    rows = await _writers(store)
    assert rows == [(1_000, f"shard-0:{old_epoch}"), (2_000, f"shard-0:{new_epoch}")]


async def test_an_unfenced_store_is_not_affected_by_epochs(store: SqlStore) -> None:
    await store.create_job(job("j2"))
    await store.take_epoch("shard-0", 1)
    await store.take_epoch("shard-0", 2)
    assert await store.record_snapshot(snap("j2", 1_000))
    assert await _writers(store) == [(1_000, None)]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
async def test_no_old_write_commits_after_a_newer_epoch_is_taken(store: SqlStore) -> None:
    """Many concurrent old-epoch writes racing one takeover: every write that committed
    committed before the takeover (FOR SHARE on the epoch row orders them)."""
    await store.create_job(job("j3", status=JobStatus.STARTED))
    epoch = await store.take_epoch("shard-0", 1)
    old = store.fenced(Fence("shard-0", epoch))

    async def write(i: int) -> bool:
        try:
            return await old.record_snapshot(snap("j3", 10_000 + i))
        except FencedOut:
            return False

    writes = [asyncio.create_task(write(i)) for i in range(40)]
    await asyncio.sleep(0.01)
    await store.take_epoch("shard-0", 2)
    results = await asyncio.gather(*writes)
    stored = {ms for ms, _ in await _writers(store)}
    assert stored == {10_000 + i for i, ok in enumerate(results) if ok}
    with pytest.raises(FencedOut):
        await old.record_snapshot(snap("j3", 30_000))


async def _writers(store: SqlStore) -> list[tuple[int, str | None]]:
    from sqlalchemy import select

    from livesnap.store.tables import files

    async with store.engine.connect() as conn:
        found = await conn.execute(select(files.c.create_ms, files.c.writer).order_by(
            files.c.create_ms))
    return [(int(row[0]), row[1]) for row in found]
