"""``livesnap.node.metrics``: the hooks, the scrape-time gauges, the ops routes."""

from __future__ import annotations

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from livesnap.errors import ShardUnavailable, StoreError
from livesnap.jobs.models import DeliveryAttempt
from livesnap.node.metrics import MeteredOutbox, Metrics, Probes, ops_routes


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_every_series_exists_at_zero_before_anything_happens():
    m = Metrics(process=False)
    for status in ("init", "started", "paused"):
        assert value(m, "livesnap_jobs", status=status) == 0
    for stream in ("offline", "connecting", "live", "reconnecting"):
        assert value(m, "livesnap_streams", stream_status=stream) == 0
    for stage in ("decode", "store"):
        assert value(m, "livesnap_snapshot_failures_total", stage=stage) == 0
    assert value(m, "livesnap_build_info", version="0.1.0") == 1


def test_hooks_move_their_metrics():
    m = Metrics(process=False)
    m.snapshot_stored(0.2)
    m.snapshot_stored(-1)  # clock steps never give negative observations
    m.capture_failed("decode")
    m.reconnect()
    m.upload(0.05, ok=True)
    m.upload(1.0, ok=False)
    m.callback(0.3, ok=False)
    m.spool_size(4096)
    assert value(m, "livesnap_snapshots_total") == 2
    assert value(m, "livesnap_capture_lag_seconds_count") == 2
    assert value(m, "livesnap_capture_lag_seconds_sum") == 0.2
    assert value(m, "livesnap_snapshot_failures_total", stage="decode") == 1
    assert value(m, "livesnap_reconnects_total") == 1
    assert value(m, "livesnap_upload_seconds_count") == 2
    assert value(m, "livesnap_upload_failures_total") == 1
    assert value(m, "livesnap_callback_failures_total") == 1
    assert value(m, "livesnap_spool_bytes") == 4096


def test_job_counts_fill_jobs_and_streams_of_started_jobs_only():
    m = Metrics(process=False)
    m.set_job_counts({("started", "live"): 2, ("started", "reconnecting"): 1,
                      ("paused", "offline"): 4})
    assert value(m, "livesnap_jobs", status="started") == 3
    assert value(m, "livesnap_jobs", status="paused") == 4
    assert value(m, "livesnap_jobs", status="init") == 0
    assert value(m, "livesnap_streams", stream_status="live") == 2
    assert value(m, "livesnap_streams", stream_status="offline") == 0
    m.set_job_counts({})  # everything stopped: the gauges go back to 0
    assert value(m, "livesnap_jobs", status="started") == 0


def test_two_services_do_not_share_counters():
    a, b = Metrics(process=False), Metrics(process=False)
    a.reconnect()
    assert value(b, "livesnap_reconnects_total") == 0


class FakeOutbox:
    def __init__(self) -> None:
        self.recorded: list[DeliveryAttempt] = []

    async def due_heads(self, now_ms: int, limit: int) -> list:
        return []

    async def record_attempt(self, attempt, *, delivered, failed, next_attempt_ms,
                             may_wait=False) -> list[str]:
        self.recorded.append(attempt)
        return [] if delivered else [attempt.event_id]


async def test_metered_outbox_observes_each_recorded_attempt():
    m = Metrics(process=False)
    inner = FakeOutbox()
    outbox = MeteredOutbox(inner, m)
    for status in (200, 500, None):
        attempt = DeliveryAttempt(event_id="e", job_id="j", at_ms=1, status_code=status,
                                  latency_ms=250, error="")
        assert await outbox.record_attempt(attempt, delivered=False, failed=False,
                                           next_attempt_ms=2) == [attempt.event_id]
    assert value(m, "livesnap_callback_seconds_count") == 3
    assert value(m, "livesnap_callback_failures_total") == 2
    assert len(inner.recorded) == 3 and await outbox.due_heads(0, 1) == []


def test_adopted_families_add_to_this_process_s():
    server, child = Metrics(process=False), Metrics(process=False)
    server.upload(0.05, ok=False)  # e.g. a delete's retry from the serving process
    child.upload(0.2, ok=True)
    child.snapshot_stored(0.03)
    child.sessions.set(7)
    child.rejected.labels(verdict="black").inc()
    server.adopt(list(child.registry.collect()))
    assert value(server, "livesnap_upload_seconds_count") == 2
    assert value(server, "livesnap_upload_seconds_sum") == 0.25
    assert value(server, "livesnap_upload_seconds_bucket", le="0.1") == 1
    assert value(server, "livesnap_upload_failures_total") == 1
    assert value(server, "livesnap_snapshots_total") == 1
    assert value(server, "livesnap_capture_sessions") == 7  # the server's own is 0
    assert value(server, "livesnap_frames_rejected_total", verdict="black") == 1
    body = server.render()[0].decode()
    assert body.count("# TYPE livesnap_snapshots_total counter") == 1  # one family, not two
    def created(m: Metrics) -> float:
        return next(s.value for f in m.registry.collect() for s in f.samples
                    if s.name == "livesnap_snapshots_created")

    assert created(server) < created(child)  # made first
    assert value(server, "livesnap_snapshots_created") == created(server)  # the earlier one
    server.adopt([])  # a later adopt replaces the earlier one
    assert value(server, "livesnap_snapshots_total") == 0


def test_the_families_of_several_processes_add_up():
    server = Metrics(process=False)
    children = [Metrics(process=False) for _ in range(3)]
    for n, child in enumerate(children, start=1):
        child.sessions.set(n)
        child.upload(0.2, ok=True)
        child.rejected.labels(verdict="black" if n < 3 else "frozen").inc()
    server.adopt([family for child in children for family in child.registry.collect()])
    assert value(server, "livesnap_capture_sessions") == 1 + 2 + 3
    assert value(server, "livesnap_upload_seconds_count") == 3
    assert value(server, "livesnap_frames_rejected_total", verdict="black") == 2
    assert value(server, "livesnap_frames_rejected_total", verdict="frozen") == 1
    assert server.render()[0].decode().count("# TYPE livesnap_capture_sessions gauge") == 1


def test_families_only_the_other_processes_have_are_shown_too():
    from prometheus_client.metrics_core import GaugeMetricFamily

    server = Metrics(process=False)
    per_process = GaugeMetricFamily("livesnap_capture_process_sessions", "Sessions.",
                                    labels=["process"])
    per_process.add_metric(["local-0"], 3)
    per_process.add_metric(["local-1"], 4)
    server.adopt([per_process])
    assert value(server, "livesnap_capture_process_sessions", process="local-1") == 4
    server.adopt([])
    assert "livesnap_capture_process_sessions" not in server.render()[0].decode()


async def test_scrape_adopts_the_remote_families_and_keeps_them_when_it_fails():
    server, child = Metrics(process=False), Metrics(process=False)
    child.snapshot_stored(0.01)
    calls = []

    async def remote():
        calls.append(1)
        if len(calls) > 1:
            raise ShardUnavailable("The capture process is restarting.")
        return list(child.registry.collect())

    probe = Probes(job_counts=probes().job_counts, ping=probes().ping, sessions=lambda: 0,
                   remote=remote, timeout_s=0.2)
    assert (await get(server, probe, "/metrics")).status_code == 200
    assert value(server, "livesnap_snapshots_total") == 1
    assert (await get(server, probe, "/metrics")).status_code == 200
    assert value(server, "livesnap_snapshots_total") == 1  # counters never go back
    assert len(calls) == 2


def probes(*, counts=None, fail=False, slow=False) -> Probes:
    async def job_counts():
        if slow:
            await asyncio.sleep(1)
        if fail:
            raise StoreError("job_counts: the database failed (OperationalError)")
        return counts or {}

    async def ping():
        await job_counts()

    return Probes(job_counts=job_counts, ping=ping, sessions=lambda: 3,
                  spool_bytes=lambda: 10, timeout_s=0.2)


async def get(metrics: Metrics, probe: Probes, path: str) -> httpx.Response:
    from starlette.applications import Starlette

    app = Starlette(routes=ops_routes(metrics, probe))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        return await client.get(path)


async def test_scrape_refreshes_gauges_and_says_the_database_is_up():
    m = Metrics(process=False)
    response = await get(m, probes(counts={("init", "offline"): 5}), "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert value(m, "livesnap_jobs", status="init") == 5
    assert value(m, "livesnap_capture_sessions") == 3
    assert value(m, "livesnap_spool_bytes") == 10
    assert value(m, "livesnap_database_up") == 1


async def test_scrape_still_answers_when_the_database_fails():
    m = Metrics(process=False)
    m.set_job_counts({("init", "offline"): 5})
    for probe in (probes(fail=True), probes(slow=True)):
        response = await get(m, probe, "/metrics")
        assert response.status_code == 200
        assert value(m, "livesnap_database_up") == 0
        assert value(m, "livesnap_jobs", status="init") == 5  # last known value kept


async def test_openmetrics_when_asked_for():
    m = Metrics(process=False)
    app_probes = probes()
    from starlette.applications import Starlette

    app = Starlette(routes=ops_routes(m, app_probes))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        response = await client.get("/metrics", headers={
            "accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_readyz():
    m = Metrics(process=False)
    assert (await get(m, probes(), "/readyz")).json() == {"status": "ready"}
    for probe in (probes(fail=True), probes(slow=True)):
        response = await get(m, probe, "/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unavailable"
