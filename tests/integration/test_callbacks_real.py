"""Callbacks end to end: a real nginx-rtmp origin and ffmpeg publisher, ``livesnap serve`` as a
subprocess driven through the official SDK, and a real HTTP receiver on 127.0.0.1 that can be
switched to answer 500 or to hang.

What is proven: every snapshot produces exactly one signed ``LiveSnapshotCaptured`` event (by
``EventId``), in order; a receiver outage of 30 s loses nothing; a hanging receiver does not
slow capture; events not yet delivered when the server is SIGKILLed arrive after a restart.
The per-job ordering query (``due_heads``) is in the store contract, PostgreSQL included.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise

import pytest
from alibabacloud_ice20201109 import models as m
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

from livesnap.callbacks.signing import verify_signature

pytestmark = [pytest.mark.integration, pytest.mark.acceptance]

KEY = "integration-callback-key"
ENV = {
    "LIVESNAP_RW_TIMEOUT_S": "2",
    "LIVESNAP_RECONNECT_MAX_S": "2",
    "LIVESNAP_CALLBACK_KEYS": f"acct-a:{KEY}",
    "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "2",  # retries at most 2 s apart: recovery is quick
    "LIVESNAP_CALLBACK_READ_TIMEOUT_S": "2",
}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)


# a real receiver ---------------------------------------------------------------------------
@dataclass
class Delivery:
    at: float  # time.time() when received
    headers: dict[str, str]
    body: bytes
    answered: int | None  # what the receiver answered (None: not yet, or nobody listened)

    @property
    def event(self) -> dict:
        return json.loads(self.body)

    def signed(self) -> bool:
        return verify_signature(KEY, self.body, self.headers["x-livesnap-timestamp"],
                                self.headers["x-livesnap-signature"], now=self.at)


class _ClosingServer(ThreadingHTTPServer):
    """Its ``server_close`` ends every connection and joins every handler thread, so that
    no socket outlives the receiver (a leaked one fails a later test with ResourceWarning)."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:  # type: ignore[no-untyped-def]
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self.sockets_lock:
            for sock in self.open_sockets:  # a handler blocked reading sees EOF and ends
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        super().server_close()  # joins the handler threads, which close their sockets


class Receiver:
    """An HTTP server in a thread that records every POST; ``mode``: ok | fail | hang."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.deliveries: list[Delivery] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # lets hung requests go
        self.server = _ClosingServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/livesnap"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                answer = {"ok": 200, "fail": 500}.get(receiver.mode)
                headers = {k.lower(): v for k, v in self.headers.items()}
                delivery = Delivery(time.time(), headers, body, None)
                with receiver.lock:
                    receiver.deliveries.append(delivery)
                if answer is None:  # hang until released, then answer (livesnap may be gone)
                    receiver.release.wait(60)
                    answer = 200
                try:
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    return  # livesnap gave up on this attempt and closed the connection
                delivery.answered = answer

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "hang":
            self.release.clear()
        else:
            self.release.set()

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def acked(self, event_type: str = "LiveSnapshotCaptured") -> dict[str, Delivery]:
        """The first 200-answered delivery of each event, by EventId, in arrival order."""
        found: dict[str, Delivery] = {}
        for d in self.snapshot():
            if d.answered == 200 and d.event["EventType"] == event_type:
                found.setdefault(d.event["EventId"], d)
        return found

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# helpers -----------------------------------------------------------------------------------
def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def list_files(client, job_id):
    now = datetime.now(tz=UTC)
    files, start = [], iso(now - timedelta(hours=1))
    while True:
        body = client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
            job_id=job_id, start_time=start, end_time=iso(now + timedelta(minutes=5)),
            limit=100)).body
        files += body.file_list
        if not body.next_start_time:
            return files
        start = body.next_start_time


def submit(client, stream_url, callback_url):
    request = m.SubmitLiveSnapshotJobRequest(
        job_name="callbacks", template_id="system", snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=stream_url),
        callback_url=callback_url)
    return client.submit_live_snapshot_job(request).body.job_id


def command(client, job_id, name):
    client.send_live_snapshot_job_command(
        m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command=name))


def attempts(server, job_id):
    acs = core_client(server.endpoint)
    request = core_request("ListLiveSnapshotCallbackAttempts", "GET",
                           {"JobId": job_id, "Limit": "100"})
    return json.loads(acs.do_action_with_exception(request))["AttemptList"]


def undelivered(receiver, files):
    acked = {d.event["CreateTimestamp"] for d in receiver.acked().values()}
    return [f.create_timestamp for f in files if f.create_timestamp not in acked]


def all_delivered(receiver, client, job_id):
    files = list_files(client, job_id)
    return files if files and not undelivered(receiver, files) else None


def delivery_report(receiver, client, job_id):
    """What the receiver saw, for failure messages."""
    files = list_files(client, job_id)
    seen = [(round(d.at, 1), d.answered, d.event["EventType"][17:], d.event.get("CreateTimestamp"),
             d.headers.get("x-livesnap-attempt")) for d in receiver.snapshot()]
    return f"undelivered {undelivered(receiver, files)} of {len(files)} files; seen {seen}"


def assert_one_signed_event_per_file_in_order(receiver, files):
    deliveries = receiver.snapshot()
    assert deliveries and all(d.signed() for d in deliveries)
    assert all(d.headers["x-livesnap-event-id"] == d.event["EventId"] for d in deliveries)
    # duplicates (at least once) repeat the same EventId with the same bytes
    by_id: dict[str, set[bytes]] = {}
    for d in deliveries:
        by_id.setdefault(d.event["EventId"], set()).add(d.body)
    assert all(len(bodies) == 1 for bodies in by_id.values())
    captured = receiver.acked()
    events = [d.event for d in captured.values()]
    assert sorted((e["CreateTimestamp"], e["ObjectKey"]) for e in events) == sorted(
        (f.create_timestamp, f.oss_object) for f in files)  # exactly one EventId per file
    stamps = [e["CreateTimestamp"] for e in events]
    assert stamps == sorted(stamps), "captures arrived out of order"
    # status changes in order too (a capture and a status change recorded in the same few
    # milliseconds by different tasks may swap; docs/callbacks.md says so)
    changes = [d.event["EventTime"] for d in receiver.acked("LiveSnapshotJobStatusChanged").values()]
    assert changes == sorted(changes), "status changes arrived out of order"


# tests -------------------------------------------------------------------------------------
@pytest.mark.timeout(170)
def test_every_snapshot_called_back_once_in_order_through_outage_and_hang(
    tmp_path, publisher_factory
):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=ENV) as server:
        client = ice_client(server.endpoint)
        job_id = submit(client, publisher.url, receiver.url)
        wait_until(lambda: len(receiver.acked()) >= 2, 40, "the first two callbacks")
        status = receiver.acked("LiveSnapshotJobStatusChanged")
        assert any(d.event["NewStatus"] == "started" for d in status.values())

        # the receiver answers 500 for 30 s: nothing is lost, and it all arrives afterwards
        fail_from = int(time.time() * 1000)
        receiver.set_mode("fail")
        time.sleep(30)
        fail_to = int(time.time() * 1000)
        log = attempts(server, job_id)
        assert any(a["StatusCode"] == 500 and a["Error"] == "HTTP 500" for a in log)
        receiver.set_mode("ok")
        files = wait_until(lambda: all_delivered(receiver, client, job_id), 20,
                           "every snapshot after the outage")
        # capture went on while callbacks failed: a 30 s window holds at least 5 of the 5 s
        # ticks whatever their phase (the count of all files depended on when the first
        # two callbacks, status or capture, had come: 7 or 8)
        during = [f for f in files if fail_from <= f.create_timestamp <= fail_to]
        assert len(during) >= 5, [f.create_timestamp for f in files]

        # the receiver hangs: capture keeps its interval while deliveries time out
        hang_from = int(time.time() * 1000)
        receiver.set_mode("hang")
        time.sleep(16)
        receiver.set_mode("ok")
        files = list_files(client, job_id)
        stamps = [f.create_timestamp for f in files]
        during = [s for s in stamps if s >= hang_from - 5000]
        assert len(during) >= 4, during
        gaps = [b - a for a, b in pairwise(during)]
        assert all(3500 <= g <= 7500 for g in gaps), gaps
        assert any(a["Error"].startswith("timeout") for a in attempts(server, job_id))

        # stop the job so the set of files is final, then compare it with the callbacks
        command(client, job_id, "stop")
        files = wait_until(lambda: all_delivered(receiver, client, job_id), 30,
                           "every snapshot after the hang",
                           detail=lambda: delivery_report(receiver, client, job_id))
        wait_until(lambda: any(d.event["NewStatus"] == "paused" for d in
                               receiver.acked("LiveSnapshotJobStatusChanged").values()),
                   15, "the paused event")
        assert_one_signed_event_per_file_in_order(receiver, files)


@pytest.mark.timeout(120)
def test_undelivered_events_are_delivered_after_sigkill(tmp_path, publisher_factory):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=ENV) as server:
        client = ice_client(server.endpoint)
        job_id = submit(client, publisher.url, receiver.url)
        wait_until(lambda: receiver.acked(), 40, "the first callback")
        receiver.set_mode("fail")
        pending = wait_until(
            lambda: (p := undelivered(receiver, list_files(client, job_id))) and len(p) >= 2
            and p, 30, "two snapshots whose callbacks failed")

        server.kill()  # no chance to deliver or even to record anything more
        receiver.set_mode("ok")
        client = ice_client(server.start().endpoint)
        wait_until(lambda: not undelivered(receiver, list_files(client, job_id)), 30,
                   "the callbacks left undelivered at the kill")
        acked = {d.event["CreateTimestamp"] for d in receiver.acked().values()}
        assert set(pending) <= acked
        command(client, job_id, "stop")
        files = wait_until(lambda: all_delivered(receiver, client, job_id), 20, "all callbacks")
        assert_one_signed_event_per_file_in_order(receiver, files)
