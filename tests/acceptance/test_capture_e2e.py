"""End to end through the official SDK: a real nginx-rtmp origin, a looping ffmpeg publisher
(H.264 with B-frames), ``livesnap serve`` as a subprocess, snapshots on local disk."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import simplejpeg
from alibabacloud_ice20201109 import models as m
from Tea.exceptions import TeaException

from tests.support.service import LivesnapServer, core_client, core_request, ice_client, raw_job
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def list_files(client, job_id):
    now = datetime.now(tz=UTC)
    files, start = [], iso(now - timedelta(hours=1))
    while True:
        body = client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
            job_id=job_id, start_time=start, end_time=iso(now + timedelta(minutes=5)), limit=100)).body
        files += body.file_list
        if not body.next_start_time:
            return files
        start = body.next_start_time


def get_job(client, job_id):
    return client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body


def storage_path(server, key):
    return server.storage_dir() / OUTPUT.endpoint / OUTPUT.bucket / key


def assert_jpeg(path: Path, size=(1280, 720)):
    data = path.read_bytes()
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    assert (width, height) == size
    assert simplejpeg.decode_jpeg(data).shape == (size[1], size[0], 3)


def submit(client, url):
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="e2e", template_id="system", snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def test_live_stream_to_snapshots_through_drops_and_crashes(tmp_path, publisher_factory):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        job_id = submit(client, publisher.url)
        # Submit probes in the background: the job starts by itself because the stream is live
        wait_until(lambda: get_job(client, job_id).status == "started", 20, "job started")
        files = wait_until(lambda: (f := list_files(client, job_id)) and len(f) >= 3 and f, 45,
                           "three snapshots")
        assert all(not f.is_overlay for f in files)
        for f in files:
            assert f.oss_object == f"snapshot/{job_id}/{f.create_timestamp}.jpg"
            assert_jpeg(storage_path(server, f.oss_object))
        assert_jpeg(storage_path(server, f"snapshot/{job_id}.jpg"))
        gaps = [b.create_timestamp - a.create_timestamp for a, b in itertools.pairwise(files)]
        assert all(3500 <= g <= 7500 for g in gaps), gaps  # 5 s ticks on a 2 s GOP
        info = raw_job(server, job_id)
        assert info["StreamStatus"] == "live" and info["SnapshotCount"] >= 3

        # the publisher dies: the job stays started and reconnects; it comes back by itself
        publisher.kill()
        wait_until(lambda: raw_job(server, job_id)["StreamStatus"] == "reconnecting", 15, "reconnecting")
        assert get_job(client, job_id).status == "started"
        before = len(list_files(client, job_id))
        publisher.restart()
        wait_until(lambda: raw_job(server, job_id)["StreamStatus"] == "live", 25, "live again")
        wait_until(lambda: len(list_files(client, job_id)) >= before + 2, 20, "captures resumed")

        # capture now: one snapshot at the next keyframe, its object key in the answer
        acs = core_client(server.endpoint)
        shot = json.loads(acs.do_action_with_exception(core_request(
            "SendLiveSnapshotJobCommand", "POST", body={"JobId": job_id, "Command": "capture"})))
        assert_jpeg(storage_path(server, shot["Snapshot"]["OssObject"]))

        # SIGKILL the server: after a restart the job resumes and no record is duplicated
        server.kill()
        killed_at = len(list_files(ice_client(server.start().endpoint), job_id))
        client = ice_client(server.endpoint)
        assert get_job(client, job_id).status == "started"
        wait_until(lambda: len(list_files(client, job_id)) >= killed_at + 2, 25, "resumed after kill")
        files = list_files(client, job_id)
        stamps = [f.create_timestamp for f in files]
        assert len(stamps) == len(set(stamps)) and stamps == sorted(stamps)
        for f in files:
            assert storage_path(server, f.oss_object).exists()

        # stop: paused, and no new files
        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop"))
        assert get_job(client, job_id).status == "paused"
        stopped = len(list_files(client, job_id))
        time.sleep(7)
        assert len(list_files(client, job_id)) == stopped
        assert raw_job(server, job_id)["StreamStatus"] == "offline"

        # start again works while live; a second start is a conflict
        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="start"))
        with pytest.raises(TeaException) as info:
            client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="start"))
        assert (info.value.code, info.value.status_code) == ("JobAlreadyStarted", 409)

        # SIGTERM with a running session ends the process promptly
        took = server.terminate(30)
        assert took < 15, took
        assert server.proc.returncode == 0, server.log()[-2000:]
