"""Cluster logic without Ray: rendezvous assignment, the shard's reconcile and fencing, the
missed-tick ledger, and error replies across the process boundary."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter

import pytest
from tests.contract.test_store_contract import job, snap

from livesnap.clock import SystemClock
from livesnap.errors import JobNotFound, ShardUnavailable, StreamNotFound
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import (
    Job,
    JobSpec,
    JobStatus,
    SnapshotFile,
    StorageTarget,
    StorageType,
    StreamStatus,
    Verdict,
)
from livesnap.jobs.ports import CaptureReport, CaptureResult
from livesnap.jobs.schedule import ticks_missed
from livesnap.shards.assign import owner, shard_names
from livesnap.shards.remote import RemoteEngine, error_reply, raise_reply
from livesnap.shards.runtime import ShardRuntime, ShardStats, TickLedger
from livesnap.store import MemoryStore

JOB_IDS = [f"job-{i:05d}" for i in range(6000)]


# assignment ------------------------------------------------------------------------------
def test_every_shard_gets_a_fair_share() -> None:
    counts = Counter(owner(j, shard_names(6)) for j in JOB_IDS)
    assert set(counts) == set(shard_names(6))
    assert min(counts.values()) > 0.8 * len(JOB_IDS) / 6
    assert max(counts.values()) < 1.2 * len(JOB_IDS) / 6


@pytest.mark.parametrize("k", [1, 3, 5, 9])
def test_adding_a_shard_moves_about_one_in_k_plus_one_jobs_all_to_it(k: int) -> None:
    before = {j: owner(j, shard_names(k)) for j in JOB_IDS}
    after = {j: owner(j, shard_names(k + 1)) for j in JOB_IDS}
    moved = [j for j in JOB_IDS if before[j] != after[j]]
    assert {after[j] for j in moved} == {f"shard-{k}"}  # only to the new shard
    share = len(moved) / len(JOB_IDS)
    assert abs(share - 1 / (k + 1)) < 0.25 / (k + 1), share


def test_removing_a_shard_moves_only_its_jobs() -> None:
    names = shard_names(5)
    without = [n for n in names if n != "shard-2"]
    for j in JOB_IDS[:2000]:
        if owner(j, names) != "shard-2":
            assert owner(j, without) == owner(j, names)


def test_owner_needs_shards() -> None:
    with pytest.raises(ValueError):
        owner("j", [])
    with pytest.raises(ValueError):
        shard_names(0)


# errors across the boundary --------------------------------------------------------------
def test_errors_survive_the_round_trip() -> None:
    with pytest.raises(StreamNotFound, match="gone"):
        raise_reply(error_reply(StreamNotFound("gone")))
    with pytest.raises(ShardUnavailable, match="odd"):
        raise_reply({"error": "NotAnError", "message": "odd"})
    raise_reply({})  # no error: nothing raised


# the shard runtime -----------------------------------------------------------------------
class FakeStore:
    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = {j.id: j for j in jobs}
        self.epoch = 1

    async def jobs_with_status(self, status: JobStatus) -> list[Job]:
        return [j for j in self.jobs.values() if j.status is status]

    async def load_job(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def current_epoch(self, shard: str) -> int | None:
        return self.epoch


class FakeEngine:
    def __init__(self) -> None:
        self.running: set[str] = set()
        self.log: list[str] = []
        self.shut = False
        self.changed = asyncio.Event()

    async def wait_running(self, count: int) -> None:
        while len(self.running) < count:
            self.changed.clear()
            await self.changed.wait()

    async def start(self, job: Job, *, probe: bool) -> None:
        self.running.add(job.id)
        self.log.append(f"start {job.id}")
        self.changed.set()

    async def stop(self, job_id: str) -> None:
        self.running.discard(job_id)
        self.log.append(f"stop {job_id}")

    async def capture_now(self, job: Job) -> CaptureResult:
        return CaptureResult(file=snap(job.id, 1))

    def is_running(self, job_id: str) -> bool:
        return job_id in self.running

    def running_ids(self) -> list[str]:
        return sorted(self.running)

    def running_count(self) -> int:
        return len(self.running)

    async def shutdown(self, timeout_s: float) -> None:
        self.shut = True
        self.running.clear()


class FakeReports:
    def __init__(self) -> None:
        self.recorded: list[int] = []

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        self.recorded.append(report.create_ms)
        return snap(job.id, report.create_ms)

    async def stream_changed(self, job_id: str, stream_status: StreamStatus, *,
                             error: str = "") -> None: ...

    async def stream_gone(self, job_id: str, reason: str) -> None: ...

    async def next_sequence(self, job_id: str) -> int:
        return 1

    async def effective_interval(self, job_id: str, interval_ms: int) -> None: ...

    async def storage_changed(self, job_id: str, error: str) -> None: ...

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None: ...

    async def ticks_missed(self, job_id: str, count: int) -> None: ...

    async def check_host(self, name: str, host: str) -> None: ...


NAMES = shard_names(3)


def jobs_of(shard: str, count: int, **changes: object) -> list[Job]:
    found = [j for j in JOB_IDS if owner(j, NAMES) == shard][:count]
    return [job(j, status=JobStatus.STARTED, **changes) for j in found]  # type: ignore[arg-type]


def runtime(store: FakeStore, engine: FakeEngine, **options: float) -> ShardRuntime:
    stats = ShardStats(name="shard-0", epoch=1, started_at=0.0)
    return ShardRuntime(name="shard-0", shards=NAMES, epoch=1, store=store, engine=engine,
                        ledger=TickLedger(FakeReports(), stats), stats=stats, **options)


async def test_reconcile_runs_exactly_the_started_jobs_this_shard_owns() -> None:
    mine = jobs_of("shard-0", 3)
    paused = jobs_of("shard-0", 4)[3:]
    paused = [job(j.id, status=JobStatus.PAUSED) for j in paused]
    theirs = jobs_of("shard-1", 2)
    store, engine = FakeStore(mine + paused + theirs), FakeEngine()
    shard = runtime(store, engine)
    await shard.reconcile()
    assert engine.running == {j.id for j in mine}
    assert shard.stats.jobs == 3 and shard.stats.reconciles == 1

    # a job stopped through the database (another API node, or a lost command) stops here
    store.jobs[mine[0].id] = job(mine[0].id, status=JobStatus.PAUSED)
    await shard.reconcile()
    assert engine.running == {j.id for j in mine[1:]}


async def test_a_commanded_job_is_not_undone_by_a_reconcile_before_the_api_writes() -> None:
    paused = [job(j.id, status=JobStatus.PAUSED) for j in jobs_of("shard-0", 1)]
    started = jobs_of("shard-0", 2)[1:]
    store, engine = FakeStore(paused + started), FakeEngine()
    shard = runtime(store, engine)
    await shard.start(paused[0].id, probe=True)  # the API writes "started" after this returns
    await shard.stop(started[0].id)  # … and "paused" after this
    await shard.reconcile()
    assert engine.running == {paused[0].id}


class ProbingEngine(FakeEngine):
    """A start with a probe waits until the test lets that job's stream go live."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, asyncio.Event] = {}

    async def start(self, job: Job, *, probe: bool) -> None:
        if probe:
            await self.live.setdefault(job.id, asyncio.Event()).wait()
        await super().start(job, probe=probe)


async def test_a_start_waiting_for_its_stream_holds_up_no_other_job() -> None:
    slow, fast = jobs_of("shard-0", 2)
    other = jobs_of("shard-0", 3)[2]
    store = FakeStore([job(j.id, status=JobStatus.PAUSED) for j in (slow, fast)] + [other])
    engine = ProbingEngine()
    shard = runtime(store, engine)
    waiting = asyncio.create_task(shard.start(slow.id, probe=True))
    await asyncio.sleep(0)
    engine.live[fast.id] = asyncio.Event()
    engine.live[fast.id].set()
    async with asyncio.timeout(2):
        await shard.start(fast.id, probe=True)  # not behind the slow probe
        await shard.reconcile()  # nor is the reconcile
        await shard.stop(fast.id)
    assert engine.running == {other.id} and not waiting.done()
    engine.live[slow.id].set()
    await waiting
    assert engine.running == {other.id, slow.id}
    assert len(shard._jobs) == 0  # the per-job locks are gone once nobody holds them


async def test_commands_for_one_job_are_applied_in_order() -> None:
    (one,) = jobs_of("shard-0", 1)
    store, engine = FakeStore([job(one.id, status=JobStatus.PAUSED)]), ProbingEngine()
    shard = runtime(store, engine)
    start = asyncio.create_task(shard.start(one.id, probe=True))
    await asyncio.sleep(0)
    stop = asyncio.create_task(shard.stop(one.id))
    await asyncio.sleep(0.05)
    assert not stop.done()  # the stop waits for the start it follows
    engine.live[one.id].set()
    await asyncio.gather(start, stop)
    assert engine.log == [f"start {one.id}", f"stop {one.id}"] and engine.running == set()


async def test_commands_for_another_shards_job_or_an_unknown_job_are_refused() -> None:
    store, engine = FakeStore(jobs_of("shard-1", 1)), FakeEngine()
    shard = runtime(store, engine)
    with pytest.raises(Exception, match="belongs to shard shard-1"):
        await shard.start(next(iter(store.jobs)), probe=False)
    mine = next(j for j in JOB_IDS if owner(j, NAMES) == "shard-0")
    with pytest.raises(JobNotFound):
        await shard.capture_now(mine)
    assert engine.running == set()


async def test_a_newer_epoch_fences_the_shard_and_stops_everything() -> None:
    store, engine = FakeStore(jobs_of("shard-0", 2)), FakeEngine()
    shard = runtime(store, engine, reconcile_s=0.01)
    task = asyncio.create_task(shard.run())
    await asyncio.wait_for(engine.wait_running(2), 5)
    store.epoch = 2  # a new instance took over
    await asyncio.wait_for(task, 5)
    assert shard.fenced and shard.stats.fenced and engine.shut and engine.running == set()
    with pytest.raises(ShardUnavailable):
        await shard.start(next(iter(store.jobs)), probe=False)


async def test_fence_from_a_refused_write_ends_the_run_at_once() -> None:
    store, engine = FakeStore(jobs_of("shard-0", 1)), FakeEngine()
    shard = runtime(store, engine, reconcile_s=3600)
    task = asyncio.create_task(shard.run())
    await asyncio.wait_for(engine.wait_running(1), 5)
    shard.fence()  # what the fenced store calls on FencedOut
    await asyncio.wait_for(task, 5)
    assert engine.shut


async def test_the_ledger_tallies_takeovers_and_the_ticks_the_sessions_counted() -> None:
    stats = ShardStats(name="shard-0", epoch=2, started_at=0.0)
    reports = FakeReports()
    ledger = TickLedger(reports, stats)
    taken = job("j1", interval_s=5, last_snapshot_ms=100_000)
    ledger.expect(taken)

    def report(job_id: str, create_ms: int, missed: int) -> CaptureReport:
        return CaptureReport(job_id=job_id, create_ms=create_ms, sequence=None,
                             sequence_key=None, overwrite_key="k", width=2, height=2, size=1,
                             stream_time_ms=None, lag_ms=None, missed_ticks=missed)

    await ledger.snapshot_stored(taken, report("j1", 115_100, 2))  # the takeover gap
    await ledger.snapshot_stored(taken, report("j1", 120_000, 0))
    await ledger.snapshot_stored(job("j2"), report("j2", 1, 1))  # a reconnect, no takeover
    assert (stats.missed_ticks, stats.takeovers) == (3, 1)
    assert stats.missed_by_job == {"j1": 2, "j2": 1}
    assert reports.recorded == [115_100, 120_000, 1]


@pytest.mark.parametrize(("previous", "capture", "missed"), [
    (None, 50_000, 0),       # nothing to count from (a fresh start)
    (100_000, 105_000, 0),
    (100_000, 106_900, 0),   # a late keyframe (GOP 2 s) is no missed tick
    (100_000, 103_100, 0),   # nor an early one
    (100_000, 108_100, 1),
    (100_000, 111_900, 1),
    (100_000, 130_000, 5),
    (100_000, 99_000, 0),    # clock or order anomaly: never negative
])
def test_ticks_missed_between_captures(previous: int | None, capture: int, missed: int) -> None:
    assert ticks_missed(previous_ms=previous, capture_ms=capture, interval_ms=5_000) == missed


def test_the_embedded_mode_never_imports_ray(tmp_path) -> None:
    code = (
        "import asyncio, sys\n"
        "from livesnap.config import KeyRing, Settings, parse_access_keys\n"
        "from livesnap.node.service import build_service\n"
        "async def main():\n"
        f"    s = Settings(data_dir={str(tmp_path)!r})\n"
        "    async with build_service(s, KeyRing(parse_access_keys('a:b:c'))):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "import livesnap.cli, livesnap.node.shardhost\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


class SilentShards(RemoteEngine):
    """An API node's engine whose shards never answer (down, or not created yet)."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    async def _command(self, method, job_id, *args):
        self.commands.append(method)
        raise ShardUnavailable("Capture shard shard-2 did not answer (GetTimeoutError).")

    async def shutdown(self, timeout_s):
        self.commands.append("shutdown")


async def test_a_start_its_shard_cannot_take_is_started_with_a_last_error_that_says_why() -> None:
    engine = SilentShards()
    manager = JobManager(store=MemoryStore(), clock=SystemClock())
    manager.attach_engine(engine)
    await manager.open()
    spec = JobSpec(name="cam", template_id="system", stream_url="rtmp://127.0.0.1/live/a",
                   stream_type="rtmp", callback_url=None,
                   storage=StorageTarget(storage_type=StorageType.LOCAL, endpoint="e",
                                         bucket="b"))
    try:
        submitted = await manager.submit_job("acct-a", spec)
        for _ in range(200):  # the submit's start runs in the background
            got = await manager.get_job("acct-a", submitted.id)
            if got.status is JobStatus.STARTED:
                break
            await asyncio.sleep(0.01)
        assert engine.commands == ["start"]
        assert got.status is JobStatus.STARTED  # the shard applies it when back (reconcile)
        assert got.last_error == ("Capture shard shard-2 did not answer (GetTimeoutError). "
                                  "The job starts capturing when the shard is back.")
        await engine.start(got, probe=False)  # a background start (resume, hook) only logs
        await engine.stop(got.id)  # and so does a stop
    finally:
        await manager.close(1)
