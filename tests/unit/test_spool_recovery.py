"""A capture an earlier process spooled: rebuilt from its note, sequence object only."""

from __future__ import annotations

from pathlib import Path

from tests.contract.test_store_contract import job, snap

from livesnap.capture import recording
from livesnap.clock import ManualClock
from livesnap.jobs.models import Job, SnapshotFile, Verdict
from livesnap.jobs.ports import CaptureReport
from livesnap.outputs.base import ObjectMeta, PendingObject, SpooledCapture


class Reports:
    def __init__(self) -> None:
        self.recorded: list[CaptureReport] = []
        self.errors: list[str] = []

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        self.recorded.append(report)
        return snap(job.id, report.create_ms)

    async def storage_changed(self, job_id: str, error: str) -> None:
        self.errors.append(error)


def spooled(report: CaptureReport, keys: list[str]) -> SpooledCapture:
    return SpooledCapture(
        seq=7, path=Path("/nonexistent/7.capture"), offset=100, size=10, created=1.0,
        job_id=report.job_id,
        objects=tuple(PendingObject(key=k, meta=ObjectMeta()) for k in keys),
        note=recording._note(report))


def report(sequence_key: str | None) -> CaptureReport:
    return CaptureReport(job_id="j1", create_ms=1_700_000_000_000, sequence=3,
                         sequence_key=sequence_key, overwrite_key="j1/latest.jpg", width=64,
                         height=36, size=10, stream_time_ms=None, lag_ms=40,
                         quality=Verdict.OK, skipped_frames=1, missed_ticks=2)


async def test_only_the_sequence_object_is_stored_again_and_the_same_report_recorded():
    reports = Reports()
    original = report("j1/3.jpg")
    upload = recording.recovered_upload(
        spooled(original, ["j1/3.jpg", "j1/latest.jpg", "j1/latest.json"]), job("j1"),
        reports=reports, clock=ManualClock())  # type: ignore[arg-type]
    assert not isinstance(upload, str)
    assert [o.key for o in upload.objects] == ["j1/3.jpg"]  # the overwrite object stays newer
    await upload.on_stored()
    assert reports.recorded == [original]
    await upload.on_trouble("storage: the store is away", False)
    assert reports.errors == ["storage: the store is away"]


def test_a_capture_with_only_an_overwrite_object_is_not_stored_again():
    made = recording.recovered_upload(
        spooled(report(None), ["j1/latest.jpg"]), job("j1"), reports=Reports(),  # type: ignore[arg-type]
        clock=ManualClock())
    assert made == "it has only an overwrite object, which newer captures replace"


def test_a_note_that_cannot_be_read_or_names_another_job_is_refused():
    broken = spooled(report("j1/3.jpg"), ["j1/3.jpg"])
    for note in ("{", '{"job_id": "j1"}', recording._note(report("j1/3.jpg")).replace('"j1"', '"j2"')):
        made = recording.recovered_upload(
            SpooledCapture(**{**broken.__dict__, "note": note}), job("j1"),
            reports=Reports(), clock=ManualClock())  # type: ignore[arg-type]
        assert made == "its description cannot be read"
