"""Snapshots into a real S3 server, end to end: the official SDK, ``livesnap serve``, a real
nginx-rtmp origin with a looping publisher, and SeaweedFS with auth on (infra.md §3A).

Covers object keys, content type, ``Cache-Control`` on the overwrite object and metadata; a
clear ``LastError`` for wrong credentials; the fallback fields; ``DeleteOriginalFile``; and a
30 s outage of the store during which nothing is lost, no record appears early, the spool
shows in ``/metrics``, and deleting an object fails honestly (the record is kept).
"""

from __future__ import annotations

import itertools
import json
import signal
import time

import httpx
import obstore
import pytest
from alibabacloud_ice20201109 import models as m
from prometheus_client.parser import text_string_to_metric_families

from livesnap.config import StorageCredential
from livesnap.outputs.objectstore import ObjectStoreSink
from tests.acceptance.test_capture_e2e import FAST, OUTPUT, get_job, list_files, raw_job, wait_until
from tests.acceptance.test_isolation import console_session
from tests.support.seaweed import BUCKET, SeaweedServer
from tests.support.service import LivesnapServer, ice_client

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

OUTAGE_S = 30


def s3_output(server: SeaweedServer, bucket: str = BUCKET):
    return m.SubmitLiveSnapshotJobRequestSnapshotOutput(
        storage_type="s3", endpoint=server.endpoint, bucket=bucket)


def submit(client, url: str, output) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="storage-e2e", template_id="system", snapshot_output=output,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def bucket_store(server: SeaweedServer):
    cred = StorageCredential(**server.credential())
    return ObjectStoreSink.for_target(cred, cred.endpoint, BUCKET).store


def read_object(store, key: str) -> tuple[bytes, dict[str, str]]:
    result = obstore.get(store, key)
    return bytes(result.bytes()), dict(result.attributes)


def keys_under(store, prefix: str) -> set[str]:
    return {meta["path"] for batch in obstore.list(store, prefix=prefix) for meta in batch}


def storage_env(tmp_path, entries: list[dict], **extra: str) -> dict[str, str]:
    path = tmp_path / "storage.json"
    path.write_text(json.dumps(entries))
    return {**FAST, "LIVESNAP_STORAGE_CONFIG": str(path), **extra}


def scrape(server: LivesnapServer) -> dict[str, float]:
    """``/metrics`` parsed with the Prometheus text parser: ``name{labels}`` → value."""
    response = httpx.get(f"http://{server.endpoint}/metrics", timeout=5)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def check_objects(store, job_id: str, files) -> None:
    """Every record's object is in the bucket with the right type, headers and metadata."""
    for f in files:
        assert f.oss_object == f"snapshot/{job_id}/{f.create_timestamp}.jpg"
        data, attributes = read_object(store, f.oss_object)
        assert data[:2] == b"\xff\xd8" and len(data) > 1000
        assert attributes["Content-Type"] == "image/jpeg"
        assert "Cache-Control" not in attributes
        assert attributes["job-id"] == job_id
        assert attributes["capture-time-ms"] == str(f.create_timestamp)
        assert int(attributes["stream-time-ms"]) >= 0


def test_snapshots_land_in_s3_and_wrong_credentials_are_a_clear_job_error(
    tmp_path, seaweed, publisher_factory
):
    publisher = publisher_factory()
    entries = [seaweed.credential(), seaweed.credential(bucket="wrong-secret", secret="nope")]
    with LivesnapServer(tmp_path / "data", env=storage_env(tmp_path, entries)) as server:
        client = ice_client(server.endpoint)
        good = submit(client, publisher.url, s3_output(seaweed))
        bad = submit(client, publisher.url, s3_output(seaweed, "wrong-secret"))
        unconfigured = submit(client, "rtmp://127.0.0.1:9/live/none", OUTPUT)
        files = wait_until(lambda: (f := list_files(client, good)) and len(f) >= 3 and f, 30,
                           "three snapshots in the bucket")
        store = bucket_store(seaweed)
        check_objects(store, good, files)
        over, attributes = read_object(store, f"snapshot/{good}.jpg")
        assert attributes["Cache-Control"] == "no-cache"
        assert attributes["Content-Type"] == "image/jpeg" and over[:2] == b"\xff\xd8"
        info = raw_job(server, good)
        assert info["StorageFallback"] is False and info["LastError"] == ""
        assert f"s3 bucket {BUCKET} at {seaweed.endpoint} (path-style" in info[
            "StorageDescription"]

        # wrong credentials: a clear LastError, the job keeps running, no records, no crash
        error = wait_until(lambda: raw_job(server, bad)["LastError"], 20, "a storage error")
        assert "refused the credentials (SignatureDoesNotMatch)" in error
        assert error.startswith("storage: snapshot not stored") and "nope" not in error
        assert get_job(client, bad).status == "started" and list_files(client, bad) == []

        # an unconfigured OSS target falls back to local disk, and says so
        fallback = raw_job(server, unconfigured)
        assert fallback["StorageFallback"] is True
        assert "local disk" in fallback["StorageDescription"]
        assert "no storage configured for this target" in server.log()

        # DeleteOriginalFile=true deletes the objects in the bucket, per-file results
        doomed = [f.create_timestamp for f in files[:2]]
        result = client.delete_live_snapshot_files(m.DeleteLiveSnapshotFilesRequest(
            job_id=good, create_timestamp_list=doomed, delete_original_file=True)).body
        assert [(r.create_timestamp, r.result) for r in result.delete_file_result_list] == [
            (ts, "OK") for ts in doomed]
        remaining = keys_under(store, f"snapshot/{good}/")
        assert not {f"snapshot/{good}/{ts}.jpg" for ts in doomed} & remaining
        assert f"snapshot/{good}/{files[2].create_timestamp}.jpg" in remaining

        assert server.terminate(30) < 15
        assert server.proc.returncode == 0 and "Traceback" not in server.log()


@pytest.mark.timeout(300)
def test_a_store_outage_loses_no_snapshot_and_records_only_stored_ones(
    tmp_path, publisher_factory
):
    publisher = publisher_factory()
    with SeaweedServer() as s3:
        env = storage_env(tmp_path, [s3.credential()])  # the default retry pacing
        with LivesnapServer(tmp_path / "data", env=env) as server:
            client = ice_client(server.endpoint)
            job = submit(client, publisher.url, s3_output(s3))
            wait_until(lambda: len(list_files(client, job)) >= 2, 30, "snapshots before")

            s3.stop()
            down_wall, down_at = time.time(), time.monotonic()
            error = wait_until(lambda: raw_job(server, job)["LastError"], 25, "the outage")
            assert "spooling snapshots until the store answers again" in error
            assert "unreachable" in error
            time.sleep(max(0.0, down_at + 8 - time.monotonic()))
            recorded_early = len(list_files(client, job))
            # the outage shows in /metrics: captures wait in the spool, none is lost
            spooling = wait_until(lambda: (s := scrape(server))["livesnap_spool_bytes"] > 0 and s,
                                  20, "spooled bytes in /metrics")
            assert spooling['livesnap_snapshot_failures_total{stage="store"}'] == 0
            target = f'{{target="s3:{s3.endpoint}/{BUCKET}"}}'
            assert spooling[f"livesnap_storage_outage{target}"] == 1
            assert spooling[f"livesnap_storage_pending{target}"] >= 1
            assert spooling['livesnap_storage_captures_total{outcome="spooled"}'] >= 1
            # deleting an object while the store is away fails honestly and keeps the record
            first = list_files(client, job)[0]
            results = client.delete_live_snapshot_files(m.DeleteLiveSnapshotFilesRequest(
                job_id=job, create_timestamp_list=[first.create_timestamp],
                delete_original_file=True)).body.delete_file_result_list
            assert [r.create_timestamp for r in results] == [first.create_timestamp]
            assert results[0].result.startswith(f"cannot delete {first.oss_object}: ")
            assert "unreachable" in results[0].result
            assert first.create_timestamp in {f.create_timestamp for f in list_files(client, job)}
            time.sleep(max(0.0, down_at + OUTAGE_S - 2 - time.monotonic()))
            # records appear only for stored objects: none while the store is away
            assert len(list_files(client, job)) == recorded_early
            assert get_job(client, job).status == "started"
            time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))

            s3.start()
            up_wall = time.time()
            # one attempt every 2.5-5 s while the store was away: it is used again within
            # seconds (with the old 30 s cap, an outage this long left it unused up to 16 s)
            wait_until(lambda: raw_job(server, job)["LastError"] == "", 20, "the error to clear")
            wait_until(lambda: len(list_files(client, job)) >= recorded_early + OUTAGE_S // 5,
                       30,
                       "the spool to drain")
            client.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=job, command="stop"))
            time.sleep(3)  # the last capture's upload
            files = list_files(client, job)
            drained = scrape(server)
            assert drained["livesnap_spool_bytes"] == 0
            assert drained['livesnap_snapshot_failures_total{stage="store"}'] == 0
            assert drained[f"livesnap_storage_outage{target}"] == 0
            assert drained[f"livesnap_storage_pending{target}"] == 0
            assert drained['livesnap_storage_captures_total{outcome="uploaded"}'] >= len(files)

        stamps = [f.create_timestamp for f in files]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert stamps == sorted(stamps) and all(3500 <= g <= 7500 for g in gaps), gaps
        during = [ts for ts in stamps if down_wall * 1000 <= ts <= up_wall * 1000]
        assert len(during) >= OUTAGE_S // 5 - 2, (len(during), stamps)
        store = bucket_store(s3)
        # every capture is in the bucket with its record, and nothing is there without one
        assert keys_under(store, f"snapshot/{job}/") == {f.oss_object for f in files}
        check_objects(store, job, files)
        # uploaded in order: storage times never go backwards in capture order
        modified = [obstore.head(store, f.oss_object)["last_modified"] for f in files]
        assert modified == sorted(modified)
        _, over = read_object(store, f"snapshot/{job}.jpg")
        assert over["capture-time-ms"] == str(stamps[-1])  # the overwrite object is the latest
        assert "Traceback" not in server.log()


@pytest.mark.timeout(180)
def test_a_frozen_store_shows_on_the_job_and_in_the_metrics_before_the_request_times_out(
    tmp_path, publisher_factory
):
    """SIGSTOP: the store keeps its connections and answers nothing (the request timeout is
    30 s); the job and /metrics say so after 5 s, and the captures are stored once it thaws."""
    publisher = publisher_factory()
    with SeaweedServer() as s3:
        env = storage_env(tmp_path, [s3.credential()])
        with LivesnapServer(tmp_path / "data", env=env) as server:
            client = ice_client(server.endpoint)
            job = submit(client, publisher.url, s3_output(s3))
            before = len(wait_until(lambda: list_files(client, job), 30, "a snapshot"))
            s3.signal(signal.SIGSTOP)
            try:
                # said by the slow-upload notice, not by the request's timeout (30 s)
                error = wait_until(lambda: raw_job(server, job)["LastError"], 20, "the freeze")
                assert error.startswith("storage: snapshot not stored yet: the store has not "
                                        "answered an upload for 5 s"), error
                target = f'{{target="s3:{s3.endpoint}/{BUCKET}"}}'
                figures = scrape(server)
                assert figures[f"livesnap_storage_uploads_in_flight{target}"] >= 1
                assert figures[f"livesnap_storage_oldest_upload_seconds{target}"] >= 5
                # the wall: not a plain "Live", and the error on the job's tile
                console = console_session(f"http://{server.endpoint}", "testid", "testsecret")
                try:
                    wall = console.get("/console/").text
                finally:
                    console.close()
                assert ">Not storing<" in wall and "has not answered an upload" in wall
            finally:
                s3.signal(signal.SIGCONT)
            wait_until(lambda: raw_job(server, job)["LastError"] == "", 40, "the error to clear")
            wait_until(lambda: len(list_files(client, job)) >= before + 2, 30, "records again")
            assert scrape(server)[f"livesnap_storage_uploads_in_flight{target}"] <= 1
        assert "Traceback" not in server.log()
