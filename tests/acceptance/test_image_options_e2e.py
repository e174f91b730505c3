"""livesnap's picture extensions end to end: real nginx-rtmp streams, ``livesnap serve``, the
official SDK for ICE's operations and the core SDK's CommonRequest for the extension fields."""

from __future__ import annotations

import io
import json
import re
import time
from datetime import UTC, datetime, timedelta

import av
import httpx
import numpy as np
import pytest
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_capture_e2e import (
    OUTPUT,
    get_job,
    iso,
    list_files,
    raw_job,
)
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}


def create_template(server, ext: str, **extensions: str) -> str:
    params = {"TemplateName": f"t-{ext}", "TimeInterval": "5",
              "OverwriteFormat": f"pics/{{JobId}}.{ext}",
              "SequenceFormat": f"pics/{{JobId}}/{{UnixTimestamp}}.{ext}", **extensions}
    acs = core_client(server.endpoint)
    body = json.loads(acs.do_action_with_exception(
        core_request("CreateLiveSnapshotTemplate", "POST", body=params)))
    return str(body["TemplateId"])


def submit(client, template_id: str, url: str) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=f"job-{template_id[:6]}", template_id=template_id, snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def capture(server, job_id: str) -> dict:
    acs = core_client(server.endpoint)
    body = json.loads(acs.do_action_with_exception(core_request(
        "SendLiveSnapshotJobCommand", "POST", body={"JobId": job_id, "Command": "capture"})))
    return dict(body["Snapshot"])


def stored(server, key: str) -> bytes:
    return (server.storage_dir() / OUTPUT.endpoint / OUTPUT.bucket / key).read_bytes()


def decoded(data: bytes) -> tuple[str, int, int, float]:
    """(codec, width, height, mean luma) of an encoded picture, decoded by FFmpeg."""
    with av.open(io.BytesIO(data)) as container:
        codec = container.streams.video[0].codec_context.name
        frame = next(container.decode(video=0))
        luma = frame.reformat(format="gray").to_ndarray().astype(np.float32)
        return codec, frame.width, frame.height, float(luma.mean())


# (extension, template extensions, source clip, expected codec, expected size)
CASES = [
    ("jpg", {}, "720p", "mjpeg", (1280, 720)),
    ("jpg", {"Width": "640"}, "720p", "mjpeg", (640, 360)),
    ("webp", {"ImageFormat": "webp", "Quality": "60", "Width": "640", "Height": "640"},
     "720p", "webp", (640, 360)),
    ("png", {"ImageFormat": "png", "Height": "180"}, "720p", "png", (320, 180)),
    ("webp", {"ImageFormat": "webp"}, "720p", "webp", (1280, 720)),
    ("jpg", {"Width": "640", "Height": "360", "LatestPointer": "true"}, "portrait", "mjpeg",
     (360, 640)),  # a portrait source swaps the box: 640 is its long side
]


def test_every_format_and_size_decodes_to_what_the_template_asks(
    tmp_path, publisher_factory, make_test_clip
):
    streams = {kind: publisher_factory(make_test_clip(kind)).url for kind in ("720p", "portrait")}
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        jobs = []
        for ext, extensions, source, codec, size in CASES:
            job_id = submit(client, create_template(server, ext, **extensions), streams[source])
            jobs.append((job_id, ext, codec, size))
        for job_id, *_ in jobs:
            wait_until(lambda j=job_id: get_job(client, j).status == "started", 30, "started")
        for job_id, ext, codec, size in jobs:
            shot = capture(server, job_id)
            assert shot["OssObject"].endswith(f".{ext}")
            got = decoded(stored(server, shot["OssObject"]))
            assert got[:3] == (codec, *size), (job_id, got)
            assert (shot["Width"], shot["Height"]) == size
            assert got[:3] == decoded(stored(server, f"pics/{job_id}.{ext}"))[:3]

        # the latest pointer names the newest sequence object, which exists
        pointer_job = jobs[-1][0]
        files = wait_until(lambda: (f := list_files(client, pointer_job)) and len(f) >= 2 and f,
                           30, "two snapshots of the pointer job")
        pointer = json.loads(stored(server, f"pics/{pointer_job}.latest.json"))
        newest = max(int(f.create_timestamp) for f in list_files(client, pointer_job))
        assert pointer["CreateTimestamp"] >= files[-1].create_timestamp
        assert pointer["CreateTimestamp"] <= newest
        assert (pointer["JobId"], pointer["Width"], pointer["Height"]) == (pointer_job, 360, 640)
        assert pointer["ObjectKey"] == f"pics/{pointer_job}/{pointer['CreateTimestamp']}.jpg"
        assert decoded(stored(server, pointer["ObjectKey"]))[1:3] == (360, 640)

        # capture truth on the file records: stream time, capture time and the lag between
        for item in raw_files(server, pointer_job):
            assert isinstance(item["StreamTimestamp"], int) and item["StreamTimestamp"] >= 0
            assert 0 <= item["CaptureLag"] < 10_000
            assert item["Quality"] == "unchecked"  # the gate is off by default


def rejected_black(server) -> float:
    text = httpx.get(f"http://{server.endpoint}/metrics", timeout=5).text
    found = re.search(r'^livesnap_frames_rejected_total\{verdict="black"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_black_keyframes_are_skipped_and_the_reason_recorded(
    tmp_path, publisher_factory, make_test_clip
):
    # 12 s of black (longer than the system template's 5 s tick: every loop has a missed tick),
    # then 5 s of picture. A keyframe is skipped only when a tick starts on the last black
    # keyframes and the first picture keyframe comes before the next tick: the ticks' phase in
    # the loop decides it. A 17 s loop moves that phase by 2 s each time round, so one of any
    # three loops has it, whenever the job happened to start (a 20 s loop kept one phase for
    # ever, and failed on every machine whose start-up put it elsewhere).
    publisher = publisher_factory(make_test_clip("long_black_then_picture", seconds=17))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        job_id = submit(client, create_template(server, "jpg", QualityGate="true"),
                        publisher.url)
        wait_until(lambda: get_job(client, job_id).status == "started", 30, "started")
        seen_errors: set[str] = set()

        def skipped_snapshot():
            seen_errors.add(raw_job(server, job_id)["LastError"])
            return [f for f in list_files(client, job_id) if f.create_timestamp] and any(
                "no usable keyframe in a tick (black)" in e for e in seen_errors) and [
                f for f in raw_files(server, job_id) if f["SkippedFrames"] >= 1]

        def files_seen() -> str:
            return "files (stream ms, skipped): " + ", ".join(
                f"({f['StreamTimestamp']}, {f['SkippedFrames']})" for f in raw_files(server, job_id))

        wait_until(skipped_snapshot, 3 * 17 + 30,
                   "a missed black tick and a snapshot after skipped frames", step=0.3,
                   detail=files_seen)
        assert rejected_black(server) >= 1
        assert raw_job(server, job_id)["MissedTicks"] >= 1  # the black tick counts as missed
        files = raw_files(server, job_id)
        assert files and all(f["Quality"] == "ok" for f in files)
        for f in files:  # no black picture was stored
            assert decoded(stored(server, f["OssObject"]))[3] > 40, f
        # once a picture is stored again, LastError no longer shows the black ticks
        time.sleep(0.5)
        last_error = raw_job(server, job_id)["LastError"]
        assert last_error == "" or last_error.startswith("quality: ")


def test_a_still_picture_gets_a_snapshot_every_tick_unless_the_gate_is_asked_for(
    tmp_path, publisher_factory, make_test_clip
):
    # A test card that never changes. ICE takes a picture every tick whatever it shows, and
    # so does a job on the defaults; a job that asks for the quality gate keeps the first
    # picture only, and each later tick counts in MissedTicks as it ends, with its reason.
    publisher = publisher_factory(make_test_clip("still", seconds=10))
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        plain = submit(client, "system", publisher.url)
        gated = submit(client, create_template(server, "jpg", QualityGate="true"),
                       publisher.url)
        for job_id in (plain, gated):
            wait_until(lambda j=job_id: get_job(client, j).status == "started", 30, "started")

        def state() -> str:
            return json.dumps({j: {"files": len(raw_files(server, j)),
                                   "missed": raw_job(server, j)["MissedTicks"]}
                               for j in (plain, gated)})

        wait_until(lambda: len(raw_files(server, plain)) >= 2
                   and raw_job(server, gated)["MissedTicks"] >= 1,
                   60, "two snapshots of the still picture and a frozen tick missed",
                   step=0.5, detail=state)
        plain_files = raw_files(server, plain)
        assert {f["Quality"] for f in plain_files} == {"unchecked"}
        assert all(f["SkippedFrames"] == 0 for f in plain_files)
        plain_job = raw_job(server, plain)
        assert (plain_job["MissedTicks"], plain_job["LastError"]) == (0, "")
        gated_job = raw_job(server, gated)
        assert [f["Quality"] for f in raw_files(server, gated)] == ["ok"]
        assert gated_job["LastError"] == "quality: no usable keyframe in a tick (frozen)"
        assert gated_job["SnapshotCount"] == 1
        for f in plain_files:  # every one a whole picture of the test card
            assert decoded(stored(server, f["OssObject"]))[1:3] == (640, 360)


def raw_files(server, job_id: str) -> list[dict]:
    """ListLiveSnapshotFiles as JSON (with livesnap's extension fields), the last hour."""
    now = datetime.now(tz=UTC)
    body = json.loads(core_client(server.endpoint).do_action_with_exception(core_request(
        "ListLiveSnapshotFiles", "GET", {"JobId": job_id, "Limit": "100",
                                         "StartTime": iso(now - timedelta(hours=1)),
                                         "EndTime": iso(now + timedelta(minutes=5))})))
    assert not body.get("NextStartTime"), "more than one page: widen the test's listing"
    return list(body["FileList"])
