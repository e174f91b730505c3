"""HTTP-FLV from a real HTTP-FLV server (node-media-server): capture through ``livesnap
serve`` and the official SDK, a publisher that drops and comes back, ``stop`` closing the
connection, a stream published after its job was submitted, and a server that is not there."""

from __future__ import annotations

import psutil
import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.servers import NodeMediaServer, Publisher, free_port
from tests.support.service import (
    LivesnapServer,
    ice_client,
    raw_job,
    recent_files,
    submit_stream,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}


@pytest.fixture(scope="module")
def nms():
    with NodeMediaServer() as server:
        yield server


def connections_to(server: LivesnapServer, port: int) -> int:
    """livesnap's open TCP connections to ``port`` on loopback."""
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    return sum(1 for c in process.net_connections(kind="tcp")
               if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def published(nms: NodeMediaServer, clip, key: str) -> Publisher:
    publisher = Publisher(clip, nms.rtmp_url(key)).start()
    return publisher


def test_http_flv_capture_drop_recovery_and_stop(tmp_path, nms, clip_720p):
    publisher = published(nms, clip_720p, "cam")
    try:
        with LivesnapServer(tmp_path / "data", env=FAST) as server:
            client = ice_client(server.endpoint)
            # by name: FFmpeg opens the checked address and sends the name as Host
            job_id = submit_stream(server, nms.flv_url("cam").replace("127.0.0.1", "localhost"))
            wait_until(lambda: len(recent_files(client, job_id)) >= 2, 40,
                       "two HTTP-FLV snapshots", detail=lambda: str(raw_job(server, job_id)))
            job = raw_job(server, job_id)
            assert (job["Status"], job["StreamStatus"]) == ("started", "live")
            assert connections_to(server, nms.http_port) == 1

            publisher.stop()  # the stream drops: the job notices and reconnects
            wait_until(lambda: raw_job(server, job_id)["StreamStatus"] == "reconnecting", 30,
                       "the job to notice the drop")
            count = len(recent_files(client, job_id))
            publisher = published(nms, clip_720p, "cam")
            wait_until(lambda: len(recent_files(client, job_id)) > count, 40,
                       "a snapshot after the stream came back",
                       detail=lambda: str(raw_job(server, job_id)))

            client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
                job_id=job_id, command="stop"))
            wait_until(lambda: connections_to(server, nms.http_port) == 0, 15,
                       "stop to close the HTTP-FLV connection")
            assert raw_job(server, job_id)["Status"] == "paused"
    finally:
        publisher.stop()


def test_a_stream_not_published_yet_is_waited_for_and_a_dead_server_is_named(
    tmp_path, nms, clip_720p
):
    # node-media-server holds a player of a stream nobody publishes until it times out
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        job_id = submit_stream(server, nms.flv_url("later"))
        wait_until(lambda: raw_job(server, job_id)["LastError"], 30, "the probe to fail")
        job = raw_job(server, job_id)
        assert (job["Status"], job["StreamStatus"]) == ("init", "waiting")
        assert job["LastError"] == "No such stream (timed out).", job
        publisher = published(nms, clip_720p, "later")
        try:  # once it is published the waiting job starts by itself
            wait_until(lambda: recent_files(client, job_id), 60, "a snapshot once published",
                       detail=lambda: str(raw_job(server, job_id)))
            assert raw_job(server, job_id)["Status"] == "started"
        finally:
            publisher.stop()
        # a server that is not there: the reason says so
        dead = submit_stream(server, f"http://127.0.0.1:{free_port()}/live/x.flv")
        wait_until(lambda: raw_job(server, dead)["LastError"], 30, "the probe to fail")
        assert raw_job(server, dead)["LastError"] == "No such stream (connection refused).", (
            raw_job(server, dead))
