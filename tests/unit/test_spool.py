"""The upload queue and spool over a scripted sink: order, outages, limits, drop counting."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import pytest

from livesnap.errors import OutputError, OutputUnavailable
from livesnap.outputs.base import ObjectMeta, PendingObject, Upload
from livesnap.outputs.spool import Spool, SpoolLimits, TargetUploader

SIZE = 1000
FAST = {"retry_base_s": 0.01, "retry_max_s": 0.05}


class ScriptedSink:
    """Stores objects in a dict; ``error`` fails every put, ``fail[key]`` fails one key."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, ObjectMeta]] = {}
        self.puts: list[str] = []
        self.error: OutputError | None = None
        self.fail: dict[str, list[OutputError]] = defaultdict(list)
        self.gates: dict[str, asyncio.Event] = {}

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        if key in self.gates:
            await self.gates[key].wait()
        if self.fail[key]:
            raise self.fail[key].pop(0)
        if self.error is not None:
            raise self.error
        self.objects[key] = (data, meta)
        self.puts.append(key)

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)


class Jobs:
    """Makes uploads and records what the uploader calls back, in order."""

    def __init__(self, sink: ScriptedSink) -> None:
        self.sink = sink
        self.stored: list[tuple[str, int]] = []
        self.trouble: list[tuple[str, int, str, bool]] = []
        self.missing_at_record: list[str] = []

    def upload(self, job: str, n: int, *, overwrite: bool = True, note: str = "") -> Upload:
        keys = [f"{job}/{n}.jpg"] + ([f"{job}.jpg"] if overwrite else [])
        objects = tuple(PendingObject(key=k, meta=ObjectMeta()) for k in keys)

        async def on_stored() -> None:
            # the record is written only once every object is in the store
            self.missing_at_record += [k for k in keys if k not in self.sink.objects]
            self.stored.append((job, n))

        async def on_trouble(message: str, lost: bool) -> None:
            self.trouble.append((job, n, message, lost))

        return Upload(job_id=job, data=bytes([n % 256]) * SIZE, objects=objects,
                      on_stored=on_stored, on_trouble=on_trouble, note=note)

    def stored_of(self, job: str) -> list[int]:
        return [n for j, n in self.stored if j == job]

    def lost(self) -> list[tuple[str, int]]:
        return [(j, n) for j, n, _, lost in self.trouble if lost]


async def settle(predicate, limit_s: float = 3.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def make(tmp_path, **limits):
    sink = ScriptedSink()
    spool = Spool(tmp_path / "spool", SpoolLimits(**{**FAST, **limits}))
    spool.take_leftovers()
    return sink, spool, TargetUploader(sink, spool=spool, name="t"), Jobs(sink)


def recorded_after(upload: Upload, record: asyncio.Event) -> Upload:
    """``upload`` whose record waits for ``record`` (a busy database)."""

    async def slow_record() -> None:
        await record.wait()
        await upload.on_stored()

    return Upload(job_id=upload.job_id, data=upload.data, objects=upload.objects,
                  on_stored=slow_record, on_trouble=upload.on_trouble)


def spool_files(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.directory.iterdir())


async def test_uploads_in_order_and_records_only_stored_captures(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path)
    for n in range(1, 6):
        for job in ("a", "b"):
            await uploader.submit(jobs.upload(job, n))
    await settle(lambda: len(jobs.stored) == 10, what="ten records")
    assert jobs.stored_of("a") == [1, 2, 3, 4, 5] and jobs.stored_of("b") == [1, 2, 3, 4, 5]
    assert jobs.missing_at_record == []
    assert sink.objects["a.jpg"][0] == bytes([5]) * SIZE  # overwrite object: the latest capture
    assert (spool.counts.uploaded, spool.counts.spooled, spool.counts.dropped) == (10, 0, 0)
    await uploader.close(1)


async def test_submit_never_waits_for_a_hanging_store(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path, memory_entries=2)
    sink.gates["a/1.jpg"] = asyncio.Event()  # never opened: the store hangs
    for n in range(1, 6):
        await asyncio.wait_for(uploader.submit(jobs.upload("a", n)), 0.5)
    assert uploader.pending == 5
    assert spool.counts.spooled == 3  # past two in memory, a backlog goes to disk
    left = await uploader.close(0.1)
    assert left == 5 and spool.counts.dropped == 5
    assert jobs.lost() == [("a", n) for n in range(1, 6)] and jobs.stored == []
    assert spool_files(spool) == []


async def test_outage_spools_everything_then_drains_in_order(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path)
    sink.error = OutputUnavailable("connection refused")
    for n in range(1, 6):
        await uploader.submit(jobs.upload("a", n))
    for n in range(1, 4):
        await uploader.submit(jobs.upload("b", n))
    await settle(lambda: uploader.outage is not None and spool.counts.spooled == 8,
                 what="eight captures on disk only")
    assert len(spool_files(spool)) == 8 and uploader.outage is not None
    assert "connection refused" in uploader.outage
    told = {job for job, _, _, lost in jobs.trouble if not lost}
    assert told == {"a", "b"} and jobs.lost() == [] and jobs.stored == []
    await asyncio.sleep(0.2)  # several retries while it stays down: nothing lost
    assert len(spool) == 8

    sink.error = None
    await settle(lambda: len(jobs.stored) == 8, what="the spool to drain")
    assert jobs.stored_of("a") == [1, 2, 3, 4, 5] and jobs.stored_of("b") == [1, 2, 3]
    assert jobs.missing_at_record == [] and uploader.outage is None
    assert spool_files(spool) == [] and spool.size_bytes == 0
    assert (spool.counts.uploaded, spool.counts.spooled, spool.counts.dropped) == (8, 8, 0)
    await uploader.close(1)


async def test_a_full_spool_drops_the_oldest_first_and_counts_them(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path, max_bytes=3 * SIZE, retry_base_s=30,
                                       retry_max_s=30)
    sink.error = OutputUnavailable("down")
    await uploader.submit(jobs.upload("a", 1))
    await settle(lambda: uploader.outage is not None, what="the outage")
    for n in range(2, 7):
        await uploader.submit(jobs.upload("a", n))
    assert jobs.lost() == [("a", 1), ("a", 2), ("a", 3)]
    assert all("spool over" in m for _, _, m, lost in jobs.trouble if lost)
    assert spool.counts.dropped == 3 and len(spool) == 3 and spool.size_bytes == 3 * SIZE
    assert spool_files(spool) == [f"{seq:012d}.capture" for seq in (4, 5, 6)]
    await uploader.close(0.05)


async def test_spooled_captures_expire_after_the_age_limit(tmp_path):
    now = [1000.0]
    sink = ScriptedSink()
    limits = SpoolLimits(max_age_s=60, retry_base_s=30, retry_max_s=30)
    spool = Spool(tmp_path / "spool", limits, now=lambda: now[0])
    uploader, jobs = TargetUploader(sink, spool=spool, name="t"), Jobs(sink)
    sink.error = OutputUnavailable("down")
    await uploader.submit(jobs.upload("a", 1))
    await settle(lambda: uploader.outage is not None, what="the outage")
    await uploader.submit(jobs.upload("a", 2))
    now[0] += 61
    await uploader.submit(jobs.upload("a", 3))
    assert jobs.lost() == [("a", 1), ("a", 2)] and len(spool) == 1
    assert all("waited longer than 60 s" in m for _, _, m, lost in jobs.trouble if lost)
    await uploader.close(0.05)


async def test_a_refused_capture_is_dropped_and_the_next_one_goes_on(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path)
    sink.fail["a/1.jpg"].append(OutputError("access denied"))
    await uploader.submit(jobs.upload("a", 1))
    await uploader.submit(jobs.upload("a", 2))
    await settle(lambda: jobs.stored == [("a", 2)], what="the second capture")
    assert jobs.lost() == [("a", 1)] and "access denied" in jobs.trouble[0][2]
    assert (spool.counts.failed, spool.counts.uploaded, uploader.outage) == (1, 1, None)
    await uploader.close(1)


async def test_a_retry_does_not_store_an_object_twice(tmp_path):
    sink, _spool, uploader, jobs = make(tmp_path)
    sink.fail["a.jpg"].append(OutputUnavailable("reset by peer"))  # overwrite object, once
    await uploader.submit(jobs.upload("a", 1))
    await settle(lambda: jobs.stored == [("a", 1)], what="the capture after a retry")
    assert sink.puts == ["a/1.jpg", "a.jpg"]
    await uploader.close(1)


async def test_one_job_waits_for_its_slow_upload_while_others_go_on(tmp_path):
    sink, _spool, uploader, jobs = make(tmp_path, concurrency=2)
    gate = sink.gates["a/1.jpg"] = asyncio.Event()
    await uploader.submit(jobs.upload("a", 1))
    await uploader.submit(jobs.upload("a", 2))
    for n in (1, 2, 3):
        await uploader.submit(jobs.upload("b", n))
    await settle(lambda: jobs.stored_of("b") == [1, 2, 3], what="job b")
    assert jobs.stored_of("a") == [] and "a/2.jpg" not in sink.puts
    gate.set()
    await settle(lambda: jobs.stored_of("a") == [1, 2], what="job a, in order")
    await uploader.close(1)


async def test_a_record_being_written_holds_its_job_but_no_store_slot(tmp_path):
    # One slot. Job a's first record waits (a database under load): the store goes on with
    # the other jobs' captures meanwhile, and a's second capture waits for that record.
    sink, _spool, uploader, jobs = make(tmp_path, concurrency=1)
    record = asyncio.Event()
    await uploader.submit(recorded_after(jobs.upload("a", 1), record))
    await uploader.submit(jobs.upload("a", 2))
    for job in ("b", "c", "d"):
        await uploader.submit(jobs.upload(job, 1))
    await settle(lambda: len(jobs.stored) == 3, what="jobs b, c and d")
    assert sorted(jobs.stored) == [("b", 1), ("c", 1), ("d", 1)]
    assert uploader.in_flight == 0 and uploader.pending == 1  # a/2, not started
    assert "a/2.jpg" not in sink.puts
    record.set()
    await settle(lambda: jobs.stored_of("a") == [1, 2], what="job a, in order")
    assert jobs.missing_at_record == []
    await uploader.close(1)


async def test_a_slow_record_is_not_blamed_on_the_store(tmp_path):
    # The store answered at once; the record then waits past slow_upload_s (a busy
    # database). The job is not told that the store has not answered.
    sink, _spool, uploader, jobs = make(tmp_path, slow_upload_s=0.05)
    record = asyncio.Event()
    await uploader.submit(recorded_after(jobs.upload("a", 1), record))
    await settle(lambda: "a.jpg" in sink.puts, what="the objects")
    await asyncio.sleep(0.2)  # four times slow_upload_s, the record still waiting
    assert uploader.oldest_in_flight_s() == 0.0 and jobs.stored == []
    record.set()
    await settle(lambda: jobs.stored == [("a", 1)], what="the record")
    assert jobs.trouble == []
    await uploader.close(1)


async def test_a_failing_record_does_not_stop_the_queue(tmp_path, caplog):
    _sink, _spool, uploader, jobs = make(tmp_path)
    good = jobs.upload("a", 2)

    async def broken() -> None:
        raise OutputError("database is down")

    bad = jobs.upload("a", 1)
    bad = Upload(job_id="a", data=bad.data, objects=bad.objects, on_stored=broken,
                 on_trouble=bad.on_trouble)
    await uploader.submit(bad)
    await uploader.submit(good)
    await settle(lambda: jobs.stored == [("a", 2)], what="the next capture")
    assert "database is down" in caplog.text
    await uploader.close(1)


def test_leftovers_that_cannot_be_stored_are_removed_and_counted(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir()

    def capture(seq: int, *, note: str = "n", size: int = 3, picture: bytes = b"jpg") -> bytes:
        head = {"version": 1, "seq": seq, "created": 1.0, "size": size, "job_id": "a",
                "note": note, "objects": [{"key": "a/1.jpg", "content_type": "image/jpeg",
                                           "cache_control": None, "metadata": {}, "data": None}]}
        return json.dumps(head).encode() + b"\n" + picture

    (directory / "000000000001.capture").write_bytes(b"no description line")
    (directory / "000000000002.capture").write_bytes(capture(2, picture=b"jp"))  # cut short
    (directory / "000000000003.capture").write_bytes(capture(3, note=""))  # nothing to rebuild
    (directory / "000000000004.capture.part").write_bytes(capture(4)[:20])  # killed mid-write
    (directory / "000000000005.capture").write_bytes(capture(5))  # whole: kept
    spool = Spool(directory, SpoolLimits())
    left, unusable = spool.take_leftovers()
    assert unusable == 3 and spool.counts.dropped == 3
    assert [(s.seq, s.offset, s.size, s.note) for s in left] == [
        (5, len(capture(5)) - 3, 3, "n")]
    assert sorted(p.name for p in directory.iterdir()) == ["000000000005.capture"]
    assert spool.next_seq() == 6  # this run's captures come after the leftovers


async def test_a_capture_spooled_by_a_killed_process_is_stored_by_the_next(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path)
    sink.error = OutputUnavailable("connection refused")
    pointer = PendingObject(key="a/latest.json", meta=ObjectMeta(content_type="application/json"),
                            data=b'{"latest": 1}')
    first = jobs.upload("a", 1, note="capture 1")
    await uploader.submit(Upload(job_id="a", data=first.data,
                                 objects=(*first.objects, pointer), on_stored=first.on_stored,
                                 on_trouble=first.on_trouble, note=first.note))
    await uploader.submit(jobs.upload("a", 2, note="capture 2"))
    await uploader.submit(jobs.upload("b", 1))  # no note: not worth keeping
    await settle(lambda: len(spool) == 3, what="three captures spooled")
    # the process is killed here (its uploader, never closed, keeps failing: it stands for the
    # dead process); the next one opens the same directory and reaches the store
    later = Spool(spool.directory, SpoolLimits(**FAST))
    left, unusable = later.take_leftovers()
    assert unusable == 1 and [s.note for s in left] == ["capture 1", "capture 2"]
    assert [o.key for o in left[0].objects] == ["a/1.jpg", "a.jpg", "a/latest.json"]
    assert left[0].objects[2].data == b'{"latest": 1}'
    assert left[0].objects[2].meta.content_type == "application/json"
    store = ScriptedSink()
    again = Jobs(store)
    next_run = TargetUploader(store, spool=later, name="t")
    for spooled in left:
        n = int(spooled.note.split()[-1])
        made = again.upload("a", n)
        next_run.adopt(spooled, Upload(job_id="a", data=b"", objects=spooled.objects,
                                       on_stored=made.on_stored, on_trouble=made.on_trouble))
    await next_run.submit(again.upload("a", 3))  # this run's capture comes after them
    await settle(lambda: len(again.stored) == 3, what="every capture stored")
    assert again.stored == [("a", 1), ("a", 2), ("a", 3)] and again.missing_at_record == []
    assert store.objects["a/1.jpg"][0] == bytes([1]) * SIZE  # the bytes from the spool file
    assert spool_files(later) == [] and len(later) == 0
    await next_run.close(1)
    await uploader.close(0.1)


def test_retry_delay_grows_and_is_capped():
    limits = SpoolLimits(retry_base_s=1, retry_max_s=8)
    assert [limits.retry_delay(n, 0.0) for n in (1, 2, 3, 4, 5, 40)] == [1, 2, 4, 8, 8, 8]
    assert limits.retry_delay(3, 0.999) == pytest.approx(2.002)
    with pytest.raises(ValueError, match="retry_base_s"):
        SpoolLimits(retry_base_s=5, retry_max_s=1)


def test_a_store_that_is_back_is_tried_within_5_s_by_default():
    limits = SpoolLimits()
    assert max(limits.retry_delay(n, 0.0) for n in range(1, 40)) == 5.0
    assert 2.5 <= limits.retry_delay(30, 1.0) <= 5.0


async def test_a_capture_is_on_disk_until_it_is_recorded(tmp_path):
    sink, spool, uploader, jobs = make(tmp_path)
    sink.gates["a/1.jpg"] = asyncio.Event()  # the store takes its time
    made = jobs.upload("a", 1, note="capture 1")
    on_disk_at_record: list[list[str]] = []

    async def record() -> None:
        on_disk_at_record.append(spool_files(spool))
        await made.on_stored()

    await uploader.submit(Upload(job_id="a", data=made.data, objects=made.objects,
                                 on_stored=record, on_trouble=made.on_trouble, note=made.note))
    assert spool_files(spool) == ["000000000001.capture"]  # written ahead of the upload
    assert spool.counts.spooled == 0  # still in memory too: nothing is read back
    sink.gates["a/1.jpg"].set()
    await settle(lambda: jobs.stored == [("a", 1)], what="the record")
    # a crash during the record would have left it for the next start
    assert on_disk_at_record == [["000000000001.capture"]]
    await settle(lambda: spool_files(spool) == [], what="the file removed")
    assert len(spool) == 0 and spool.counts.uploaded == 1
    await uploader.close(1)


async def test_a_shutdown_leaves_what_it_could_not_store_for_the_next_start(tmp_path, caplog):
    sink, spool, uploader, jobs = make(tmp_path)
    sink.error = OutputUnavailable("connection refused")
    for n in (1, 2):
        await uploader.submit(jobs.upload("a", n, note=f"capture {n}"))
    await uploader.submit(jobs.upload("b", 1))  # no note: the next start could not store it
    assert await uploader.close(0.1) == 3
    assert jobs.lost() == [("b", 1)] and spool.counts.dropped == 1
    assert "snapshots left in the spool for the next start" in caplog.text
    left, unusable = Spool(spool.directory, SpoolLimits()).take_leftovers()
    assert [s.note for s in left] == ["capture 1", "capture 2"] and unusable == 0
