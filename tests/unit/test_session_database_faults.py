"""A capture session while the database fails: it records late instead of losing the record,
and a status write that fails does not end the session (tests/acceptance/test_faults.py runs
the same against a locked SQLite file)."""

from __future__ import annotations

import pytest
from tests.contract.test_store_contract import job, snap

from livesnap.capture import recording
from livesnap.capture.session import Session, SessionOptions
from livesnap.clock import ManualClock
from livesnap.errors import FencedOut, StoreError
from livesnap.jobs.models import Job, SnapshotFile, StreamStatus
from livesnap.jobs.ports import CaptureReport


class FlakyReports:
    """``CaptureReports`` whose writes fail ``failures`` times first (with ``error``)."""

    def __init__(self, failures: int, error: StoreError | None = None) -> None:
        self.failures = failures
        self.error = error or StoreError("record_snapshot: the database failed (Locked)")
        self.recorded: list[int] = []
        self.errors: list[str] = []
        self.streams: list[StreamStatus] = []

    def _maybe_fail(self) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise self.error

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        self._maybe_fail()
        self.recorded.append(report.create_ms)
        return snap(job.id, report.create_ms)

    async def stream_changed(self, job_id: str, stream_status: StreamStatus, *,
                             error: str = "") -> None:
        self._maybe_fail()
        self.streams.append(stream_status)

    async def storage_changed(self, job_id: str, error: str) -> None:
        self.errors.append(error)

    async def quality_changed(self, job_id: str, verdict: object) -> None: ...

    async def ticks_missed(self, job_id: str, count: int) -> None: ...


def report(create_ms: int) -> CaptureReport:
    return CaptureReport(job_id="j1", create_ms=create_ms, sequence=None,
                         sequence_key=f"snapshot/j1/{create_ms}.jpg", overwrite_key=None,
                         width=64, height=36, size=100, stream_time_ms=None, lag_ms=None)


class DeletingSink:
    def __init__(self) -> None:
        self.deleted: list[str] = []

    async def delete(self, key: str) -> None:
        self.deleted.append(key)


class OneRoute:
    def __init__(self, sink: DeletingSink) -> None:
        self.sink = sink

    def route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> object:
        return self


def make_session(reports: FlakyReports, clock: ManualClock,
                 sink: DeletingSink | None = None) -> Session:
    return Session(job("j1"), reports=reports, sinks=OneRoute(sink or DeletingSink()),
                   clock=clock, options=SessionOptions())  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recording, "RECORD_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(recording, "RECORD_RETRY_MAX_S", 0.002)


async def test_a_record_the_database_refuses_is_retried_and_reported_late() -> None:
    clock = ManualClock()
    reports = FlakyReports(failures=3)
    session = make_session(reports, clock)
    captured_ms = int(clock.time() * 1000) - 30_000
    await session.recorder.record(report(captured_ms), [])
    assert reports.recorded == [captured_ms]
    assert reports.errors == [
        "snapshot recorded 30 s after capture: the database was unavailable "
        "(record_snapshot: the database failed (Locked))"]


async def test_a_record_written_at_once_says_nothing() -> None:
    reports = FlakyReports(failures=0)
    await make_session(reports, ManualClock()).recorder.record(report(1), [])
    assert reports.recorded == [1] and reports.errors == []


async def test_a_fenced_out_record_is_not_retried() -> None:
    reports = FlakyReports(failures=1, error=FencedOut("shard-0 epoch 1 was replaced"))
    with pytest.raises(FencedOut):
        await make_session(reports, ManualClock()).recorder.record(report(1), [])
    assert reports.recorded == []


async def test_a_failed_status_write_keeps_the_session_and_is_written_at_the_next_change() -> None:
    reports = FlakyReports(failures=1, error=StoreError("update_job: the database failed"))
    session = make_session(reports, ManualClock())
    await session._set_stream(StreamStatus.RECONNECTING, error="no data")  # refused, survived
    await session._set_stream(StreamStatus.RECONNECTING, error="no data")  # written now
    await session._set_stream(StreamStatus.RECONNECTING, error="no data")  # nothing new
    await session._set_stream(StreamStatus.LIVE)
    assert reports.streams == [StreamStatus.RECONNECTING, StreamStatus.LIVE]


async def test_a_record_refused_to_a_replaced_instance_takes_its_sequence_object_with_it():
    reports = FlakyReports(failures=1, error=FencedOut("shard-0 epoch 1 was replaced"))
    sink = DeletingSink()
    with pytest.raises(FencedOut):
        await make_session(reports, ManualClock(), sink).recorder.record(report(7), [])
    assert sink.deleted == ["snapshot/j1/7.jpg"]  # the overwrite object is the new owner's
    assert reports.recorded == []
