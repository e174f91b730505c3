"""RTSP cameras end to end: Debian's GStreamer RTSP server (H.264 and H.265, digest
authentication), ``livesnap serve`` as a subprocess, the official SDK, snapshots on local disk."""

from __future__ import annotations

import pytest
import simplejpeg
from alibabacloud_ice20201109 import models as m

from tests.support.servers import RtspServer
from tests.support.service import LivesnapServer, ice_client, raw_job, recent_files
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)
PASSWORD = "pa55-word"


def submit(client, url, name="camera"):
    # ICE's StreamInput.Type knows only "rtmp"; livesnap reads the protocol from the URL
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=name, template_id="system", snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def file_keys(client, job_id):
    return [f.oss_object for f in recent_files(client, job_id)]


def picture_size(server, key):
    data = (server.storage_dir() / OUTPUT.endpoint / OUTPUT.bucket / key).read_bytes()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    assert simplejpeg.decode_jpeg(data).shape == (height, width, 3)
    return width, height


@pytest.mark.parametrize(("codec", "transport"), [("h264", "tcp"), ("h265", "tcp"),
                                                   ("h264", "udp")])
def test_a_camera_with_a_password_is_captured_and_released(tmp_path, codec, transport):
    with (RtspServer(codec=codec, user="viewer", password=PASSWORD) as camera,
          LivesnapServer(tmp_path / "data",
                         env={**FAST, "LIVESNAP_RTSP_TRANSPORT": transport}) as server):
        client = ice_client(server.endpoint)
        # by name: the reader resolves it once and FFmpeg opens the checked address
        url = camera.url().replace("127.0.0.1", "localhost")
        job_id = submit(client, url)
        keys = wait_until(lambda: (k := file_keys(client, job_id)) and len(k) >= 2 and k, 40,
                          "two snapshots")
        assert all(picture_size(server, key) == (640, 360) for key in keys)
        job = raw_job(server, job_id)
        assert (job["Status"], job["StreamStatus"]) == ("started", "live")
        assert job["StreamInput"]["Url"] == url  # to its own account, as submitted
        assert camera.client_connections() == 1
        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
            job_id=job_id, command="stop"))
        wait_until(lambda: camera.client_connections() == 0, 10, "the connection released")
        assert PASSWORD not in server.log()


def test_a_wrong_password_is_a_clear_error(tmp_path):
    with (RtspServer(user="viewer", password=PASSWORD) as camera,
          LivesnapServer(tmp_path / "data", env=FAST) as server):
        client = ice_client(server.endpoint)
        job_id = submit(client, camera.url(password="n0t-the-pa55"))
        job = wait_until(lambda: (j := raw_job(server, job_id))["LastError"] and j, 20,
                         "the refused open recorded")
        assert "401 Unauthorized" in job["LastError"], job["LastError"]
        assert job["Status"] != "started" and file_keys(client, job_id) == []
        # the URL and its password are not repeated
        assert "n0t-the-pa55" not in job["LastError"] and "n0t-the-pa55" not in server.log()


def test_a_camera_that_hangs_or_restarts_is_reconnected(tmp_path):
    with (RtspServer(codec="h264") as camera,
          LivesnapServer(tmp_path / "data", env=FAST) as server):
        client = ice_client(server.endpoint)
        job_id = submit(client, camera.url())
        wait_until(lambda: len(file_keys(client, job_id)) >= 1, 30, "a first snapshot")

        # frozen: the connection stays open and nothing arrives (RTSP's own I/O timeout)
        camera.freeze()
        try:
            wait_until(lambda: raw_job(server, job_id)["StreamStatus"] == "reconnecting", 15,
                       "the stall noticed")
        finally:
            camera.thaw()
        before = len(file_keys(client, job_id))
        wait_until(lambda: len(file_keys(client, job_id)) >= before + 2, 40, "captures resumed")

        # restarted: the connection is closed, the port answers again a moment later
        camera.restart()
        before = len(file_keys(client, job_id))
        wait_until(lambda: len(file_keys(client, job_id)) >= before + 2, 40,
                   "captures after the restart")
        job = raw_job(server, job_id)
        assert (job["Status"], job["StreamStatus"]) == ("started", "live")


def test_a_camera_is_captured_per_tick(tmp_path):
    """A 10 s interval connects per tick (ConnectMode auto): connect, one keyframe, let go."""
    with (RtspServer(codec="h265") as camera,
          LivesnapServer(tmp_path / "data", env=FAST) as server):
        client = ice_client(server.endpoint)
        template_id = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
            template_name="every-10s", time_interval=10,
            sequence_format="cam/{JobId}/{UnixTimestamp}.jpg")).body.template_id
        job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name="per-tick", template_id=template_id, snapshot_output=OUTPUT,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(
                type="rtmp", url=camera.url()))).body.job_id
        assert raw_job(server, job_id)["ConnectMode"] == "auto"
        keys = wait_until(lambda: (k := file_keys(client, job_id)) and len(k) >= 2 and k, 45,
                          "two ticks captured")
        assert all(picture_size(server, key) == (640, 360) for key in keys)
        # between ticks the camera has no connection from livesnap
        wait_until(lambda: camera.client_connections() == 0, 12, "the connection let go")
        assert raw_job(server, job_id)["Status"] == "started"
