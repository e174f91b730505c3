"""A tick that ends without a file counts in ``MissedTicks`` once: at once when the session
knows why (the quality gate or a decode error lost it, an outage paused the job), otherwise at
the next capture, which leaves out what was counted already."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.contract.test_store_contract import job, snap

from livesnap.capture.encode import EncodedImage
from livesnap.capture.session import Session, SessionOptions
from livesnap.capture.source import CapturedFrame
from livesnap.clock import ManualClock
from livesnap.jobs.models import Job, SnapshotFile, StreamStatus, Verdict
from livesnap.jobs.ports import CaptureReport
from livesnap.outputs.base import Route, Upload

INTERVAL_MS = 5_000


@dataclass
class Reports:
    """``CaptureReports`` that keeps what it is told."""

    counted: list[int] = field(default_factory=list)  # ticks_missed counts
    recorded: list[CaptureReport] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        self.recorded.append(report)
        return snap(job.id, report.create_ms)

    async def stream_changed(self, job_id: str, stream_status: StreamStatus, *,
                             error: str = "") -> None: ...

    async def stream_gone(self, job_id: str, reason: str) -> None:
        self.gone.append(reason)

    async def next_sequence(self, job_id: str) -> int:
        return 1

    async def effective_interval(self, job_id: str, interval_ms: int) -> None: ...

    async def storage_changed(self, job_id: str, error: str) -> None: ...

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None:
        self.verdicts.append(verdict)

    async def ticks_missed(self, job_id: str, count: int) -> None:
        self.counted.append(count)

    async def check_host(self, name: str, host: str) -> None: ...

    @property
    def total(self) -> int:
        return sum(self.counted) + sum(r.missed_ticks for r in self.recorded)


class StoreAtOnce:
    """An upload queue and router that "store" each capture at once."""

    async def submit(self, upload: Upload) -> None:
        await upload.on_stored()

    def route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> Route:
        return Route(sink=None, uploads=self, description="test")  # type: ignore[arg-type]


def make(clock: ManualClock, *, outage_window_s: float = 1800.0) -> tuple[Session, Reports]:
    reports = Reports()
    # a job that was running already: ticks count from its last snapshot
    running = job("j1", last_snapshot_ms=int(clock.time() * 1000))
    session = Session(running, reports=reports, sinks=StoreAtOnce(),  # type: ignore[arg-type]
                      clock=clock, options=SessionOptions(outage_window_s=outage_window_s))
    return session, reports


async def capture(session: Session, clock: ManualClock) -> None:
    image = EncodedImage(data=b"\xff\xd8jpeg\xff\xd9", width=64, height=36)
    now = clock.time()
    await session.recorder.capture(CapturedFrame(
        image=image, stream_time=None, arrival_wall=now, encoded_wall=now, verdict=Verdict.OK,
        skipped=0), [])


async def test_gate_missed_ticks_count_at_once_and_not_again_at_the_next_capture() -> None:
    clock = ManualClock()
    session, reports = make(clock)
    for _ in range(3):  # three ticks of a frozen picture, each ending without a file
        clock.advance(INTERVAL_MS / 1000)
        await session.recorder.tick_missed(Verdict.FROZEN)
    assert reports.counted == [1, 1, 1] and reports.recorded == []
    assert reports.verdicts == [Verdict.FROZEN] * 3  # LastError says why
    clock.advance(INTERVAL_MS / 1000)
    await capture(session, clock)  # the fourth tick has a picture again
    assert [r.missed_ticks for r in reports.recorded] == [0]
    assert reports.total == 3
    assert reports.verdicts[-1] is Verdict.OK  # and LastError is cleared


async def test_ticks_lost_without_a_reason_are_counted_by_the_next_capture() -> None:
    clock = ManualClock()
    session, reports = make(clock)
    clock.advance(3 * INTERVAL_MS / 1000)  # ticks 1 and 2 had no keyframe (a short outage)
    await capture(session, clock)
    assert reports.counted == [] and [r.missed_ticks for r in reports.recorded] == [2]


async def test_a_gate_miss_inside_an_outage_is_not_counted_twice() -> None:
    clock = ManualClock()
    session, reports = make(clock)
    clock.advance(INTERVAL_MS / 1000)
    await session.recorder.tick_missed(Verdict.BLACK)
    clock.advance(3 * INTERVAL_MS / 1000)  # then two ticks with nothing at all
    await capture(session, clock)
    assert reports.total == 3


async def test_an_outage_that_pauses_the_job_counts_its_ticks_before_the_pause() -> None:
    clock = ManualClock()
    session, reports = make(clock, outage_window_s=60)
    since = clock.monotonic()
    clock.advance(INTERVAL_MS / 1000)
    await session.recorder.tick_missed(Verdict.DECODE_ERROR)
    clock.advance(60 - INTERVAL_MS / 1000)
    assert await session._outage_over(since, "connection refused")
    # 60 s after the last capture: 11 ticks whose window has ended, one counted already
    assert reports.counted == [1, 10] and len(reports.gone) == 1
