"""``FencedSink``: the overwrite object is written only over the version this writer last saw,
and a writer that must read the version again confirms it still owns its shard first.

A dict stands in for the bucket (its ``If-Match`` semantics are checked against a real S3
server in tests/contract/test_objectstore_sink.py and tests/integration/test_fenced_objects.py).
"""

from __future__ import annotations

import itertools

import pytest

from livesnap.errors import (
    FencedOut,
    OutputError,
    OutputFenced,
    OutputUnavailable,
    StoreError,
    VersionConflict,
)
from livesnap.outputs.base import ConditionalSink, ObjectMeta
from livesnap.outputs.fenced import MAX_ROUNDS, FencedSink

OVER = ObjectMeta(rewritten=True)
SEQ = ObjectMeta()


class Bucket:
    """Objects with versions, and a log of the requests made (``head``, ``put``, ``put_over``)."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, str]] = {}
        self.calls: list[str] = []
        self._versions = itertools.count(1)
        self.meddle: str | None = None  # a key another program rewrites before each write

    def write(self, key: str, data: bytes) -> str:
        version = f'"v{next(self._versions)}"'
        self.objects[key] = (data, version)
        return version

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        self.calls.append("put")
        self.write(key, data)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def version(self, key: str) -> str | None:
        self.calls.append("head")
        found = self.objects.get(key)
        return None if found is None else found[1]

    async def put_over(self, key: str, data: bytes, *, meta: ObjectMeta,
                       version: str | None) -> str:
        self.calls.append("put_over")
        if self.meddle == key:
            self.write(key, b"someone else")
        current = self.objects.get(key)
        if (current[1] if current else None) != version:
            raise VersionConflict(f"{key} changed")
        return self.write(key, data)


class Owner:
    """The shard's fence: confirms while ``current``, else ``FencedOut``."""

    def __init__(self) -> None:
        self.current = True
        self.checks = 0
        self.error: Exception | None = None

    async def __call__(self) -> None:
        self.checks += 1
        if self.error is not None:
            raise self.error
        if not self.current:
            raise FencedOut("shard-0 epoch 1 was replaced (now 2)")


def test_the_object_store_sink_is_a_conditional_sink() -> None:
    from livesnap.outputs.objectstore import ObjectStoreSink
    assert issubclass(ObjectStoreSink, ConditionalSink)


async def test_the_first_write_reads_and_confirms_then_each_write_names_the_last_version() -> None:
    bucket, owner = Bucket(), Owner()
    sink = FencedSink(bucket, owner)
    for n in range(3):
        await sink.put("snap/job.jpg", b"picture %d" % n, meta=OVER)
    assert bucket.objects["snap/job.jpg"][0] == b"picture 2"
    assert bucket.calls == ["head", "put_over", "put_over", "put_over"]
    assert owner.checks == 1


async def test_objects_written_once_per_capture_are_written_plainly() -> None:
    bucket, owner = Bucket(), Owner()
    await FencedSink(bucket, owner).put("snap/job/1.jpg", b"x", meta=SEQ)
    assert bucket.calls == ["put"] and owner.checks == 0


async def test_a_replaced_writer_never_writes_over_its_successor() -> None:
    bucket = Bucket()
    old_owner, new_owner = Owner(), Owner()
    old, new = FencedSink(bucket, old_owner), FencedSink(bucket, new_owner)
    await old.put("k.jpg", b"t1 by old", meta=OVER)
    old_owner.current = False  # the takeover commits
    await new.put("k.jpg", b"t3 by new", meta=OVER)
    with pytest.raises(OutputFenced, match="replaced") as info:
        await old.put("k.jpg", b"t2 by old, late", meta=OVER)
    assert not info.value.retryable
    assert bucket.objects["k.jpg"][0] == b"t3 by new"
    with pytest.raises(OutputFenced):  # and again: it never learns the new version
        await old.put("k.jpg", b"t4 by old", meta=OVER)
    assert bucket.objects["k.jpg"][0] == b"t3 by new"


async def test_a_writer_frozen_after_confirming_is_refused_by_the_store() -> None:
    """The old writer read the version and confirmed before the takeover, then stalled; the
    new owner wrote meanwhile: the old write names a version that is gone."""
    bucket = Bucket()
    old_owner, new_owner = Owner(), Owner()
    new = FencedSink(bucket, new_owner)

    async def confirm_then_stall() -> None:
        await old_owner()
        old_owner.current = False
        await new.put("k.jpg", b"t3 by new", meta=OVER)  # happens while the old one stalls

    old = FencedSink(bucket, confirm_then_stall)
    bucket.write("k.jpg", b"t0")
    with pytest.raises(OutputFenced):
        await old.put("k.jpg", b"t2 by old", meta=OVER)
    assert bucket.objects["k.jpg"][0] == b"t3 by new"


async def test_the_owner_writes_again_over_a_change_made_by_someone_else() -> None:
    bucket, owner = Bucket(), Owner()
    sink = FencedSink(bucket, owner)
    await sink.put("k.jpg", b"t1", meta=OVER)
    bucket.write("k.jpg", b"edited by hand")
    await sink.put("k.jpg", b"t2", meta=OVER)
    assert bucket.objects["k.jpg"][0] == b"t2"
    assert bucket.calls == ["head", "put_over", "put_over", "head", "put_over"]
    assert owner.checks == 2


async def test_a_key_that_keeps_changing_is_given_up_with_a_clear_error() -> None:
    bucket, owner = Bucket(), Owner()
    bucket.meddle = "k.jpg"
    with pytest.raises(OutputError, match=f"another writer in each of {MAX_ROUNDS}") as info:
        await FencedSink(bucket, owner).put("k.jpg", b"t1", meta=OVER)
    assert not isinstance(info.value, OutputFenced)
    assert bucket.calls.count("put_over") == MAX_ROUNDS


async def test_a_database_that_cannot_confirm_makes_the_write_retryable() -> None:
    bucket, owner = Bucket(), Owner()
    owner.error = StoreError("confirm_owner: the database failed (OperationalError)")
    with pytest.raises(OutputUnavailable, match="database failed") as info:
        await FencedSink(bucket, owner).put("k.jpg", b"t1", meta=OVER)
    assert info.value.retryable and "k.jpg" not in bucket.objects
    owner.error = None
    await FencedSink(bucket, owner).put("k.jpg", b"t1", meta=OVER)
    assert bucket.objects["k.jpg"][0] == b"t1"
