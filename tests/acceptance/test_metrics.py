"""``/metrics``, ``/readyz`` and ``/healthz`` of ``livesnap serve`` while a job captures a live
nginx-rtmp stream; scrapes parsed with the Prometheus text parser."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from livesnap.client import Credentials, IceClient
from tests.support.service import LivesnapServer

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
OUTPUT = {"StorageType": "oss", "Endpoint": "oss-cn-shanghai.aliyuncs.com", "Bucket": "bucket-m"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str) -> Samples:
    response = httpx.get(f"{base}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wait_for(base: str, check: Callable[[Samples], bool], what: str, timeout: float = 25) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def receiver() -> Iterator[str]:
    """A callback endpoint that answers 200 to every POST."""

    class Ok(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    httpd.shutdown()
    httpd.server_close()


def status_counts(client: IceClient) -> dict[str, int]:
    counts = {}
    for status in ("init", "started", "paused"):
        body = client.call("ListLiveSnapshotJobs", {"Status": status, "PageSize": "1"})
        counts[status] = body["TotalCount"]
    return counts


def submit(client: IceClient, url: str, callback_url: str) -> str:
    return client.call("SubmitLiveSnapshotJob", {
        "JobName": "metrics", "TemplateId": "system", "CallbackUrl": callback_url,
        "StreamInput": json.dumps({"Type": "rtmp", "Url": url}),
        "SnapshotOutput": json.dumps(OUTPUT),
    })["JobId"]


def test_metrics_follow_a_capturing_job(tmp_path, publisher_factory, receiver):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        base = f"http://{server.endpoint}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        before = scrape(base)
        assert metric(before, "livesnap_snapshots_total") == 0
        assert metric(before, "livesnap_database_up") == 1

        client = IceClient(endpoint=base, credentials=Credentials(
            access_key_id="testid", access_key_secret="testsecret"))
        job_id = submit(client, publisher.url, receiver)
        live = wait_for(base, lambda s: metric(s, "livesnap_snapshots_total") >= 2
                        and metric(s, "livesnap_callback_seconds_count") >= 1,
                        "two snapshots and a callback")
        assert metric(live, "livesnap_capture_lag_seconds_count") >= 2
        assert metric(live, "livesnap_capture_lag_seconds_sum") < 5 * 2
        assert metric(live, "livesnap_snapshot_failures_total", stage="decode") == 0
        assert metric(live, "livesnap_callback_failures_total") == 0
        assert metric(live, "livesnap_upload_seconds_count") >= 2  # every object write timed
        assert metric(live, "livesnap_upload_failures_total") == 0

        # the gauges agree with the API, and the counter keeps moving while the job captures
        counts = status_counts(client)
        assert counts == {"init": 0, "started": 1, "paused": 0}
        for status, count in counts.items():
            assert metric(live, "livesnap_jobs", status=status) == count
        assert metric(live, "livesnap_streams", stream_status="live") == 1
        assert metric(live, "livesnap_capture_sessions") == 1
        taken = metric(live, "livesnap_snapshots_total")
        wait_for(base, lambda s: metric(s, "livesnap_snapshots_total") > taken, "one more")

        client.call("SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "stop"})
        stopped = scrape(base)
        assert metric(stopped, "livesnap_jobs", status="paused") == 1
        assert metric(stopped, "livesnap_jobs", status="started") == 0
        assert metric(stopped, "livesnap_streams", stream_status="live") == 0
        assert metric(stopped, "livesnap_capture_sessions") == 0
        client.close()
