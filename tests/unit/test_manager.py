"""JobManager over the memory store with a scripted capture engine."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from livesnap.clock import ManualClock
from livesnap.errors import (
    Forbidden,
    InvalidParameter,
    JobAlreadyStarted,
    JobLimitExceeded,
    JobNotFound,
    JobNotStarted,
    OutputError,
    StreamNotFound,
)
from livesnap.jobs.manager import JobManager, Limits, Policy, Waiting
from livesnap.jobs.models import (
    EventType,
    FileQuery,
    JobSpec,
    JobStatus,
    StorageTarget,
    StorageType,
    StreamStatus,
    TemplateSpec,
)
from livesnap.jobs.ports import CaptureReport
from livesnap.jobs.urls import parse_networks
from livesnap.jobs.waiting import WaitPolicy
from livesnap.store import MemoryStore


class FakeEngine:
    def __init__(self, live=True):
        self.live = live
        self.running: set[str] = set()
        self.calls: list[tuple[str, str]] = []

    async def start(self, job, *, probe):
        self.calls.append(("start", job.id))
        if probe and not self.live:
            raise StreamNotFound()
        self.running.add(job.id)

    async def stop(self, job_id):
        self.calls.append(("stop", job_id))
        self.running.discard(job_id)

    async def capture_now(self, job):
        raise AssertionError("not used")

    def is_running(self, job_id):
        return job_id in self.running

    def running_count(self):
        return len(self.running)

    async def shutdown(self, timeout_s):
        self.running.clear()


class FakeRemover:
    def __init__(self):
        self.deleted = []
        self.fail_keys = set()

    async def delete(self, account, target, key):
        if key in self.fail_keys:
            raise OutputError("access denied")
        self.deleted.append(key)


def spec(**kw):
    base = dict(
        name="cam", template_id="system", stream_url="rtmp://127.0.0.1/live/a", stream_type="rtmp",
        storage=StorageTarget(storage_type=StorageType.OSS, endpoint="oss-cn-x.aliyuncs.com", bucket="bkt"),
        callback_url="http://127.0.0.1:9/hook",
    )
    base.update(kw)
    return JobSpec(**base)


@pytest.fixture
async def env():
    store = MemoryStore()
    clock = ManualClock()
    engine = FakeEngine()
    remover = FakeRemover()
    manager = JobManager(store=store, clock=clock, remover=remover,
                         policy=Policy(limits=Limits(jobs_per_account=2, jobs_per_node=3)))
    manager.attach_engine(engine)
    await manager.open()
    yield manager, store, engine, clock, remover
    await manager.close(1)


async def settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def test_submit_starts_in_background_when_live(env):
    manager, store, _, _, _ = env
    job = await manager.submit_job("a", spec())
    assert job.status is JobStatus.INIT
    await settle()
    job = await manager.get_job("a", job.id)
    assert job.status is JobStatus.STARTED
    events = await store.pending_events(job.id)
    assert [e.type for e in events] == [EventType.STATUS_CHANGED]
    assert events[0].data["old_status"] == "init" and events[0].data["new_status"] == "started"


async def test_submit_waits_when_not_live_and_start_says_stream_not_found(env):
    manager, _, engine, _, _ = env
    engine.live = False
    job = await manager.submit_job("a", spec())
    await settle()
    job = await manager.get_job("a", job.id)
    assert (job.status, job.stream_status) == (JobStatus.INIT, StreamStatus.WAITING)
    assert manager.waiting_count() == 1
    with pytest.raises(StreamNotFound):
        await manager.command("a", job.id, "start")
    assert (await manager.get_job("a", job.id)).last_error == StreamNotFound().message


FAST_WAIT = WaitPolicy(first_s=0.01, max_s=0.04, jitter=0)


@contextlib.asynccontextmanager
async def waiting_manager(waiting: WaitPolicy):
    """A manager over a memory store whose engine finds no stream live (yet)."""
    store = MemoryStore()
    engine = FakeEngine(live=False)
    manager = JobManager(store=store, clock=ManualClock(), policy=Policy(waiting=waiting))
    manager.attach_engine(engine)
    await manager.open()
    try:
        yield manager, store, engine
    finally:
        await manager.close(1)


@pytest.fixture
async def waiting_env():
    async with waiting_manager(FAST_WAIT) as env:
        yield env


async def until(predicate):
    """Poll ``predicate`` (async) until it holds; fail after 2 s."""
    async with asyncio.timeout(2.0):
        while not await predicate():  # noqa: ASYNC110 (the store has no change notification)
            await asyncio.sleep(0.005)


async def test_a_waiting_job_starts_by_itself_once_its_stream_is_live(waiting_env):
    manager, store, engine = waiting_env
    job = await manager.submit_job("a", spec())
    await until(lambda: _attempts(engine, job.id, 3))  # probed again and again
    engine.live = True

    async def started():
        return (await manager.get_job("a", job.id)).status is JobStatus.STARTED

    await until(started)

    async def none_waiting():
        return manager.waiting_count() == 0

    await until(none_waiting)  # its watch ends with the start
    job = await manager.get_job("a", job.id)
    assert job.last_error == ""
    events = await store.pending_events(job.id)
    assert [(e.data["old_status"], e.data["new_status"]) for e in events] == [("init", "started")]


async def _attempts(engine, job_id, n):
    return sum(1 for call in engine.calls if call == ("start", job_id)) >= n


async def test_stop_ends_the_waiting(waiting_env):
    manager, _, engine = waiting_env
    job = await manager.submit_job("a", spec())
    await until(lambda: _attempts(engine, job.id, 2))
    await manager.command("a", job.id, "stop")
    job = await manager.get_job("a", job.id)
    assert (job.status, job.stream_status) == (JobStatus.PAUSED, StreamStatus.OFFLINE)
    assert manager.waiting_count() == 0
    tried = len(engine.calls)
    await asyncio.sleep(0.1)
    assert len(engine.calls) == tried


async def test_a_stream_gone_past_the_outage_window_is_waited_for(waiting_env):
    manager, _, engine = waiting_env
    engine.live = True
    job = await manager.submit_job("a", spec())
    await settle()
    engine.live = False
    await manager.stream_gone(job.id, "stream offline for 1800 s")
    job = await manager.get_job("a", job.id)
    assert (job.status, job.stream_status) == (JobStatus.PAUSED, StreamStatus.WAITING)
    engine.live = True

    async def started():
        return (await manager.get_job("a", job.id)).status is JobStatus.STARTED

    await until(started)


async def test_waiting_survives_a_restart(waiting_env):
    manager, store, engine = waiting_env
    job = await manager.submit_job("a", spec())
    await until(lambda: _attempts(engine, job.id, 1))
    await manager.close(1)
    again = JobManager(store=store, clock=ManualClock(), policy=Policy(waiting=FAST_WAIT))
    again.attach_engine(engine)
    await again.open()
    try:
        assert await again.resume_waiting() == 1
        engine.live = True

        async def started():
            return (await again.get_job("a", job.id)).status is JobStatus.STARTED

        await until(started)
    finally:
        await again.close(1)


def test_wait_policy_backs_off_to_its_cap():
    policy = WaitPolicy(first_s=2, max_s=30, jitter=0.2)
    assert [policy.wait_s(n, 0.5) for n in range(6)] == [2, 4, 8, 16, 30, 30]
    assert policy.wait_s(0, 0.0) == pytest.approx(1.6)
    assert policy.wait_s(10**6, 0.999) < 36
    with pytest.raises(ValueError):
        WaitPolicy(first_s=5, max_s=1)


async def test_waiting_probes_one_host_a_few_at_a_time():
    running = {"now": 0, "most": 0}
    done: set[str] = set()

    async def attempt(job_id):
        running["now"] += 1
        running["most"] = max(running["most"], running["now"])
        await asyncio.sleep(0.01)
        running["now"] -= 1
        done.add(job_id)
        return True

    waiting = Waiting(attempt=attempt, policy=WaitPolicy(first_s=0.001, max_s=0.001, per_host=2))
    for i in range(20):
        waiting.watch(f"job-{i}", "origin.example")
    waiting.watch("job-0", "origin.example")  # watched once
    async def all_watches_ended():
        return len(waiting) == 0

    await until(all_watches_ended)
    assert len(done) == 20 and running["most"] == 2
    assert waiting._hosts == {}
    await waiting.close()


async def test_commands(env):
    manager, _, engine, _, _ = env
    job = await manager.submit_job("a", spec())
    await settle()
    with pytest.raises(JobAlreadyStarted):
        await manager.command("a", job.id, "start")
    await manager.command("a", job.id, "stop")
    stopped = await manager.get_job("a", job.id)
    assert stopped.status is JobStatus.PAUSED and stopped.stream_status is StreamStatus.OFFLINE
    assert not engine.is_running(job.id)
    await manager.command("a", job.id, "restart")
    assert (await manager.get_job("a", job.id)).status is JobStatus.STARTED
    with pytest.raises(JobNotFound):
        await manager.command("b", job.id, "stop")
    with pytest.raises(InvalidParameter):
        await manager.command("a", job.id, "explode")


async def test_capture_now_needs_a_started_job(env):
    manager, _, engine, _, _ = env
    engine.live = False
    job = await manager.submit_job("a", spec())
    await settle()
    with pytest.raises(JobNotStarted):
        await manager.command("a", job.id, "capture")


async def test_account_limit(env):
    manager, _, _, _, _ = env
    jobs = [await manager.submit_job("a", spec(name=f"j{i}")) for i in range(3)]
    await settle()
    statuses = [(await manager.get_job("a", j.id)).status for j in jobs]
    assert statuses.count(JobStatus.STARTED) == 2
    third = next(j for j, s in zip(jobs, statuses, strict=True) if s is JobStatus.INIT)
    assert "at most 2" in (await manager.get_job("a", third.id)).last_error
    with pytest.raises(JobLimitExceeded):
        await manager.command("a", third.id, "start")


async def test_node_limit(env):
    manager, _, engine, _, _ = env
    engine.running.update({"x", "y", "z"})
    job = await manager.submit_job("b", spec())
    await settle()
    with pytest.raises(JobLimitExceeded, match="node"):
        await manager.command("b", job.id, "start")


async def test_system_template_is_forbidden_and_custom_is_scoped(env):
    manager, _, _, _, _ = env
    with pytest.raises(Forbidden):
        await manager.update_template("a", "system", TemplateSpec(
            name="x", interval_s=5, overwrite_format="a.jpg", sequence_format=None))
    t = await manager.create_template("a", TemplateSpec(
        name="x", interval_s=5, overwrite_format="a.jpg", sequence_format=None))
    job = await manager.submit_job("a", spec(template_id=t.id))
    await manager.update_template("a", t.id, TemplateSpec(
        name="y", interval_s=60, overwrite_format="b.jpg", sequence_format=None))
    kept = await manager.get_job("a", job.id)
    assert (kept.interval_s, kept.overwrite_format, kept.template_name) == (5, "a.jpg", "x")
    await manager.delete_template("a", t.id)
    assert (await manager.get_job("a", job.id)).template_id == t.id


async def test_snapshot_recorded_once_with_its_event(env):
    manager, store, _, _, _ = env
    job = await manager.submit_job("a", spec())
    await settle()
    report = CaptureReport(job_id=job.id, create_ms=1_700_000_000_123, sequence=1,
                           sequence_key=f"s/{job.id}/1.jpg", overwrite_key=f"o/{job.id}.jpg",
                           width=640, height=360, size=1000, stream_time_ms=40, lag_ms=12)
    first = await manager.snapshot_stored(job, report)
    again = await manager.snapshot_stored(job, report)
    assert first is not None and again is None
    assert first.object_key == f"s/{job.id}/1.jpg" and not first.is_overlay
    job = await manager.get_job("a", job.id)
    assert job.snapshot_count == 1 and job.last_snapshot_ms == report.create_ms
    captured = [e for e in await store.pending_events(job.id) if e.type is EventType.CAPTURED]
    assert len(captured) == 1 and captured[0].data["object_key"] == first.object_key


async def test_overwrite_only_record_is_overlay(env):
    manager, _, _, _, _ = env
    job = await manager.submit_job("a", spec(callback_url=None))
    report = CaptureReport(job_id=job.id, create_ms=5, sequence=None, sequence_key=None,
                           overwrite_key="o.jpg", width=1, height=1, size=1,
                           stream_time_ms=None, lag_ms=None)
    file = await manager.snapshot_stored(job, report)
    assert file is not None and file.is_overlay and file.object_key == "o.jpg"


async def test_delete_files_reports_each_result(env):
    manager, _, _, _, remover = env
    job = await manager.submit_job("a", spec())
    for ms in (10, 20, 30):
        await manager.snapshot_stored(job, CaptureReport(
            job_id=job.id, create_ms=ms, sequence=ms, sequence_key=f"k{ms}.jpg", overwrite_key=None,
            width=1, height=1, size=1, stream_time_ms=None, lag_ms=None))
    remover.fail_keys.add("k20.jpg")
    results = await manager.delete_files("a", job.id, [10, 20, 99, 10], delete_objects=True)
    assert [(r.create_ms, r.result) for r in results] == [
        (10, "OK"), (20, "access denied"), (99, "FileNotFound")]
    left = await manager.list_files("a", FileQuery(job_id=job.id, start_ms=0, end_ms=100, limit=10))
    assert [f.create_ms for f in left] == [20, 30]
    assert remover.deleted == ["k10.jpg"]


async def test_stream_gone_pauses_with_reason(env):
    manager, _, engine, _, _ = env
    job = await manager.submit_job("a", spec())
    await settle()
    await manager.stream_gone(job.id, "stream offline for 1800 s")
    job = await manager.get_job("a", job.id)
    assert job.status is JobStatus.PAUSED and "1800" in job.status_reason
    assert ("stop", job.id) in engine.calls


async def test_blocked_callback_and_stream_hosts():
    store = MemoryStore()
    policy = Policy(blocked_networks=parse_networks(["169.254.0.0/16", "10.0.0.0/8"]))

    class Resolver:
        async def resolve(self, host):
            return {"metadata.internal": ["169.254.169.254"]}.get(host, ["93.184.216.34"])

    manager = JobManager(store=store, clock=ManualClock(), policy=policy, resolver=Resolver())
    manager.attach_engine(FakeEngine())
    await manager.open()
    with pytest.raises(InvalidParameter, match=r"CallbackUrl.*169\.254\.169\.254"):
        await manager.submit_job("a", spec(callback_url="http://metadata.internal/x"))
    with pytest.raises(InvalidParameter, match=r"StreamInput\.Url"):
        await manager.submit_job("a", spec(stream_url="rtmp://10.1.2.3/live/x"))
    assert (await manager.submit_job("a", spec(stream_url="rtmp://example.com/l/x"))).id
    await manager.close(1)


class ProbingEngine(FakeEngine):
    """A start that takes a while (the real probe opens the stream: seconds)."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()

    async def start(self, job, *, probe):
        self.calls.append(("start", job.id))
        await self.release.wait()
        self.running.add(job.id)


async def test_account_limit_holds_for_starts_that_probe_at_the_same_time():
    engine = ProbingEngine()
    manager = JobManager(store=MemoryStore(), clock=ManualClock(),
                         policy=Policy(limits=Limits(jobs_per_account=2, jobs_per_node=10)))
    manager.attach_engine(engine)
    await manager.open()
    try:
        jobs = [await manager.submit_job("a", spec(name=f"j{i}")) for i in range(4)]
        other = await manager.submit_job("b", spec(name="b"))
        await settle()  # every submit probe has passed the limit check or been refused
        engine.release.set()
        await settle()
        statuses = [(await manager.get_job("a", j.id)).status for j in jobs]
        assert statuses.count(JobStatus.STARTED) == 2, statuses
        assert len([c for c in engine.calls if c[1] != other.id]) == 2  # no probe past the limit
        assert (await manager.get_job("b", other.id)).status is JobStatus.STARTED  # per account
        refused = [j for j, s in zip(jobs, statuses, strict=True) if s is JobStatus.INIT]
        for job in refused:
            assert "at most 2" in (await manager.get_job("a", job.id)).last_error
        # a finished start gives its slot back: stop one, and a refused job may start
        started = next(j for j, s in zip(jobs, statuses, strict=True) if s is JobStatus.STARTED)
        await manager.command("a", started.id, "stop")
        await manager.command("a", refused[0].id, "start")
        assert (await manager.get_job("a", refused[0].id)).status is JobStatus.STARTED
        assert manager._starting == {}
    finally:
        await manager.close(1)




async def test_delete_job_stops_it_and_takes_its_records_and_objects(env):
    manager, store, engine, _, remover = env
    job = await manager.submit_job("a", spec())
    await settle()
    assert job.id in engine.running
    for ms in (10, 20):
        await manager.snapshot_stored(job, CaptureReport(
            job_id=job.id, create_ms=ms, sequence=ms, sequence_key=f"k{ms}.jpg", overwrite_key=None,
            width=1, height=1, size=1, stream_time_ms=None, lag_ms=None))
    remover.fail_keys.add("k20.jpg")
    with pytest.raises(OutputError, match="1 of the job's 2 objects could not be deleted"):
        await manager.delete_job("a", job.id, delete_objects=True)
    kept = await manager.get_job("a", job.id)  # the job stays, stopped, with the file left
    assert kept.status is JobStatus.PAUSED and job.id not in engine.running
    left = await manager.list_files("a", FileQuery(job_id=job.id, start_ms=0, end_ms=100, limit=10))
    assert [f.create_ms for f in left] == [20]
    remover.fail_keys.clear()
    with pytest.raises(JobNotFound):
        await manager.delete_job("b", job.id, delete_objects=True)  # another account's
    assert await manager.delete_job("a", job.id, delete_objects=True) == 1
    assert remover.deleted == ["k10.jpg", "k20.jpg"]
    with pytest.raises(JobNotFound):
        await manager.get_job("a", job.id)
    assert await store.get_events(job.id, failed_only=False) == []


async def test_an_account_keeps_at_most_its_limit_of_jobs_until_it_deletes_one():
    manager = JobManager(store=MemoryStore(), clock=ManualClock(),
                         policy=Policy(limits=Limits(kept_jobs_per_account=2)))
    manager.attach_engine(FakeEngine(live=False))  # never started: kept jobs count too
    await manager.open()
    first = await manager.submit_job("a", spec())
    await manager.submit_job("a", spec())
    with pytest.raises(JobLimitExceeded, match="at most 2 jobs per account, started or not"):
        await manager.submit_job("a", spec())
    await manager.submit_job("b", spec())  # per account
    await manager.delete_job("a", first.id, delete_objects=False)
    await manager.submit_job("a", spec())
    await manager.close(1)


async def test_two_api_nodes_cannot_start_past_the_account_limit_together():
    """Two managers on one database, each counting its own probing starts: the database's
    check at the start's write refuses the second, and its session is stopped again."""
    class Probing(FakeEngine):  # a start probes its stream for a while, as a real one does
        async def start(self, job, *, probe):
            await asyncio.sleep(0.05)
            await super().start(job, probe=probe)

    store = MemoryStore()
    engines = [Probing(), Probing()]
    nodes = []
    for engine in engines:
        node = JobManager(store=store, clock=ManualClock(),
                          policy=Policy(limits=Limits(jobs_per_account=1)))
        node.attach_engine(engine)
        await node.open()
        nodes.append(node)
    jobs = [await nodes[0].submit_job("a", spec()) for _ in range(2)]
    await settle()
    for node, job in zip(nodes, jobs, strict=True):  # nothing started at submit? stop all
        with contextlib.suppress(JobNotStarted, JobLimitExceeded):
            await node.command("a", job.id, "stop")
    outcomes = await asyncio.gather(
        *(node.command("a", job.id, "start") for node, job in zip(nodes, jobs, strict=True)),
        return_exceptions=True)
    assert sum(isinstance(o, JobLimitExceeded) for o in outcomes) == 1, outcomes
    states = [await store.load_job(job.id) for job in jobs]
    assert sorted(s.status.value for s in states) == ["paused", "started"]
    refused = next(s for s in states if s.status is not JobStatus.STARTED)
    assert "at most 1 started jobs per account" in refused.last_error
    assert sum(len(e.running) for e in engines) == 1  # the refused start's session stopped
    for node in nodes:
        await node.close(1)
