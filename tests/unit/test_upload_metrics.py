"""Every object write of the upload queues reaches ``Metrics.upload`` through the router."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from livesnap.config import StorageCredential
from livesnap.errors import OutputError, OutputUnavailable
from livesnap.node.metrics import Metrics
from livesnap.node.wiring import storage_figures
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
    stored = tmp_path / "storage" / "acct" / "disk" / "bucket" / "snap"
    # the overwrite object is the newest sequence object's file under a second name
    assert (stored / "j.jpg").stat().st_ino == (stored / "j" / "2.jpg").stat().st_ino
    assert (stored / "j.jpg").read_bytes() == b"\xff\xd8jpeg"
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


def labelled(metrics: Metrics, name: str) -> dict[str, float]:
    """The samples of ``name`` by their one label's value."""
    body, _ = metrics.render()
    return {next(iter(s.labels.values())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples if s.name == name and s.labels}


class Frozen:
    """A store that accepts a write and answers nothing until ``thaw``."""

    def __init__(self) -> None:
        self.thawed = asyncio.Event()
        self.stored: list[str] = []

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        await self.thawed.wait()
        self.stored.append(key)

    async def delete(self, key: str) -> None:
        del key


def s3_router(tmp_path, sink, limits: SpoolLimits) -> StorageRouter:
    entry = StorageCredential(storage_type="s3", endpoint="h", bucket="b", access_key_id="a",
                              access_key_secret="s")
    return StorageRouter(root=tmp_path / "storage", spool_dir=tmp_path / "spool",
                         credentials=[entry], limits=limits,
                         sink_factory=lambda cred, endpoint, bucket: sink)


async def test_a_frozen_store_shows_in_the_job_and_the_metrics_before_any_timeout(tmp_path):
    metrics = Metrics(process=False)
    sink = Frozen()
    router = s3_router(tmp_path, sink, SpoolLimits(slow_upload_s=0.2))
    route = router.route("acct", "s3", "h", "b")
    told: list[tuple[str, bool]] = []

    async def on_trouble(message: str, lost: bool) -> None:
        told.append((message, lost))

    jobs = Recorder()
    upload = jobs.upload("j", 1, ["a.jpg"])
    await route.uploads.submit(Upload(job_id="j", data=upload.data, objects=upload.objects,
                                      on_stored=upload.on_stored, on_trouble=on_trouble))
    await settle(lambda: told, "the job told of the slow upload")
    assert told == [("snapshot not stored yet: the store has not answered an upload for "
                     "0.2 s (s3:h/b)", False)]
    (state,) = router.target_states()
    assert (state.name, state.outage, state.pending, state.in_flight) == ("s3:h/b", False, 1, 1)
    assert state.oldest_in_flight_s >= 0.2
    metrics.storage_state(*storage_figures(router))
    assert labelled(metrics, "livesnap_storage_uploads_in_flight") == {"s3:h/b": 1}
    assert labelled(metrics, "livesnap_storage_oldest_upload_seconds")["s3:h/b"] >= 0.2
    assert labelled(metrics, "livesnap_storage_outage") == {"s3:h/b": 0}

    sink.thawed.set()
    await settle(lambda: jobs.stored == [1], "the record once the store answers")
    (state,) = router.target_states()
    assert (state.pending, state.in_flight, state.oldest_in_flight_s) == (0, 0, 0.0)
    metrics.storage_state(*storage_figures(router))
    metrics.storage_state(*storage_figures(router))  # a second scrape adds nothing twice
    assert labelled(metrics, "livesnap_storage_captures_total") == {
        "uploaded": 1, "spooled": 0, "dropped": 0, "failed": 0}
    assert labelled(metrics, "livesnap_storage_pending") == {"s3:h/b": 0}
    await router.close(1)


async def test_an_outage_shows_per_target_and_the_spooled_captures_are_counted(tmp_path):
    metrics = Metrics(process=False)
    sink = Failing(unavailable=1_000_000, refused=set())
    router = s3_router(tmp_path, sink, SpoolLimits(retry_base_s=5, retry_max_s=5))
    route = router.route("acct-a", "s3", "h", "b")
    other = router.route("acct-b", "s3", "h", "b")  # another account's route, same target
    jobs = Recorder()
    await route.uploads.submit(jobs.upload("j", 1, ["a.jpg"]))
    await settle(lambda: router.outages, "the outage")
    await route.uploads.submit(jobs.upload("j", 2, ["b.jpg"]))
    await other.uploads.submit(jobs.upload("k", 3, ["c.jpg"]))
    metrics.storage_state(*storage_figures(router))
    assert labelled(metrics, "livesnap_storage_outage") == {"s3:h/b": 1}
    assert labelled(metrics, "livesnap_storage_pending") == {"s3:h/b": 3}
    assert labelled(metrics, "livesnap_storage_captures_total")["spooled"] >= 2
    await router.close(0.1)
