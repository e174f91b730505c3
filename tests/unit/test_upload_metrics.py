"""Every object write of the upload queues reaches ``Metrics.upload`` through the router."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from livesnap.errors import OutputError, OutputUnavailable
from livesnap.metrics import Metrics
from livesnap.outputs.base import ObjectMeta, PendingObject, Upload
from livesnap.outputs.router import StorageRouter
from livesnap.outputs.spool import Spool, SpoolLimits, TargetUploader


def value(metrics: Metrics, name: str) -> float:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"{name} not exposed")


class Recorder:
    """Collects what the uploader reports and the records it asks for."""

    def __init__(self) -> None:
        self.stored: list[int] = []
        self.lost: list[int] = []

    def upload(self, job: str, n: int, keys: list[str]) -> Upload:
        async def on_stored() -> None:
            self.stored.append(n)

        async def on_trouble(message: str, lost: bool) -> None:
            if lost:
                self.lost.append(n)

        objects = tuple(PendingObject(key=k, meta=ObjectMeta()) for k in keys)
        return Upload(job_id=job, data=b"\xff\xd8jpeg", objects=objects,
                      on_stored=on_stored, on_trouble=on_trouble)


async def settle(predicate, what: str) -> None:
    for _ in range(300):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_router_reports_every_local_write_to_the_metrics(tmp_path):
    metrics = Metrics(process=False)
    router = StorageRouter(root=tmp_path / "storage", spool_dir=tmp_path / "spool")
    router.observe_uploads(metrics.upload)  # what the composition root does
    jobs = Recorder()
    route = router.route("acct", "local", "disk", "bucket")
    await route.uploads.submit(jobs.upload("j", 1, ["snap/j/1.jpg", "snap/j.jpg"]))
    await route.uploads.submit(jobs.upload("j", 2, ["snap/j/2.jpg", "snap/j.jpg"]))
    await settle(lambda: jobs.stored == [1, 2], "two records")
    assert (tmp_path / "storage" / "acct" / "disk" / "bucket" / "snap" / "j" / "2.jpg").exists()
    assert value(metrics, "livesnap_upload_seconds_count") == 4  # two objects per capture
    assert value(metrics, "livesnap_upload_failures_total") == 0
    await router.close(1)


async def test_routes_made_before_the_observer_is_set_report_too(tmp_path):
    metrics = Metrics(process=False)
    router = StorageRouter(root=tmp_path / "storage", spool_dir=tmp_path / "spool")
    route = router.route("acct", "local", "disk", "bucket")
    router.observe_uploads(metrics.upload)
    jobs = Recorder()
    await route.uploads.submit(jobs.upload("j", 1, ["a.jpg"]))
    await settle(lambda: jobs.stored == [1], "one record")
    assert value(metrics, "livesnap_upload_seconds_count") == 1
    await router.close(1)


class Failing:
    """Fails the first ``unavailable`` puts as retryable, then refuses ``refused`` keys."""

    def __init__(self, unavailable: int, refused: set[str]) -> None:
        self.unavailable = unavailable
        self.refused = refused
        self.stored: list[str] = []

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise OutputUnavailable("connection refused")
        if key in self.refused:
            raise OutputError("AccessDenied")
        self.stored.append(key)

    async def delete(self, key: str) -> None:
        del key


async def test_failed_writes_and_retries_are_counted_as_failures(tmp_path):
    metrics = Metrics(process=False)
    sink = Failing(unavailable=2, refused={"bad.jpg"})
    spool = Spool(tmp_path / "spool", SpoolLimits(retry_base_s=0.01, retry_max_s=0.02))
    uploader = TargetUploader(sink, spool=spool, name="t", observe=metrics.upload)
    jobs = Recorder()
    await uploader.submit(jobs.upload("j", 1, ["good.jpg"]))
    await settle(lambda: jobs.stored == [1], "the capture stored after the outage")
    await uploader.submit(jobs.upload("j", 2, ["bad.jpg"]))
    await settle(lambda: jobs.lost == [2], "the refused capture given up")
    assert sink.stored == ["good.jpg"]
    # two refused attempts during the outage + one stored + one refused for good
    assert value(metrics, "livesnap_upload_seconds_count") == 4
    assert value(metrics, "livesnap_upload_failures_total") == 3
    await uploader.close(1)


async def test_a_failing_observer_does_not_lose_the_capture(tmp_path):
    def broken(seconds: float, ok: bool) -> None:
        raise RuntimeError("observer bug")

    spool = Spool(tmp_path / "spool", SpoolLimits())
    sink = Failing(unavailable=0, refused=set())
    uploader = TargetUploader(sink, spool=spool, name="t", observe=broken)
    jobs = Recorder()
    await uploader.submit(jobs.upload("j", 1, ["a.jpg"]))
    await settle(lambda: jobs.stored == [1], "the record")
    assert sink.stored == ["a.jpg"] and jobs.lost == []
    await uploader.close(1)
