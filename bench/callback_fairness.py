"""Callback latency of one account while another account's receivers hang.

Account A has one job whose events are written every ``--every`` seconds and delivered to a
receiver that answers ``200`` at once. Account B has ``--hanging`` jobs whose callback URL
accepts connections and never answers (each attempt holds a delivery slot until the
whole-attempt timeout), with a new event per job every 5 s. The dispatcher is livesnap's own
(the production HTTP client and delivery policy, over SQLite), in this process.

Two windows in one run: A alone, then A with B. For each: the time from A's event being
written to its request reaching A's receiver, p50 and p99, and their ratio. Target (fair
callbacks): A's p99 with B within 2x of A's alone.

    .venv/bin/python bench/callback_fairness.py --hanging 400 --window 30 --every 0.1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid

from livesnap.callbacks.dispatcher import CallbackDispatcher, callback_client
from livesnap.callbacks.keys import CallbackKeys
from livesnap.callbacks.policy import DeliveryPolicy
from livesnap.clock import SystemClock
from livesnap.jobs.models import (
    EventType,
    Job,
    JobPatch,
    JobStatus,
    OutboxEvent,
    StorageTarget,
    StorageType,
    StreamStatus,
)
from livesnap.store import open_sql_store
from livesnap.store.sql import SqlStore


class Receiver:
    """An HTTP/1.1 receiver on loopback: answers 200 at once, or never (``hang``)."""

    def __init__(self, host: str, *, hang: bool) -> None:
        self.host, self.hang = host, hang
        self.arrivals: dict[str, float] = {}  # event id -> when its request arrived
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://{self.host}:{self.server.sockets[0].getsockname()[1]}/hook"

    async def start(self) -> Receiver:
        self.server = await asyncio.start_server(self._serve, self.host, 0)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if
                              b": " in line)
                await reader.readexactly(int(fields.get(b"Content-Length", b"0")))
                event = fields.get(b"X-Livesnap-Event-Id", b"").decode()
                self.arrivals.setdefault(event, time.time())
                if self.hang:
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


def make_job(job_id: str, account: str, url: str) -> Job:
    return Job(id=job_id, account=account, name=job_id, template_id="system",
               template_name="System", interval_s=5, overwrite_format=None,
               sequence_format="s/{JobId}/{UnixTimestamp}.jpg", stream_url="rtmp://o/live/a",
               stream_type="rtmp", storage=StorageTarget(storage_type=StorageType.LOCAL,
                                                         endpoint="e", bucket="b"),
               callback_url=url, status=JobStatus.STARTED, stream_status=StreamStatus.LIVE,
               created_ms=0, modified_ms=0)


def event_of(job: Job) -> OutboxEvent:
    now = int(time.time() * 1000)
    return OutboxEvent(id=uuid.uuid4().hex, job_id=job.id, account=job.account,
                       url=job.callback_url or "", type=EventType.CAPTURED,
                       data={"JobId": job.id}, created_ms=now, next_attempt_ms=now)


async def window(args: argparse.Namespace, hanging: int) -> dict[str, float | int]:
    fast = await Receiver("127.0.0.1", hang=False).start()
    dead = await Receiver("127.0.0.2", hang=True).start()
    tmp = tempfile.TemporaryDirectory(prefix="livesnap-fairness-")
    store = await open_sql_store(f"sqlite+aiosqlite:///{tmp.name}/outbox.db")  # as served
    policy = DeliveryPolicy()  # production defaults: 16 slots, 12 s per attempt
    dispatcher = CallbackDispatcher(
        store=store, client=callback_client(policy), clock=SystemClock(), policy=policy,
        keys=CallbackKeys({"acct-a": "k" * 32, "acct-b": "k" * 32}))
    a_job = make_job("a", "acct-a", fast.url)
    b_jobs = [make_job(f"b{n}", "acct-b", dead.url) for n in range(hanging)]
    await store.create_job(a_job, [])
    for job in b_jobs:
        await store.create_job(job, [])
    dispatcher.start()
    written: dict[str, float] = {}
    stop = asyncio.Event()

    async def b_events() -> None:  # each B job: an event every 5 s, spread over the 5 s
        step = 5.0 / max(len(b_jobs), 1)
        while b_jobs and not stop.is_set():
            for job in b_jobs:
                await add(store, dispatcher, job)
                await asyncio.sleep(step)

    b_task = asyncio.create_task(b_events())
    try:
        start = time.monotonic()
        while time.monotonic() < start + args.window:
            event = await add(store, dispatcher, a_job)
            written[event.id] = event.created_ms / 1000
            await asyncio.sleep(args.every)
        await asyncio.sleep(2.0)  # the last of A's events
    finally:
        stop.set()
        b_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b_task
        with contextlib.suppress(Exception):
            await dispatcher.close(0.5)
        await fast.stop()
        await dead.stop()
        await store.close()
        tmp.cleanup()
    latencies = sorted((fast.arrivals[e] - t) * 1000 for e, t in written.items()
                       if e in fast.arrivals)
    return {"a_events": len(written), "a_delivered": len(latencies),
            "b_jobs": hanging, "b_requests_seen": len(dead.arrivals),
            "p50_ms": round(statistics.median(latencies), 2) if latencies else -1,
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
            if latencies else -1}


async def add(store: SqlStore, dispatcher: CallbackDispatcher, job: Job) -> OutboxEvent:
    """One event of ``job``, committed and handed over as the service does."""
    event = event_of(job)
    await store.update_job(job.id, JobPatch(), now_ms=event.created_ms, events=[event])
    dispatcher.offer([event])
    return event


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hanging", type=int, default=400, help="B's jobs (default 400)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per window")
    parser.add_argument("--every", type=float, default=0.1, help="A's event period (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # B's failed attempts are the point, not news
    alone = asyncio.run(window(args, 0))
    shared = asyncio.run(window(args, args.hanging))
    ratio = (shared["p99_ms"] / alone["p99_ms"]) if alone["p99_ms"] > 0 else None
    summary = {"alone": alone, "with_hanging_account": shared,
               "p99_ratio": round(ratio, 2) if ratio is not None else None,
               "within_2x": ratio is not None and ratio <= 2.0
               and shared["a_delivered"] == shared["a_events"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, figures in (("A alone", alone), (f"A + B's {args.hanging} hanging", shared)):
            print(f"{name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                  f"{figures['a_delivered']}/{figures['a_events']} delivered")
        print(f"p99 ratio {summary['p99_ratio']} (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
