"""Publish hooks with a real nginx-rtmp: ``on_publish`` / ``on_publish_done`` call
``livesnap serve``'s ``/hooks/streams``, which starts the job waiting for that stream at once
(instead of at its next probe) and reconnects a started job when its stream comes back."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_capture_e2e import OUTPUT
from tests.support.servers import Publisher, RtmpOrigin, wait_stream_live
from tests.support.service import LivesnapServer, ice_client, raw_job, recent_files
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

TOKEN = "hook-token-for-the-tests-0123"
# Waiting jobs are probed after 2 s, 4 s, 8 s, 16 s (±20 %): after two failed probes the
# job's own next probe is at least 6.4 s away, far more than the hook needs.
ENV = {"LIVESNAP_HOOK_TOKEN": TOKEN, "LIVESNAP_RECONNECT_MAX_S": "60",
       "LIVESNAP_RW_TIMEOUT_S": "2"}


def hooked_origin(server: LivesnapServer) -> RtmpOrigin:
    hook = f"http://{server.endpoint}/hooks/streams?token={TOKEN}"
    # idle_streams off: a play of a stream nobody publishes is refused at once (a probe does
    # not hang), and players are dropped when the publisher leaves
    return RtmpOrigin(app_extra=f"      idle_streams off;\n      on_publish {hook};\n"
                                f"      on_publish_done {hook};").start()


def plays(origin: RtmpOrigin, key: str) -> int:
    """How many play sessions of ``key`` the origin has logged (each ends with a line)."""
    assert origin.directory is not None
    log = (origin.directory / "logs" / "rtmp-access.log").read_text(errors="replace")
    return len(re.findall(rf'PLAY "live" "{re.escape(key)}"', log))


def test_on_publish_starts_a_waiting_job_and_on_publish_done_reconnects_it(
    tmp_path, clip_720p
):
    with LivesnapServer(tmp_path / "data", env=ENV) as server:
        origin = hooked_origin(server)
        publisher = Publisher(clip_720p, origin.url("cam"))
        try:
            client = ice_client(server.endpoint)
            job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
                job_name="hooked", template_id="system", snapshot_output=OUTPUT,
                stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(
                    type="rtmp", url=origin.url("cam") + "?viewer=1"))).body.job_id
            wait_until(lambda: plays(origin, "cam") >= 3, 30,
                       "the probe at submit and two of the job's own probes",
                       detail=lambda: str(raw_job(server, job_id)))
            job = raw_job(server, job_id)
            assert (job["Status"], job["StreamStatus"]) == ("init", "waiting")

            published = time.monotonic()
            publisher.start()
            wait_stream_live(origin, "cam", publisher=publisher)
            wait_until(lambda: recent_files(client, job_id), 30, "the first snapshot")
            first_s = time.monotonic() - published
            job = raw_job(server, job_id)
            # started by the hook, not by the job's own next probe
            assert job["StatusReason"] == "stream published (publish hook)", (job, first_s)
            assert job["Status"] == "started"

            # the publisher leaves and comes back: the job is connected again by the hook
            publisher.stop()
            wait_until(lambda: raw_job(server, job_id)["StreamStatus"] != "live", 30,
                       "the job notices the stream is gone")
            count = len(recent_files(client, job_id))
            publisher = Publisher(clip_720p, origin.url("cam"))
            publisher.start()
            wait_until(lambda: len(recent_files(client, job_id)) > count, 30,
                       "a snapshot after the stream is back")
            log = server.log()
            assert "job reconnected by a publish hook" in log
            assert re.search(r"publish hook .*call=publish_done.*jobs=1", log), log[-3000:]
        finally:
            publisher.stop()
            origin.stop()


def test_a_hook_with_a_wrong_token_is_refused_and_nginx_refuses_the_publisher(
    tmp_path, clip_720p
):
    with LivesnapServer(tmp_path / "data", env=ENV) as server:
        resp = httpx.post(f"http://{server.endpoint}/hooks/streams?token=wrong",
                          data={"call": "publish", "app": "live", "name": "x",
                                "tcurl": "rtmp://127.0.0.1/live"}, timeout=10)
        assert resp.status_code == 403 and resp.json()["Code"] == "Forbidden"
        # an origin pointed at livesnap with the wrong token lets nobody publish: the mistake
        # shows at once instead of jobs that silently never start
        hook = f"http://{server.endpoint}/hooks/streams?token=wrong"
        origin = RtmpOrigin(app_extra=f"      on_publish {hook};").start()
        publisher = Publisher(clip_720p, origin.url("cam")).start()
        try:
            with pytest.raises((TimeoutError, RuntimeError)):
                wait_stream_live(origin, "cam", timeout=5, publisher=publisher)
        finally:
            publisher.stop()
            origin.stop()
