"""Callbacks against ``livesnap serve`` (a subprocess) and a real HTTP receiver: failed events
replayed through ``ReplayLiveSnapshotCallbacks``, and a configured block list enforced at
Submit and again at delivery time (an event written while its host was allowed is refused,
not sent, once the host's addresses are blocked).

Capture is off: the events are job status changes (``stop`` of an ``init`` job), so no stream
is needed."""

from __future__ import annotations

import json
import time

import pytest
from alibabacloud_ice20201109 import models as m
from aliyunsdkcore.acs_exception.exceptions import ServerException
from Tea.exceptions import TeaException

from tests.integration.test_callbacks_real import KEY, Receiver
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance

STATUS = "LiveSnapshotJobStatusChanged"
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1")
STREAM = m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url="rtmp://127.0.0.1:9/live/x")
BASE_ENV = {"LIVESNAP_CAPTURE": "false", "LIVESNAP_CALLBACK_KEYS": f"acct-a:{KEY}"}


def submit(client, callback_url: str) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="hooks", template_id="system", stream_input=STREAM, snapshot_output=OUTPUT,
        callback_url=callback_url)).body.job_id


def stop(client, job_id: str) -> None:
    client.send_live_snapshot_job_command(
        m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop"))


def call(server: LivesnapServer, action: str, key: str = "testid", secret: str = "testsecret",
         **params: str) -> dict:
    acs = core_client(server.endpoint, key=key, secret=secret)
    return json.loads(acs.do_action_with_exception(core_request(action, "POST", body=params)))


def attempts(server: LivesnapServer, job_id: str) -> list[dict]:
    return call(server, "ListLiveSnapshotCallbackAttempts", JobId=job_id, Limit="100")[
        "AttemptList"]


def settled(server: LivesnapServer, job_id: str, at_least: int) -> list[dict] | None:
    """The attempt log once it has ``at_least`` entries and stopped growing for 1.5 s."""
    before = attempts(server, job_id)
    if len(before) < at_least:
        return None
    time.sleep(1.5)
    after = attempts(server, job_id)
    return after if len(after) == len(before) else None


@pytest.mark.timeout(90)
def test_failed_events_are_replayed_with_their_id_and_body(tmp_path):
    env = {**BASE_ENV, "LIVESNAP_CALLBACK_MAX_AGE_S": "1",
           "LIVESNAP_CALLBACK_BACKOFF_BASE_S": "0.05", "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "0.1"}
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=env) as server:
        receiver.set_mode("fail")
        client = ice_client(server.endpoint)
        job_id = submit(client, receiver.url)
        stop(client, job_id)  # init -> paused: one status event, refused with 500 until failed

        # past its maximum age (and the minimum number of attempts) the event is given up
        log = wait_until(lambda: settled(server, job_id, 10), 30, "the event to be given up")
        assert all(a["StatusCode"] == 500 and a["Error"] == "HTTP 500" for a in log)
        failed = {d.event["EventId"]: d.body for d in receiver.snapshot()}
        assert len(failed) >= 1
        assert all(json.loads(body)["EventType"] == STATUS for body in failed.values())
        receiver.set_mode("ok")
        seen = len(receiver.snapshot())
        time.sleep(2)
        assert len(receiver.snapshot()) == seen  # a failed event is not retried by itself

        # another account cannot replay this job's events
        with pytest.raises(ServerException) as info:
            call(server, "ReplayLiveSnapshotCallbacks", key="otherid", secret="othersecret",
                 JobId=job_id)
        assert info.value.get_error_code() == "JobNotFound"

        replayed = call(server, "ReplayLiveSnapshotCallbacks", JobId=job_id)
        assert replayed["Requeued"] == len(failed) and replayed["RequestId"]
        acked = wait_until(lambda: (a := receiver.acked(STATUS)) and set(a) == set(failed) and a,
                           20, "the replayed events")
        for event_id, delivery in acked.items():
            assert delivery.body == failed[event_id]  # same id, same bytes
            assert delivery.signed()
            assert delivery.headers["x-livesnap-event-id"] == event_id
        assert delivery.event["NewStatus"] == "paused"
        assert call(server, "ReplayLiveSnapshotCallbacks", JobId=job_id)["Requeued"] == 0
        assert any(a["StatusCode"] == 200 for a in attempts(server, job_id))


def test_submit_refuses_a_callback_in_a_configured_blocked_network(tmp_path):
    env = {**BASE_ENV, "LIVESNAP_BLOCKED_NETWORKS": "169.254.0.0/16,127.0.0.2/32"}
    with LivesnapServer(tmp_path / "data", env=env) as server:
        client = ice_client(server.endpoint)
        for url in ("http://127.0.0.2:8000/hook", "http://169.254.169.254/latest"):
            with pytest.raises(TeaException) as info:
                submit(client, url)
            assert (info.value.code, info.value.status_code) == ("InvalidParameter", 400)
            assert "CallbackUrl points to a blocked network address" in info.value.message
        for url in ("ftp://127.0.0.1/hook", "file:///etc/passwd"):
            with pytest.raises(TeaException) as info:
                submit(client, url)
            assert (info.value.code, info.value.status_code) == ("InvalidParameter", 400)
        listed = client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest()).body
        assert listed.total_count == 0  # nothing refused was stored
        assert submit(client, "http://127.0.0.1:8000/hook")  # outside the list: accepted


@pytest.mark.timeout(120)
def test_an_event_to_a_host_blocked_since_is_refused_at_delivery(tmp_path):
    env = {**BASE_ENV, "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "1"}
    with Receiver() as receiver:
        url = receiver.url.replace("127.0.0.1", "localhost")
        server = LivesnapServer(tmp_path / "data", env=env)
        with server:
            receiver.set_mode("fail")
            client = ice_client(server.endpoint)
            job_id = submit(client, url)  # localhost is allowed by the default list
            stop(client, job_id)
            wait_until(lambda: receiver.snapshot(), 20, "a first (refused) delivery")
        receiver.set_mode("ok")
        seen = len(receiver.snapshot())

        # the operator blocks loopback: the pending event must not be sent any more
        blocked = {**env, "LIVESNAP_BLOCKED_NETWORKS": "169.254.0.0/16,127.0.0.0/8,::1/128"}
        server = LivesnapServer(tmp_path / "data", env=blocked)
        with server:
            refused = wait_until(
                lambda: [a for a in attempts(server, job_id) if a["Error"].startswith("refused:")],
                30, "a refused attempt")
            assert refused[0]["StatusCode"] is None
            assert refused[0]["Error"].startswith("refused: localhost resolves to ")
            assert "which is in a blocked network" in refused[0]["Error"]
            with pytest.raises(TeaException) as info:  # (its stream is on loopback too)
                submit(ice_client(server.endpoint), url)
            assert info.value.code == "InvalidParameter"
            assert "points to a blocked network address (127.0.0.1)" in info.value.message
        assert len(receiver.snapshot()) == seen  # nothing reached the receiver
