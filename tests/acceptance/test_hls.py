"""HLS from nginx-rtmp's own HLS output, served over HTTP by the same nginx: capture through
``livesnap serve`` and the official SDK, a publisher that restarts, ``stop`` ending the
requests, and every URL a playlist names passing the blocked-network check (a segment on a
blocked address is never fetched; the same playlist with that address allowed is)."""

from __future__ import annotations

import http.server
import threading
import time

import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.servers import Publisher, RtmpOrigin, free_port, http_get
from tests.support.service import (
    LivesnapServer,
    ice_client,
    raw_job,
    recent_files,
    submit_stream,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "3", "LIVESNAP_RECONNECT_MAX_S": "2"}
SEGMENT_HOST = "127.0.0.2"  # loopback too, but a different address to block


@pytest.fixture(scope="module")
def hls(clip_720p):
    origin = RtmpOrigin(hls=True).start()
    publisher = Publisher(clip_720p, origin.hls_publish_url("cam")).start()
    try:
        wait_until(lambda: _has_segments(origin, "cam"), 30, "HLS segments of the stream")
        yield origin, publisher
    finally:
        publisher.stop()
        origin.stop()


def _has_segments(origin: RtmpOrigin, key: str) -> bool:
    try:
        return b".ts" in http_get(origin.hls_url(key))
    except OSError:
        return False


def test_hls_capture_restart_and_stop(tmp_path, hls):
    origin, publisher = hls
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        job_id = submit_stream(server, origin.hls_url("cam"))
        wait_until(lambda: len(recent_files(client, job_id)) >= 2, 60, "two HLS snapshots",
                   detail=lambda: str(raw_job(server, job_id)))
        assert raw_job(server, job_id)["StreamStatus"] == "live"
        asked = origin.hls_requests()
        assert "/hls/cam.m3u8" in asked and any(p.endswith(".ts") for p in asked), asked

        publisher.restart()  # the publisher goes away and comes back
        count = len(recent_files(client, job_id))
        wait_until(lambda: len(recent_files(client, job_id)) > count + 1, 90,
                   "snapshots after the publisher restarted",
                   detail=lambda: str(raw_job(server, job_id)))

        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
            job_id=job_id, command="stop"))
        time.sleep(1)  # a request in flight at the stop may still end
        before = len(origin.hls_requests())
        time.sleep(6)  # three fragments: a job still reading would have asked again
        assert len(origin.hls_requests()) == before
        assert raw_job(server, job_id)["Status"] == "paused"


class _FileServer(http.server.ThreadingHTTPServer):
    """Serves one body at any path and counts the requests."""

    def __init__(self, host: str, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type
        self.hits = 0
        super().__init__((host, free_port()), _FileHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    server: _FileServer

    def do_GET(self) -> None:
        self.server.hits += 1
        self.send_response(200)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_a_segment_on_a_blocked_address_is_never_fetched(tmp_path, hls):
    origin, _ = hls
    assert origin.directory is not None
    segment = next((origin.directory / "hls").glob("cam-*.ts")).read_bytes()
    with _FileServer(SEGMENT_HOST, segment, "video/mp2t") as other:
        # a playlist on an allowed host whose segments live on another one
        playlist = ("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:3\n"
                    "#EXT-X-MEDIA-SEQUENCE:1\n"
                    + "".join(f"#EXTINF:2.0,\n{other.base}/seg{i}.ts\n" for i in range(3)))
        with _FileServer("127.0.0.1", playlist.encode(), "application/vnd.apple.mpegurl") as home:
            url = f"{home.base}/live/elsewhere.m3u8"
            blocked = {**FAST,
                       "LIVESNAP_BLOCKED_NETWORKS": f"169.254.0.0/16,{SEGMENT_HOST}/32"}
            with LivesnapServer(tmp_path / "blocked", env=blocked) as server:
                job_id = submit_stream(server, url)
                wait_until(lambda: "blocked network" in raw_job(server, job_id)["LastError"],
                           30, "the probe to refuse the segments' host",
                           detail=lambda: str(raw_job(server, job_id)))
                assert raw_job(server, job_id)["Status"] == "init"
                assert home.hits >= 1  # the playlist itself was fetched
            assert other.hits == 0

            # the control: the same playlist with that address allowed reaches it
            with LivesnapServer(tmp_path / "allowed", env=FAST) as server:
                job_id = submit_stream(server, url)
                wait_until(lambda: other.hits > 0, 30, "the segment to be fetched",
                           detail=lambda: str(raw_job(server, job_id)))
            home.shutdown()
        other.shutdown()


def test_a_per_tick_job_reads_hls_a_playlist_and_a_segment_at_a_time(tmp_path, hls):
    """A 10 s interval connects per tick (ConnectMode auto): a playlist and a segment a tick."""
    origin, _ = hls
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        template_id = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
            template_name="every-10s", time_interval=10,
            sequence_format="hls/{JobId}/{UnixTimestamp}.jpg")).body.template_id
        job_id = submit_stream(server, origin.hls_url("cam"), name="per-tick",
                               template=template_id)
        wait_until(lambda: len(recent_files(client, job_id)) >= 2, 60, "two ticks captured",
                   detail=lambda: str(raw_job(server, job_id)))
        job = raw_job(server, job_id)
        assert (job["Status"], job["ConnectMode"]) == ("started", "auto")
        assert job["MissedTicks"] == 0
