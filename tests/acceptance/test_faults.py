"""Faults against the real ``livesnap serve``: SIGKILL, a locked database, a full disk.

Real parts only: an nginx-rtmp origin with a looping H.264 publisher, ``livesnap serve`` as a
subprocess, SeaweedFS (S3) or local disk for the snapshots, and a real HTTP callback receiver.
After each fault and the recovery the test reads the truth back (the SQLite file, the bucket or
the storage directory, what the receiver got) and checks: every record's object exists and is
a whole JPEG; every object has a record, or its loss is counted; every outbox event reached the
receiver at least once (by ``EventId``); no capture is recorded twice.

``LIVESNAP_LONG_TESTS=1`` runs the long variants (20 kills; a 30 s database lock).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
import simplejpeg
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_capture_e2e import FAST, OUTPUT, raw_job
from tests.acceptance.test_storage_e2e import (
    bucket_store,
    keys_under,
    s3_output,
    scrape,
    storage_env,
)
from tests.integration.test_callbacks_real import Receiver
from tests.support.seaweed import SeaweedServer
from tests.support.service import LivesnapServer, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

LONG = os.environ.get("LIVESNAP_LONG_TESTS") == "1"
CALLBACK_KEY = "faults-callback-key"
ENV = {
    **FAST,
    "LIVESNAP_CALLBACK_KEYS": f"acct-a:{CALLBACK_KEY}",
    "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "2",
    "LIVESNAP_CALLBACK_READ_TIMEOUT_S": "2",
    "LIVESNAP_STORAGE_RETRY_MAX_S": "2",
}


# helpers ------------------------------------------------------------------------------------
def submit(client, stream_url: str, callback_url: str, output=OUTPUT) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="faults", template_id="system", snapshot_output=output,
        callback_url=callback_url,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=stream_url),
    )).body.job_id


def command(client, job_id: str, name: str) -> None:
    client.send_live_snapshot_job_command(
        m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command=name))


def db_rows(data_dir: Path, sql: str, *args: object) -> list[tuple]:
    """Rows straight from livesnap's SQLite file (read-only; the server may be running)."""
    conn = sqlite3.connect(f"file:{data_dir / 'livesnap.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def records(data_dir: Path, job_id: str) -> list[tuple[int, str]]:
    """(create_ms, object key) of every file record of the job, oldest first."""
    return db_rows(data_dir, "SELECT create_ms, object_key FROM files WHERE job_id = ? "
                   "ORDER BY create_ms", job_id)


def outbox(data_dir: Path) -> list[tuple[str, str, str, int | None]]:
    """(id, type, data, delivered_ms) of every outbox event."""
    return db_rows(data_dir, "SELECT id, type, data, delivered_ms FROM outbox_events ORDER BY seq")


def whole_jpeg(data: bytes) -> bool:
    """A complete JPEG that decodes (a truncated file fails here)."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False
    return simplejpeg.decode_jpeg(data).shape[2] == 3


def local_objects(server: LivesnapServer, job_id: str) -> dict[str, Path]:
    """Sequence objects of the job on local disk: key → path."""
    root = server.storage_dir() / OUTPUT.endpoint / OUTPUT.bucket
    folder = root / "snapshot" / job_id
    if not folder.exists():
        return {}
    return {str(p.relative_to(root)): p for p in folder.iterdir() if p.is_file()}


def acked_ids(receiver: Receiver) -> dict[str, int]:
    """EventId → how many deliveries of it the receiver answered with 200."""
    acked: dict[str, int] = {}
    for d in receiver.snapshot():
        if d.answered == 200:
            acked[d.event["EventId"]] = acked.get(d.event["EventId"], 0) + 1
    return acked


def undelivered(receiver: Receiver, data_dir: Path) -> list[tuple[str, str]]:
    """Outbox events (id, type) the receiver has not acknowledged yet."""
    acked = acked_ids(receiver)
    return [(e[0], e[1]) for e in outbox(data_dir) if e[0] not in acked]


def check_delivered(receiver: Receiver, data_dir: Path) -> dict[str, int]:
    """Every outbox event reached the receiver (answered 200) at least once, and is marked
    delivered; the counts."""
    wait_until(lambda: not undelivered(receiver, data_dir), 40, "every event delivered",
               detail=lambda: repr(undelivered(receiver, data_dir)[:5]))
    events = outbox(data_dir)
    wait_until(lambda: all(e[3] is not None for e in outbox(data_dir)), 10, "delivered marks")
    acked = acked_ids(receiver)
    for d in receiver.snapshot():  # every delivery, also repeated ones, is signed and whole
        assert d.headers["x-livesnap-event-id"] == d.event["EventId"]
    return {"events": len(events), "deliveries": sum(acked.values()),
            "duplicates": sum(n - 1 for n in acked.values())}


def check_one_event_per_record(data_dir: Path, job_id: str) -> None:
    """Each record has exactly one capture event, and no event names a capture not recorded."""
    stamps = [ms for ms, _ in records(data_dir, job_id)]
    assert len(stamps) == len(set(stamps))
    captured = [json.loads(data) for _, kind, data, _ in outbox(data_dir)
                if kind == "LiveSnapshotCaptured"]
    mine = sorted(e["create_ms"] for e in captured if e.get("job_id") == job_id)
    assert mine == stamps


# database locked ----------------------------------------------------------------------------
LOCK_S = 30 if LONG else 15  # at least: the lock is held on until a file record failed


@contextlib.contextmanager
def exclusive_lock(db: Path):
    """Another process holds ``BEGIN EXCLUSIVE`` on the database until the block ends."""
    proc = subprocess.Popen(
        ["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(".timeout 10000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield
    finally:
        proc.communicate("ROLLBACK;\n.quit\n", timeout=10)


@pytest.mark.timeout(180)
def test_a_locked_database_is_reported_and_captures_are_recorded_after_it(
    tmp_path, publisher_factory
):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=ENV) as server:
        data = server.data_dir
        client = ice_client(server.endpoint)
        job = submit(client, publisher.url, receiver.url)
        wait_until(lambda: len(records(data, job)) >= 2, 40, "two snapshots")
        with exclusive_lock(data / "livesnap.db"):
            locked_at = time.time()
            time.sleep(6)  # a capture is taken and cannot be recorded (busy_timeout is 5 s)
            # the stream drops and comes back while the database is locked: the session must
            # live through status writes that fail
            publisher.kill()
            time.sleep(6)  # > rw_timeout: livesnap's reader ends and reconnects
            publisher.restart()
            time.sleep(max(0.0, locked_at + LOCK_S - time.time()))
            # This process's writes queue behind one another, each waiting out busy_timeout
            # before it fails (callback attempt records may come first), so when a file
            # record's own wait begins depends on the machine: hold the lock until one failed.
            wait_until(lambda: "action=record_delayed" in server.log(), 40,
                       "a file record failing on the lock")
            # reads go on (WAL): the API answers while the lock is held; nothing is recorded
            assert raw_job(server, job)["Status"] == "started"
            recorded_in_lock = [ms for ms, _ in records(data, job) if ms >= locked_at * 1000]
        unlocked_at = time.time()
        assert server.proc.poll() is None
        # captures taken during the lock are recorded after it; the job says it was late
        error = wait_until(lambda: "database" in (e := raw_job(server, job)["LastError"]) and e,
                           30, "LastError about the database")
        wait_until(lambda: any(ms > unlocked_at * 1000 + 1000 for ms, _ in records(data, job)),
                   30, "a capture after the lock")
        assert raw_job(server, job)["StreamStatus"] == "live"
        command(client, job, "stop")
        time.sleep(2)  # the last capture's upload and record
        delivered = check_delivered(receiver, data)
        rows = records(data, job)
        late = [ms for ms, _ in rows if locked_at * 1000 <= ms <= unlocked_at * 1000]
        objects = local_objects(server, job)
        log = server.log()
    print(f"lock {LOCK_S} s: {len(late)} captures recorded late, {delivered}, error {error!r}")
    assert recorded_in_lock == []
    assert len(late) >= LOCK_S // 5 - 2, late
    assert error.startswith("storage: snapshot recorded") and "database was unavailable" in error
    # nothing lost: every object has its record and every record its object (a whole JPEG)
    assert set(objects) == {key for _, key in rows}
    assert all(whole_jpeg(path.read_bytes()) for path in objects.values())
    check_one_event_per_record(data, job)
    assert "session crashed" not in log and "Traceback" not in log


# SIGKILL during capture, upload and callback delivery ---------------------------------------
# Each kill lands in one phase, in turn. "upload-down": the store is stopped, so captures wait
# in the spool; "upload-stalled": the store is frozen (SIGSTOP), so uploads hang in flight;
# "callback": the receiver hangs, so deliveries are in flight.
PHASES = ("capture", "upload-down", "callback", "upload-stalled")
KILLS = 20 if LONG else 3
SEED = 20260109


def newest(data: Path, job_id: str) -> int:
    rows = records(data, job_id)
    return rows[-1][0] if rows else 0


def spooled_files(data: Path) -> int:
    folder = data / "spool"
    return sum(1 for p in folder.glob("*.capture")) if folder.exists() else 0


def spooled_captures(data: Path) -> set[tuple[str, int]]:
    """(job, capture time) of every capture the spool describes."""
    found = set()
    for path in (data / "spool").glob("*.capture"):
        with path.open("rb") as spooled:
            note = json.loads(json.loads(spooled.readline())["note"])
        found.add((note["job_id"], note["create_ms"]))
    return found


@pytest.mark.timeout(900 if LONG else 240)
def test_sigkill_during_capture_upload_and_delivery_loses_only_what_is_counted(
    tmp_path, publisher_factory
):
    rng = random.Random(SEED)
    publisher = publisher_factory()
    kills: list[dict[str, object]] = []
    recovered = 0
    with SeaweedServer() as s3, Receiver() as receiver:
        env = storage_env(tmp_path, [s3.credential()], **ENV)
        server = LivesnapServer(tmp_path / "data", env=env)
        data = server.data_dir
        with server:
            client = ice_client(server.endpoint)
            jobs = [submit(client, publisher.url, receiver.url, s3_output(s3)) for _ in range(2)]
            since = 0
            for number in range(KILLS):
                phase = PHASES[number % len(PHASES)]
                # healthy first: every job has a record made by this server process
                wait_until(lambda: all(newest(data, j) > since for j in jobs), 40,  # noqa: B023
                           f"a capture before kill {number + 1}")
                if phase == "capture":
                    time.sleep(rng.uniform(0, 5))
                elif phase == "upload-down":
                    s3.stop()
                    wait_until(lambda: spooled_files(data) >= 2, 30, "captures in the spool")
                    time.sleep(rng.uniform(0, 3))
                elif phase == "upload-stalled":
                    os.killpg(s3._proc.pid, signal.SIGSTOP)
                    time.sleep(rng.uniform(6, 9))  # every job takes a capture meanwhile
                else:
                    receiver.set_mode("hang")
                    hung = len(receiver.snapshot())
                    wait_until(lambda: len(receiver.snapshot()) > hung, 30,  # noqa: B023
                               "a delivery in flight")
                    time.sleep(rng.uniform(0, 3))
                killed_at = time.time()
                server.kill()
                left = spooled_captures(data)
                kills.append({"phase": phase, "at_ms": int(killed_at * 1000),
                              "spooled": spooled_files(data)})
                if phase == "upload-down":
                    assert len(left) >= 2
                if phase == "upload-down":
                    s3.start()
                elif phase == "upload-stalled":
                    os.killpg(s3._proc.pid, signal.SIGCONT)
                receiver.set_mode("ok")
                since = int(time.time() * 1000)
                server.start()
                # the next process stores and records what the killed one left in the spool
                wait_until(lambda: left <= {(j, ms) for j in jobs  # noqa: B023
                                            for ms, _ in records(data, j)},
                           30, "the spooled captures recorded")
                recovered += len(left)
            client = ice_client(server.endpoint)
            wait_until(lambda: all(newest(data, j) > since for j in jobs), 40, "capture again")
            for job in jobs:
                command(client, job, "stop")
            time.sleep(2)  # the last captures' uploads and records
            delivered = check_delivered(receiver, data)
            missed = {job: raw_job(server, job)["MissedTicks"] for job in jobs}
            assert server.terminate(30) < 20
        log = server.log()
        store = bucket_store(s3)
        report = {"kills": [k["phase"] for k in kills], "spooled_at_kill":
                  sum(int(k["spooled"]) for k in kills), "recovered": recovered,
                  "missed_ticks": missed, **delivered}
        orphans: list[int] = []
        for job in jobs:
            rows = records(data, job)
            stamps = [ms for ms, _ in rows]
            # no capture recorded twice: one record per capture time and object, and no two
            # records of one tick (ticks are 5 s apart, keyframes 2 s)
            assert len(set(stamps)) == len(stamps) == len({key for _, key in rows})
            assert all(b - a >= 1500 for a, b in itertools.pairwise(stamps)), stamps
            # every record's object is in the bucket, a whole JPEG
            for _, key in rows:
                assert whole_jpeg(bytes(obstore.get(store, key).bytes())), key
            # no object without a record: every capture is on disk before its upload starts,
            # and the next start stores and records what a kill interrupted (an upload in
            # flight, or one whose record was not written yet)
            stored = keys_under(store, f"snapshot/{job}/")
            extra = sorted(int(k.rsplit("/", 1)[1].split(".")[0]) for k in stored - {
                key for _, key in rows})
            assert extra == [], (extra, kills)
            orphans += extra
            check_one_event_per_record(data, job)
        report["records"] = sum(len(records(data, j)) for j in jobs)
        report["orphans"] = len(orphans)
        print(f"SIGKILL x{KILLS}: {report}")
    assert "session crashed" not in log


# disk full ----------------------------------------------------------------------------------
# "storage": a small filesystem holds the local storage root only; "data": it holds the whole
# data directory (database, spool, storage), so the job's LastError cannot be written either.
DISKS = ("storage", "data") if LONG else ("storage",)


@pytest.fixture(params=DISKS)
def small_disk(request, tmp_path) -> Iterator[tuple[Path, Path]]:
    """(data directory, the 24 MiB tmpfs in it); unmounted at teardown."""
    data = tmp_path / "data"
    mount = data if request.param == "data" else data / "storage"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    try:
        yield data, mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def fill(path: Path) -> int:
    """Write zeros into ``path`` until the filesystem is full; the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb") as fh:
        try:
            while True:
                written += fh.write(block)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return written


def store_failures(server: LivesnapServer) -> float:
    return scrape(server)['livesnap_snapshot_failures_total{stage="store"}']


@pytest.mark.timeout(180)
def test_a_full_disk_is_a_clear_job_error_and_capture_resumes_when_space_is_freed(
    small_disk, publisher_factory
):
    data, mount = small_disk
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(data, env=ENV) as server:
        client = ice_client(server.endpoint)
        job = submit(client, publisher.url, receiver.url)
        wait_until(lambda: len(records(data, job)) >= 2, 40, "two snapshots")
        filler = mount / "filler.bin"
        fill(filler)
        full_at = time.time()
        wait_until(lambda: store_failures(server) >= 2, 30, "two captures refused for space")
        assert "No space left on device" in server.log()
        error = raw_job(server, job)["LastError"]
        assert server.proc.poll() is None
        assert raw_job(server, job)["Status"] == "started"
        during = [ms for ms, _ in records(data, job) if ms > full_at * 1000 + 1000]
        filler.unlink()
        freed_at = time.time()
        wait_until(lambda: any(ms > freed_at * 1000 for ms, _ in records(data, job)), 30,
                   "a capture after space was freed")
        wait_until(lambda: raw_job(server, job)["LastError"] == "", 20, "LastError cleared")
        command(client, job, "stop")
        time.sleep(2)
        delivered = check_delivered(receiver, data)
        refused = store_failures(server)
        rows = records(data, job)
        objects = local_objects(server, job)
        leftovers = [p.name for p in data.rglob(".tmp-*")]
        log = server.log()
    lost = sorted(set(objects) - {key for _, key in rows})
    print(f"disk full ({mount.name}): LastError {error!r}; {refused:.0f} captures refused; "
          f"{len(during)} recorded while full; objects without a record {lost}; {delivered}")
    if mount == data:  # the database is on the full disk too: LastError cannot be written
        assert "job state not written" in log
    else:
        assert error.startswith("storage: snapshot not stored: cannot write snapshot/")
        assert error.endswith("No space left on device")
    # no record without its whole object; no partial object or temp file left behind
    assert {key for _, key in rows} <= set(objects)
    assert all(whole_jpeg(path.read_bytes()) for path in objects.values())
    assert leftovers == []
    assert len(lost) <= 1  # the sequence object of a capture whose overwrite object failed
    check_one_event_per_record(data, job)
    assert "session crashed" not in log and "Traceback" not in log
