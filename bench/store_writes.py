"""CPU per capture of the store's group commits on a SQLite file: straight on the sqlite3 driver
(the default) against the same transactions through SQLAlchemy.

Two stores in this process, each on its own SQLite file with the service's pragmas, get the
same writes: for each capture of N jobs (round robin), the file record with its callback event,
and in the same transaction (as the service does at a few captures a second) the delivery
attempt of that job's previous event. The two take turns, ``--rounds`` rounds of
``--captures`` captures each, and the process's CPU (user + system: the event loop and the
worker thread) is measured per round. Reported: the median ms per capture of each way, and
their ratio. At the end the two databases must hold the same rows (files, events, attempts,
job counters): the run fails if they do not.

    .venv/bin/python bench/store_writes.py               # 20 jobs, 9 rounds of 1000
    .venv/bin/python bench/store_writes.py --json
    .venv/bin/python bench/store_writes.py --quick       # a few seconds (smoke test)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from livesnap.jobs.models import (
    DeliveryAttempt,
    EventType,
    Job,
    JobStatus,
    OutboxEvent,
    SnapshotFile,
    StorageTarget,
    StorageType,
)
from livesnap.store import SqlStore, open_sql_store

T0 = 1_800_000_000_000
WAYS = ("direct", "sqlalchemy")
# what the comparison reads back: every row the group commits write
TABLES = {
    "files": "SELECT job_id, create_ms, object_key, is_overlay, sequence, size FROM files",
    "outbox_events": "SELECT id, job_id, attempts, delivered_ms, failed, last_error, "
                     "next_attempt_ms FROM outbox_events",
    "delivery_attempts": "SELECT event_id, job_id, at_ms, status_code, error "
                         "FROM delivery_attempts",
    "jobs": "SELECT id, snapshot_count, last_snapshot_ms, missed_ticks FROM jobs",
}


def job(job_id: str) -> Job:
    return Job(
        id=job_id, account="bench", name=job_id, template_id="tpl", template_name="tpl",
        interval_s=5, overwrite_format="snapshot/{JobId}.jpg",
        sequence_format="snapshot/{JobId}/{UnixTimestamp}.jpg",
        stream_url="rtmp://127.0.0.1/live/x", stream_type="rtmp",
        storage=StorageTarget(storage_type=StorageType.OSS,
                              endpoint="oss-cn-shanghai.aliyuncs.com", bucket="b"),
        callback_url="http://127.0.0.1:9/cb", status=JobStatus.STARTED,
        created_ms=T0, modified_ms=T0)


def capture(job_id: str, n: int) -> tuple[SnapshotFile, OutboxEvent]:
    at = T0 + n * 5000
    file = SnapshotFile(
        job_id=job_id, account="bench", create_ms=at, endpoint="oss-cn-shanghai.aliyuncs.com",
        bucket="b", object_key=f"snapshot/{job_id}/{at}.jpg", is_overlay=False, sequence=n,
        width=1920, height=1080, size=96_000)
    event = OutboxEvent(
        id=uuid.uuid5(uuid.NAMESPACE_URL, f"{job_id}/{n}").hex, job_id=job_id, account="bench",
        url="http://127.0.0.1:9/cb", type=EventType.CAPTURED, created_ms=at,
        data={"JobId": job_id, "CreateTime": at, "ObjectKey": file.object_key})
    return file, event


class Writes:
    """One way's store and where its jobs are."""

    def __init__(self, store: SqlStore, jobs: int) -> None:
        self.store = store
        self.jobs = [f"job-{i:03d}" for i in range(jobs)]
        self.done = 0
        self.previous: dict[str, OutboxEvent] = {}

    async def one(self) -> None:
        n = self.done
        job_id = self.jobs[n % len(self.jobs)]
        file, event = capture(job_id, n)
        writes: list[Any] = [self.store.record_snapshot(file, [event])]
        last = self.previous.get(job_id)
        if last is not None:
            attempt = DeliveryAttempt(event_id=last.id, job_id=job_id, at_ms=file.create_ms,
                                      status_code=200, latency_ms=3, error="")
            writes.append(self.store.record_attempt(
                attempt, delivered=True, failed=False, next_attempt_ms=0, may_wait=True))
        await asyncio.gather(*writes)
        self.previous[job_id] = event
        self.done += 1


async def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    ways: dict[str, Writes] = {}
    for way in WAYS:
        store = await open_sql_store(f"sqlite:///{folder / way}.db", group_gap_s=0.0,
                                     direct_writes=way == "direct")
        ways[way] = Writes(store, args.jobs)
        for job_id in ways[way].jobs:
            await store.create_job(job(job_id))
    try:
        for writes in ways.values():  # warm both up: caches, compiled statements
            for _ in range(min(args.captures, 200)):
                await writes.one()
        rounds: dict[str, list[float]] = {way: [] for way in WAYS}
        for r in range(args.rounds):
            for way in WAYS if r % 2 == 0 else reversed(WAYS):
                start = time.process_time()
                for _ in range(args.captures):
                    await ways[way].one()
                rounds[way].append((time.process_time() - start) / args.captures * 1000)
        transactions = {way: ways[way].store.group_transactions for way in WAYS}
    finally:
        for writes in ways.values():
            await writes.store.close()
    same = {table: _rows(folder / "direct.db", sql) == _rows(folder / "sqlalchemy.db", sql)
            for table, sql in TABLES.items()}
    ms = {way: statistics.median(values) for way, values in rounds.items()}
    return {
        "jobs": args.jobs, "rounds": args.rounds, "captures_per_round": args.captures,
        "ms_per_capture": {way: round(value, 3) for way, value in ms.items()},
        "direct_over_sqlalchemy": round(ms["direct"] / ms["sqlalchemy"], 3),
        "rounds_ms": {way: [round(v, 3) for v in values] for way, values in rounds.items()},
        "transactions": transactions,
        "same_rows": same,
    }


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute(sql).fetchall())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--captures", type=int, default=1000, help="captures per round")
    parser.add_argument("--quick", action="store_true", help="3 rounds of 100")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.captures = 3, 100
    with tempfile.TemporaryDirectory(prefix="livesnap-store-writes-") as folder:
        result = asyncio.run(measure(args, Path(folder)))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ms = result["ms_per_capture"]
        print(f"{args.jobs} jobs, {args.rounds} rounds of {args.captures} captures")
        for way in WAYS:
            print(f"{way:<11} {ms[way]:>7.3f} ms CPU per capture")
        print(f"direct / sqlalchemy: {result['direct_over_sqlalchemy']:.3f}")
    if not all(result["same_rows"].values()):
        print(f"the two ways wrote different rows: {result['same_rows']}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
