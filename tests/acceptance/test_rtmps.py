"""RTMPS through a real TLS terminator (nginx's stream module in front of nginx-rtmp): the
certificate is verified by default, a CA file or turning verification off are the two ways to
accept a private one, and a capture, a publisher restart and ``stop`` work as for RTMP."""

from __future__ import annotations

from pathlib import Path

import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.servers import Publisher, RtmpOrigin, wait_stream_live
from tests.support.service import (
    LivesnapServer,
    ice_client,
    raw_job,
    recent_files,
    submit_stream,
)
from tests.support.tls import write_certificates
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return write_certificates(tmp_path_factory.mktemp("rtmps"), ["localhost", "127.0.0.1"])


@pytest.fixture(scope="module")
def tls_origin(certificates, clip_720p):
    _, cert, key = certificates
    origin = RtmpOrigin(tls=(cert, key)).start()
    publisher = Publisher(clip_720p, origin.url("cam")).start()
    try:
        wait_stream_live(origin, "cam", publisher=publisher)
        yield origin, publisher
    finally:
        publisher.stop()
        origin.stop()


def refused(server: LivesnapServer, job_id: str) -> dict:
    wait_until(lambda: raw_job(server, job_id)["StreamStatus"] == "waiting"
               and raw_job(server, job_id)["LastError"], 30, "the probe to fail",
               detail=lambda: str(raw_job(server, job_id)))
    job = raw_job(server, job_id)
    assert job["Status"] == "init" and job["SnapshotCount"] == 0
    return job


def test_an_untrusted_certificate_is_refused_by_default(tmp_path, tls_origin):
    origin, _ = tls_origin
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        job = refused(server, submit_stream(server, origin.rtmps_url("cam")))
        assert "TLS certificate not accepted" in job["LastError"], job
        assert "issuer" in job["LastError"], job  # says why: an authority it does not know


def test_a_trusted_ca_file_captures_and_survives_a_publisher_restart(
    tmp_path, certificates, tls_origin
):
    origin, publisher = tls_origin
    ca, _, _ = certificates
    env = {**FAST, "LIVESNAP_SOURCE_CA_FILE": str(ca)}
    with LivesnapServer(tmp_path / "data", env=env) as server:
        client = ice_client(server.endpoint)
        job_id = submit_stream(server, origin.rtmps_url("cam"))
        wait_until(lambda: len(recent_files(client, job_id)) >= 1, 30, "an RTMPS snapshot",
                   detail=lambda: str(raw_job(server, job_id)))
        assert raw_job(server, job_id)["StreamStatus"] == "live"
        publisher.restart()  # the stream drops and comes back
        wait_stream_live(origin, "cam", publisher=publisher)
        count = len(recent_files(client, job_id))
        wait_until(lambda: len(recent_files(client, job_id)) > count, 30,
                   "a snapshot after the publisher came back")
        client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
            job_id=job_id, command="stop"))
        # stop releases the connection: the origin has no player left
        def players() -> int:
            status = origin.stream_status("cam")
            return 0 if status is None else status.nclients - 1  # less the publisher

        wait_until(lambda: players() == 0, 15, "the player to leave")


def test_a_certificate_for_another_name_is_refused_even_from_a_trusted_ca(tmp_path, clip_720p):
    ca, cert, key = write_certificates(tmp_path / "other", ["stream.example.invalid"])
    origin = RtmpOrigin(tls=(cert, key)).start()
    publisher = Publisher(clip_720p, origin.url("cam")).start()
    try:
        wait_stream_live(origin, "cam", publisher=publisher)
        env = {**FAST, "LIVESNAP_SOURCE_CA_FILE": str(ca)}
        with LivesnapServer(tmp_path / "data", env=env) as server:
            job = refused(server, submit_stream(server, origin.rtmps_url("cam")))
            assert "TLS certificate not accepted" in job["LastError"], job
            assert "127.0.0.1" in job["LastError"], job  # not valid for the host asked for
        # with verification off, the same origin captures (a private certificate, knowingly)
        env = {**FAST, "LIVESNAP_SOURCE_TLS_VERIFY": "false"}
        with LivesnapServer(tmp_path / "data2", env=env) as server:
            client = ice_client(server.endpoint)
            job_id = submit_stream(server, origin.rtmps_url("cam"))
            wait_until(lambda: recent_files(client, job_id), 30, "a snapshot, unverified")
    finally:
        publisher.stop()
        origin.stop()
