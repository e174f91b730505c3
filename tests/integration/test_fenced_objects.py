"""A replaced shard instance's late captures against a real S3 server (SeaweedFS) and the real
fence in the SQL store (SQLite and PostgreSQL), through the storage router and upload queue a
cluster shard uses (``storage_router(confirm_owner=...)``).

The old instance stalls with a capture on its way (a frozen node); a new instance takes the
shard over and stores a newer capture. When the old one goes on, its overwrite object is
refused (the overwrite object never goes back in time) and the sequence object it had already
stored is removed (no object without a record); its job hears the capture was lost.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tests.support.seaweed import BUCKET, SeaweedServer

from livesnap.config import StorageCredential
from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta, PendingObject, Upload
from livesnap.outputs.objectstore import ObjectStoreSink
from livesnap.outputs.router import StorageRouter
from livesnap.store.sql import Fence, SqlStore, open_sql_store

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'fence.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = await open_sql_store(url)
    yield opened
    await opened.close()


class Instance:
    """One shard instance: its fenced store view and its own router (spool) to the bucket."""

    def __init__(self, store: SqlStore, epoch: int, seaweed: SeaweedServer, root: Path,
                 confirm: Callable[[SqlStore], Awaitable[None]] | None = None) -> None:
        self.told: list[str] = []
        self.view = store.fenced(Fence("shard-0", epoch), on_fenced=lambda: self.told.append(
            "fenced"))
        credential = StorageCredential(**seaweed.credential(accounts=("acct-a",)))
        view = self.view
        self.router = StorageRouter(
            root=root / "storage", spool_dir=root / "spool", credentials=[credential],
            confirm_owner=(lambda: confirm(view)) if confirm else view.confirm_owner)
        self.route = self.router.route("acct-a", "s3", seaweed.endpoint, BUCKET)

    async def store_capture(self, prefix: str, name: str) -> tuple[bool, str]:
        """Upload one capture (a sequence object, then the overwrite object); (stored, why)."""
        done: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()

        async def stored() -> None:
            done.set_result((True, ""))

        async def trouble(message: str, lost: bool) -> None:
            if lost and not done.done():
                done.set_result((False, message))

        await self.route.uploads.submit(Upload(
            job_id="job-1", data=name.encode(), on_stored=stored, on_trouble=trouble,
            objects=(PendingObject(key=f"{prefix}/seq/{name}.jpg", meta=ObjectMeta()),
                     PendingObject(key=f"{prefix}/over.jpg", meta=ObjectMeta(rewritten=True)))))
        return await asyncio.wait_for(done, 20)

    async def close(self) -> None:
        await self.router.close(5)


async def read(sink: ObjectStoreSink, key: str) -> bytes | None:
    try:
        return (await sink.read(key))[0]
    except OutputError:
        return None


async def test_a_stalled_old_instance_cannot_take_the_overwrite_object_back(
    store: SqlStore, seaweed: SeaweedServer, tmp_path: Path
) -> None:
    prefix = f"fenced/{uuid.uuid4().hex[:12]}"
    old = Instance(store, await store.take_epoch("shard-0", 1), seaweed, tmp_path / "old")
    assert await old.store_capture(prefix, "t1") == (True, "")
    # the old instance stalls here with capture t2 in hand; a new one takes the shard over
    new = Instance(store, await store.take_epoch("shard-0", 2), seaweed, tmp_path / "new")
    assert await new.store_capture(prefix, "t3") == (True, "")
    stored, why = await old.store_capture(prefix, "t2")  # it goes on
    sink = old.route.sink
    assert isinstance(sink, ObjectStoreSink)
    assert not stored and "was replaced" in why, why
    assert await read(sink, f"{prefix}/over.jpg") == b"t3"
    assert await read(sink, f"{prefix}/seq/t2.jpg") is None  # removed: no record owns it
    assert await read(sink, f"{prefix}/seq/t3.jpg") == b"t3"
    assert await read(sink, f"{prefix}/seq/t1.jpg") == b"t1"
    assert old.told == ["fenced"]
    assert await new.store_capture(prefix, "t4") == (True, "")  # the new one goes on
    assert await read(sink, f"{prefix}/over.jpg") == b"t4"
    for instance in (old, new):
        await instance.close()


async def test_an_old_instance_that_stalls_right_after_confirming_is_refused_by_the_store(
    store: SqlStore, seaweed: SeaweedServer, tmp_path: Path
) -> None:
    """The old instance has read the object's version and confirmed its epoch, then stalls
    before its write; the takeover and the new instance's write happen in that gap."""
    prefix = f"fenced/{uuid.uuid4().hex[:12]}"
    instances: list[Instance] = []

    async def confirm_then_stall(view: SqlStore) -> None:
        await view.confirm_owner()
        if len(instances) == 1:  # the old one's first confirmation: the takeover happens now
            new = Instance(store, await store.take_epoch("shard-0", 2), seaweed,
                           tmp_path / "new")
            instances.append(new)
            assert await new.store_capture(prefix, "t3") == (True, "")

    old = Instance(store, await store.take_epoch("shard-0", 1), seaweed, tmp_path / "old",
                   confirm=confirm_then_stall)
    instances.append(old)
    stored, why = await old.store_capture(prefix, "t2")
    assert not stored and "was replaced" in why, why
    sink = old.route.sink
    assert isinstance(sink, ObjectStoreSink)
    assert await read(sink, f"{prefix}/over.jpg") == b"t3"
    assert await read(sink, f"{prefix}/seq/t2.jpg") is None
    for instance in instances:
        await instance.close()
