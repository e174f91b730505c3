"""Jobs that wait for their stream, end to end: submitted before the broadcast starts, paused
when it stays away past the outage window, through a server crash; a real nginx-rtmp origin,
``livesnap serve`` as a subprocess and the official SDK."""

from __future__ import annotations

import time

import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.service import LivesnapServer, ice_client, raw_job, recent_files
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

# probes of a waiting job every 2 s at most; a stream away for 4 s pauses its job
ENV = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2",
       "LIVESNAP_OUTAGE_WINDOW_S": "4"}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)


def file_count(client, job_id):
    return len(recent_files(client, job_id))


def state(server, job_id):
    job = raw_job(server, job_id)
    return job["Status"], job["StreamStatus"]


def test_a_job_waits_for_its_stream_and_starts_by_itself(tmp_path, publisher_factory):
    publisher = publisher_factory()
    publisher.stop()  # the broadcast has not begun
    with LivesnapServer(tmp_path / "data", env=ENV) as server:
        client = ice_client(server.endpoint)
        job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name="before-the-show", template_id="system", snapshot_output=OUTPUT,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(
                type="rtmp", url=publisher.url))).body.job_id
        wait_until(lambda: state(server, job_id) == ("init", "waiting"), 15, "waiting")
        assert raw_job(server, job_id)["LastError"]

        # a crash while waiting: the restarted server goes on waiting
        server.kill()
        server.start()
        assert state(server, job_id) == ("init", "waiting")
        publisher.start()
        wait_until(lambda: state(server, job_id) == ("started", "live"), 25,
                   "started by itself once live")
        wait_until(lambda: file_count(client, job_id) >= 1, 20, "a first snapshot")

        # away past the outage window: paused, and waiting again
        publisher.kill()
        wait_until(lambda: state(server, job_id) == ("paused", "waiting"), 30,
                   "paused and waiting")
        captured = file_count(client, job_id)
        publisher.start()
        wait_until(lambda: state(server, job_id) == ("started", "live"), 25, "back by itself")
        wait_until(lambda: file_count(client, job_id) > captured, 20, "captures again")

        # stop ends the waiting: a stopped job stays stopped when its stream comes back
        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
            job_id=job_id, command="stop"))
        publisher.kill()
        publisher.start()
        time.sleep(3 * 2 + 1)  # three times the longest wait between two probes
        assert state(server, job_id) == ("paused", "offline")
