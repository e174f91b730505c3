"""Jobs on the same stream share one connection, end to end: a real nginx-rtmp origin, a
looping ffmpeg publisher, ``livesnap serve`` as a subprocess and the official SDK. The
origin's ``/stat`` counts the players of the stream."""

from __future__ import annotations

import time

import pytest

from tests.acceptance.test_capture_e2e import get_job, raw_job
from tests.acceptance.test_capture_process import metric
from tests.acceptance.test_per_tick import FAST, capture_times, command, players, submit
from tests.support.service import LivesnapServer, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]


def most_players(origin, url: str, seconds: float) -> int:
    """The most players the origin counted on ``url`` over ``seconds`` (ten looks a second)."""
    most, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        most = max(most, players(origin, url))
        time.sleep(0.1)
    return most


def test_jobs_on_one_stream_share_its_connection_and_a_stopped_one_leaves_it_to_the_others(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        jobs = [submit(server, "system", publisher.url) for _ in range(3)]
        # a per-tick job on the same stream joins the open connection for its ticks
        per_tick = submit(server, "system", publisher.url, ConnectMode="per-tick")
        for job_id in [*jobs, per_tick]:
            wait_until(lambda j=job_id: len(capture_times(client, j)) >= 2, 30,
                       f"two captures of {job_id}")
        assert most_players(rtmp_origin, publisher.url, 3) == 1
        assert metric(server, "livesnap_capture_sessions") == 4
        assert metric(server, "livesnap_stream_connections") == 1

        command(server, jobs[0], "stop")
        assert raw_job(server, jobs[0])["Status"] == "paused"
        stopped_at = int(time.time() * 1000)
        for job_id in jobs[1:]:
            wait_until(lambda j=job_id: [t for t in capture_times(client, j) if t > stopped_at],
                       15, f"a capture of {job_id} after another job stopped")
            job = raw_job(server, job_id)
            assert (job["Status"], job["StreamStatus"], job["LastError"]) == (
                "started", "live", "")
        assert not [t for t in capture_times(client, jobs[0]) if t > stopped_at]
        assert most_players(rtmp_origin, publisher.url, 2) == 1

        for job_id in [*jobs[1:], per_tick]:
            command(server, job_id, "stop")
        wait_until(lambda: players(rtmp_origin, publisher.url) == 0, 10,
                   "the connection closed with its last job")
        assert all(get_job(client, j).status == "paused" for j in [*jobs, per_tick])


def test_with_sharing_off_every_job_holds_a_connection_of_its_own(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    env = {**FAST, "LIVESNAP_SHARE_STREAMS": "false"}
    with LivesnapServer(tmp_path / "data", env=env) as server:
        client = ice_client(server.endpoint)
        jobs = [submit(server, "system", publisher.url) for _ in range(2)]
        for job_id in jobs:
            wait_until(lambda j=job_id: capture_times(client, j), 30, f"a capture of {job_id}")
        wait_until(lambda: players(rtmp_origin, publisher.url) == 2, 10, "two players")
