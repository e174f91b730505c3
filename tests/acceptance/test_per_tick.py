"""Per-tick connections end to end: a real nginx-rtmp origin, looping ffmpeg publishers,
``livesnap serve`` as a subprocess, the official SDK, and the core SDK for the ``ConnectMode``
extension. A per-tick job connects shortly before each tick, keeps one keyframe and lets go
of the stream until the next tick; the origin's ``/stat`` shows whether it is connected."""

from __future__ import annotations

import itertools
import json
import time

import pytest
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_capture_e2e import OUTPUT, get_job, list_files, raw_job
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "1"}
INTERVAL_S = 5  # ICE's shortest interval: several ticks fit in a test
GOP_S = 2  # the test clips' keyframe interval


def create_template(server: LivesnapServer, **params: str) -> str:
    body = {"TemplateName": "per tick", "TimeInterval": str(INTERVAL_S),
            "SequenceFormat": "pt/{JobId}/{UnixTimestamp}.jpg", **params}
    answer = json.loads(core_client(server.endpoint).do_action_with_exception(
        core_request("CreateLiveSnapshotTemplate", "POST", body=body)))
    return str(answer["TemplateId"])


def submit(server: LivesnapServer, template_id: str, url: str, **params: str) -> str:
    body = {"JobName": "pt", "TemplateId": template_id,
            "StreamInput": json.dumps({"Type": "rtmp", "Url": url}),
            "SnapshotOutput": json.dumps({"StorageType": OUTPUT.storage_type,
                                          "Endpoint": OUTPUT.endpoint,
                                          "Bucket": OUTPUT.bucket}), **params}
    answer = json.loads(core_client(server.endpoint).do_action_with_exception(
        core_request("SubmitLiveSnapshotJob", "POST", body=body)))
    return str(answer["JobId"])


def command(server: LivesnapServer, job_id: str, name: str) -> dict:
    return dict(json.loads(core_client(server.endpoint).do_action_with_exception(core_request(
        "SendLiveSnapshotJobCommand", "POST", body={"JobId": job_id, "Command": name}))))


def capture_times(client, job_id: str) -> list[int]:
    return sorted(int(f.create_timestamp) for f in list_files(client, job_id))


def players(origin, url: str) -> int:
    """Clients of the stream on the origin other than its publisher."""
    status = origin.stream_status(url.rsplit("/", 1)[1])
    if status is None:
        return 0
    return status.nclients - (1 if status.publishing else 0)


def test_a_per_tick_job_captures_every_tick_and_lets_go_of_the_stream_between(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        template_id = create_template(server, ConnectMode="per-tick")
        job_id = submit(server, template_id, publisher.url)
        wait_until(lambda: get_job(client, job_id).status == "started", 30, "started")
        assert raw_job(server, job_id)["ConnectMode"] == "per-tick"

        seen: set[int] = set()
        deadline = time.monotonic() + 5 * INTERVAL_S
        while time.monotonic() < deadline:  # the origin's view, ten times a second
            seen.add(players(rtmp_origin, publisher.url))
            time.sleep(0.1)
        assert 0 in seen, "the job never let go of the stream between ticks"
        assert 1 in seen, "the job was never seen connected"

        times = capture_times(client, job_id)
        assert len(times) >= 5, times
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # each capture is the first keyframe at or after its tick: a GOP late at most, plus
        # the time the keyframe takes to come out of the demuxer
        low, high = (INTERVAL_S - GOP_S - 1) * 1000, (INTERVAL_S + GOP_S + 1) * 1000
        assert all(low <= gap <= high for gap in gaps), gaps
        job = raw_job(server, job_id)
        assert (job["Status"], job["StreamStatus"], job["MissedTicks"]) == ("started", "live", 0)


def test_a_publisher_down_at_a_tick_costs_that_tick_and_the_next_one_captures(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        # ConnectMode on the submit overrides the template's (the system template: auto)
        job_id = submit(server, "system", publisher.url, ConnectMode="per-tick")
        wait_until(lambda: len(capture_times(client, job_id)) >= 2, 30, "two captures")
        assert raw_job(server, job_id)["ConnectMode"] == "per-tick"

        publisher.stop()
        down = wait_until(
            lambda: (j := raw_job(server, job_id))["StreamStatus"] == "reconnecting" and j,
            3 * INTERVAL_S, "the failed tick reported")
        assert down["LastError"], down
        assert down["Status"] == "started"
        stopped_at = int(time.time() * 1000)
        time.sleep(INTERVAL_S)
        publisher.start()

        def back() -> list[int]:
            return [t for t in capture_times(client, job_id) if t > stopped_at]

        wait_until(back, 4 * INTERVAL_S, "a capture once the publisher is back")
        job = wait_until(lambda: (j := raw_job(server, job_id))["StreamStatus"] == "live" and j,
                         2 * INTERVAL_S, "live again")
        assert job["Status"] == "started"
        assert job["MissedTicks"] >= 1  # the ticks while the publisher was down


def test_stop_during_a_connect_ends_the_job_at_once(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    # nginx-rtmp keeps a player of an unpublished stream waiting in silence, for up to
    # LIVESNAP_RW_TIMEOUT_S: made long, a connect there holds until the open's 20 s deadline
    server = LivesnapServer(tmp_path / "data", env={"LIVESNAP_RW_TIMEOUT_S": "30"})
    with server:
        client = ice_client(server.endpoint)
        template_id = create_template(server, TimeInterval="60", ConnectMode="per-tick")
        job_id = submit(server, template_id, publisher.url)
        wait_until(lambda: capture_times(client, job_id), 30, "a first capture")
        server.kill()  # its connections close with it
        publisher.stop()
        wait_until(lambda: players(rtmp_origin, publisher.url) == 0, 10, "no player left")
        server.start()  # the job resumes, and its first tick's connect waits at the origin
        client = ice_client(server.endpoint)
        wait_until(lambda: players(rtmp_origin, publisher.url) >= 1, 15,
                   "the resumed job's connect waiting at the origin")
        before = capture_times(client, job_id)
        started = time.monotonic()
        command(server, job_id, "stop")
        took = time.monotonic() - started
        assert took < 10, f"stop waited {took:.1f} s for a connect that holds up to 20 s"
        assert raw_job(server, job_id)["Status"] == "paused"
        publisher.start()  # the abandoned connect may now succeed: it captures nothing
        time.sleep(INTERVAL_S)
        assert capture_times(client, job_id) == before
        assert raw_job(server, job_id)["Status"] == "paused"


def test_capture_now_between_ticks_connects_for_it(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        template_id = create_template(server, TimeInterval="3600", ConnectMode="auto")
        job_id = submit(server, template_id, publisher.url)
        wait_until(lambda: capture_times(client, job_id), 30, "the first tick's capture")
        wait_until(lambda: players(rtmp_origin, publisher.url) == 0, 10,
                   "the job disconnected after its tick")
        assert get_job(client, job_id).status == "started"
        shot = command(server, job_id, "capture")["Snapshot"]
        times = capture_times(client, job_id)
        assert len(times) == 2 and shot["CreateTimestamp"] == times[-1]
        wait_until(lambda: players(rtmp_origin, publisher.url) == 0, 10,
                   "the job disconnected after the capture")
        assert get_job(client, job_id).status == "started"


def test_a_per_tick_job_resumes_after_the_server_is_killed(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    server = LivesnapServer(tmp_path / "data", env=FAST)
    with server:
        client = ice_client(server.endpoint)
        job_id = submit(server, create_template(server, ConnectMode="per-tick"), publisher.url)
        wait_until(lambda: len(capture_times(client, job_id)) >= 2, 30, "two captures")
        server.kill()
        killed_at = int(time.time() * 1000)
        server.start()
        client = ice_client(server.endpoint)
        resumed = wait_until(
            lambda: [t for t in capture_times(client, job_id) if t > killed_at],
            4 * INTERVAL_S, "captures after the restart")
        assert resumed
        job = raw_job(server, job_id)
        assert (job["Status"], job["ConnectMode"]) == ("started", "per-tick")


def test_connect_mode_is_validated_and_kept_by_an_update_that_omits_it(tmp_path):
    with LivesnapServer(tmp_path / "data", env={"LIVESNAP_CAPTURE": "false"}) as server:
        acs = core_client(server.endpoint)
        template_id = create_template(server, ConnectMode="persistent")
        with pytest.raises(Exception, match="ConnectMode") as refused:
            create_template(server, ConnectMode="sometimes")
        assert "InvalidParameter" in str(refused.value)
        acs.do_action_with_exception(core_request("UpdateLiveSnapshotTemplate", "POST", body={
            "TemplateId": template_id, "TemplateName": "renamed",
            "TimeInterval": str(INTERVAL_S), "SequenceFormat": "pt/{JobId}/{UnixTimestamp}.jpg"}))
        got = json.loads(acs.do_action_with_exception(core_request(
            "GetLiveSnapshotTemplate", "GET", {"TemplateId": template_id})))
        assert (got["TemplateName"], got["ConnectMode"]) == ("renamed", "persistent")
        client = ice_client(server.endpoint)
        listed = client.list_live_snapshot_templates(
            m.ListLiveSnapshotTemplatesRequest(type="custom")).body.template_list
        assert [t.template_id for t in listed] == [template_id]


def test_a_per_tick_job_pauses_once_the_outage_window_passes_without_a_capture(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    publisher = publisher_factory(make_test_clip("360p"))
    env = {**FAST, "LIVESNAP_OUTAGE_WINDOW_S": "8"}
    with LivesnapServer(tmp_path / "data", env=env) as server:
        client = ice_client(server.endpoint)
        job_id = submit(server, create_template(server, ConnectMode="per-tick"), publisher.url)
        wait_until(lambda: capture_times(client, job_id), 30, "a first capture")
        publisher.stop()
        job = wait_until(lambda: (j := raw_job(server, job_id))["Status"] == "paused" and j,
                         8 + 3 * INTERVAL_S, "paused after the outage window")
        assert job["StatusReason"].startswith("stream offline for 8 s: "), job
        assert job["StreamStatus"] == "waiting"  # for the stream to come back


def test_a_per_tick_window_with_only_black_keyframes_is_a_missed_tick_with_its_reason(
    tmp_path, rtmp_origin, publisher_factory, make_test_clip
):
    # 12 s of black then 5 s of picture, looped: some 5 s tick's window sees black keyframes only
    publisher = publisher_factory(make_test_clip("long_black_then_picture", seconds=17))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        # the quality gate is opt-in (ICE keeps every tick's picture): this job asks for it
        template_id = create_template(server, ConnectMode="per-tick", QualityGate="true")
        job_id = submit(server, template_id, publisher.url)
        wait_until(lambda: get_job(client, job_id).status == "started", 30, "started")
        errors: set[str] = set()

        def black_tick_then_picture() -> bool:
            errors.add(raw_job(server, job_id)["LastError"])
            return any("no usable keyframe in a tick (black)" in e for e in errors) and bool(
                capture_times(client, job_id))

        wait_until(black_tick_then_picture, 3 * 17 + 30,
                   "a tick missed for black keyframes, and a capture")
        job = raw_job(server, job_id)
        assert job["Status"] == "started" and job["ConnectMode"] == "per-tick"
        assert job["MissedTicks"] >= 1  # the black tick counts as missed
