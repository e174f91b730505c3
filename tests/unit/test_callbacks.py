"""Callbacks: payload bytes, signatures, the retry schedule and the dispatcher (no network).

The dispatcher runs over the memory store and over SQLite (the ordering query is SQL), with
``httpx.MockTransport`` as the receiver, a fake resolver and a ``ManualClock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from livesnap.api.handlers import ACTIONS, Context
from livesnap.api.params import Params
from livesnap.callbacks import payload, signing
from livesnap.callbacks.dispatcher import CallbackDispatcher, callback_client
from livesnap.callbacks.http11 import CallbackClient, HttpxPoster
from livesnap.callbacks.keys import CallbackKeys
from livesnap.callbacks.policy import DeliveryPolicy, decide
from livesnap.clock import ManualClock, SystemClock
from livesnap.config import Settings, parse_callback_keys
from livesnap.errors import JobNotFound, StoreError
from livesnap.jobs.events import captured_event, status_event
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import (
    EventType,
    Job,
    JobStatus,
    OutboxEvent,
    SnapshotFile,
    StorageTarget,
    StorageType,
    StreamStatus,
    Verdict,
)
from livesnap.jobs.ports import CaptureReport
from livesnap.jobs.retry import Backoff
from livesnap.jobs.urls import DEFAULT_BLOCKED_NETWORKS, parse_networks
from livesnap.store import MemoryStore, open_sql_store

T0 = 1_767_268_800_000  # 2026-01-01T12:00:00Z
KEY = "test-callback-key"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "callbacks.md"
BLOCKED = parse_networks(DEFAULT_BLOCKED_NETWORKS)


def make_job(job_id: str = "job-1", *, account: str = "acct", url: str = "http://hooks.test/cb") -> Job:
    return Job(
        id=job_id, account=account, name="lobby-cam", template_id="system", template_name="System",
        interval_s=5, overwrite_format="snapshot/{JobId}.jpg",
        sequence_format="snapshot/{JobId}/{UnixTimestamp}.jpg", stream_url="rtmp://o/live/a",
        stream_type="rtmp",
        storage=StorageTarget(storage_type=StorageType.OSS, endpoint="oss-cn-shanghai.aliyuncs.com",
                              bucket="bkt"),
        callback_url=url, status=JobStatus.STARTED, stream_status=StreamStatus.LIVE,
        created_ms=T0, modified_ms=T0,
    )


def make_file(job: Job, create_ms: int = T0 + 123, **kw) -> SnapshotFile:
    base = dict(
        job_id=job.id, account=job.account, create_ms=create_ms, endpoint=job.storage.endpoint,
        bucket=job.storage.bucket, object_key=f"snapshot/{job.id}/{create_ms}.jpg",
        is_overlay=False, overwrite_key=f"snapshot/{job.id}.jpg", sequence=42, width=1280,
        height=720, size=183422, stream_time_ms=210000, lag_ms=38, quality=Verdict.OK,
        skipped_frames=1,
    )
    base.update(kw)
    return SnapshotFile(**base)


def captured(job: Job, n: int, *, at_ms: int | None = None) -> OutboxEvent:
    created = T0 + 1000 * n if at_ms is None else at_ms
    return captured_event(f"{job.id}-ev{n}", job, make_file(job, created - 50), now_ms=created)


# payload -----------------------------------------------------------------------------------
def test_captured_payload_bytes():
    job = make_job("7a0b7cbe")
    event = captured_event("ev-1", job, make_file(job), now_ms=T0 + 161)
    assert payload.render(event) == (
        b'{"EventId":"ev-1","EventType":"LiveSnapshotCaptured",'
        b'"EventTime":"2026-01-01T12:00:00.161Z","JobId":"7a0b7cbe","JobName":"lobby-cam",'
        b'"Endpoint":"oss-cn-shanghai.aliyuncs.com","Bucket":"bkt",'
        b'"ObjectKey":"snapshot/7a0b7cbe/1767268800123.jpg","OverwriteKey":"snapshot/7a0b7cbe.jpg",'
        b'"IsOverlay":false,"CreateTime":"2026-01-01T12:00:00Z","CreateTimestamp":1767268800123,'
        b'"Sequence":42,"Width":1280,"Height":720,"Size":183422,"StreamTimestamp":210000,'
        b'"CaptureLag":38,"Quality":"ok","SkippedFrames":1}'
    )
    assert tuple(payload.body(event)) == payload.CAPTURED_FIELDS


def test_status_payload_bytes():
    before = make_job()
    after = before.evolve(stream_status=StreamStatus.RECONNECTING)
    event = status_event("ev-2", before, after, reason="stream reconnecting", now_ms=T0 + 5250)
    assert payload.render(event) == (
        b'{"EventId":"ev-2","EventType":"LiveSnapshotJobStatusChanged",'
        b'"EventTime":"2026-01-01T12:00:05.250Z","JobId":"job-1","JobName":"lobby-cam",'
        b'"OldStatus":"started","NewStatus":"started","OldStreamStatus":"live",'
        b'"NewStreamStatus":"reconnecting","Reason":"stream reconnecting"}'
    )
    assert tuple(payload.body(event)) == payload.STATUS_FIELDS


def test_payload_unknowns_are_null_and_text_is_utf8():
    job = make_job().evolve(name="カメラ 1")
    file = make_file(job, overwrite_key=None, sequence=None, stream_time_ms=None, lag_ms=None)
    body = payload.render(captured_event("e", job, file, now_ms=T0))
    decoded = json.loads(body)
    assert decoded["JobName"] == "カメラ 1" and "カメラ".encode() in body
    assert [decoded[k] for k in ("OverwriteKey", "Sequence", "StreamTimestamp", "CaptureLag")] == [
        None, None, None, None]


async def test_payload_bytes_survive_the_sql_store(tmp_path):
    store = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    try:
        job = make_job().evolve(name="名前 \"quoted\"")
        event = captured(job, 1)
        await store.create_job(job, [event])
        [stored] = await store.pending_events(job.id)
        assert payload.render(stored) == payload.render(event)
    finally:
        await store.close()


# signing -----------------------------------------------------------------------------------
def test_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"EventId":"e"}'
    expected = hmac.new(b"k", b"1767268800." + body, hashlib.sha256).hexdigest()
    assert signing.signature("k", 1767268800, body) == "sha256=" + expected
    headers = signing.headers(key="k", event_id="e", event_type="LiveSnapshotCaptured",
                              timestamp=1767268800, body=body, attempt=3)
    assert headers == {
        "Content-Type": "application/json",
        "User-Agent": "livesnap-callbacks/1",
        "X-Livesnap-Event-Id": "e",
        "X-Livesnap-Event-Type": "LiveSnapshotCaptured",
        "X-Livesnap-Timestamp": "1767268800",
        "X-Livesnap-Signature": "sha256=" + expected,
        "X-Livesnap-Attempt": "3",
    }


@pytest.mark.parametrize(
    ("body", "timestamp", "key", "now", "ok"),
    [
        (b'{"a":1}', "1767268800", "k", 1767268800, True),
        (b'{"a":1}', "1767268800", "k", 1767268800 + 299, True),
        (b'{"a":2}', "1767268800", "k", 1767268800, False),  # tampered body
        (b'{"a":1}', "1767268801", "k", 1767268800, False),  # tampered timestamp
        (b'{"a":1}', "1767268800", "other", 1767268800, False),  # wrong key
        (b'{"a":1}', "1767268800", "k", 1767268800 + 301, False),  # too old: a replay
        (b'{"a":1}', "1767268800", "k", 1767268800 - 301, False),  # from the future
        (b'{"a":1}', "", "k", 1767268800, False),
        (b'{"a":1}', "-1767268800", "k", 1767268800, False),
    ],
)
def test_verify_signature(body, timestamp, key, now, ok):
    sent = signing.signature("k", 1767268800, b'{"a":1}')
    assert signing.verify_signature(key, body, timestamp, sent, now=now) is ok


def test_verify_signature_refuses_garbage_without_raising():
    for bad in ("", "sha256=", "sha1=abc", "sha256=ünïcode", "sha256=" + "0" * 64):
        assert not signing.verify_signature("k", b"{}", "1767268800", bad, now=1767268800)


def documented_verify():
    text = DOCS.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "docs/callbacks.md has no python example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 10
    namespace: dict = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace["verify"]


def test_the_documented_verification_snippet_works():
    verify = documented_verify()
    body = payload.render(captured(make_job(), 1))
    now = int(time.time())
    headers = signing.headers(key=KEY, event_id="e", event_type="t", timestamp=now, body=body,
                              attempt=1)
    stamp, sig = headers["X-Livesnap-Timestamp"], headers["X-Livesnap-Signature"]
    assert verify(KEY, body, stamp, sig)
    assert not verify(KEY, body + b" ", stamp, sig)
    assert not verify(KEY, body, str(now + 1), sig)
    assert not verify("other", body, stamp, sig)
    assert not verify(KEY, body, str(now - 1000), signing.signature(KEY, now - 1000, body))
    assert not verify(KEY, body, stamp, "sha256=ü")


# keys --------------------------------------------------------------------------------------
def test_configured_keys_win_and_others_are_generated_once_and_kept(tmp_path):
    keys = CallbackKeys.in_data_dir(tmp_path, {"a": "configured"})
    assert keys.key_for("a") == "configured"
    generated = keys.key_for("b")
    assert len(generated) >= 40 and keys.key_for("b") == generated
    path = tmp_path / "callback-keys.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {"b": generated}
    again = CallbackKeys.in_data_dir(tmp_path, {})
    assert again.key_for("b") == generated and again.generated() == {"b": generated}
    assert "configured" not in repr(keys) and generated not in repr(keys)


def test_two_instances_sharing_a_data_dir_agree(tmp_path):
    first, second = CallbackKeys.in_data_dir(tmp_path, {}), CallbackKeys.in_data_dir(tmp_path, {})
    assert first.key_for("x") == second.key_for("x")


def test_a_corrupt_key_file_fails_at_start(tmp_path):
    (tmp_path / "callback-keys.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must map account names to keys"):
        CallbackKeys.in_data_dir(tmp_path, {})


def test_callback_settings(monkeypatch):
    assert parse_callback_keys(" a:k1 , b:k:with:colons,") == {"a": "k1", "b": "k:with:colons"}
    for bad in ("a", "a:", ":k"):
        with pytest.raises(ValueError, match="entry 1 must look like account:key"):
            parse_callback_keys(bad)
    monkeypatch.setenv("LIVESNAP_CALLBACK_KEYS", "acct:secret-key")
    monkeypatch.setenv("LIVESNAP_CALLBACK_BACKOFF_MAX_S", "2")
    settings = Settings()
    assert settings.callbacks.configured_callback_keys() == {"acct": "secret-key"}
    assert "secret-key" not in repr(settings)
    callbacks = settings.callbacks
    assert (callbacks.callback_backoff_max_s, callbacks.callback_max_age_s) == (2.0, 86400.0)
    monkeypatch.setenv("LIVESNAP_CALLBACK_BACKOFF_MAX_S", "0.5")
    with pytest.raises(ValueError, match="callback_backoff_max_s"):
        Settings()


# retry policy (pure) -----------------------------------------------------------------------
def test_failed_attempts_wait_longer_each_time_up_to_the_cap():
    policy = DeliveryPolicy(backoff=Backoff(base_s=1, factor=2, cap_s=20, jitter=0.5))
    event = captured(make_job(), 0, at_ms=T0)
    waits = []
    for attempts in range(8):
        out = decide(policy, replace(event, attempts=attempts), now_ms=T0, ok=False, rand=0.0)
        assert not out.failed and not out.delivered
        waits.append(out.next_attempt_ms - T0)
    assert waits == [1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]
    jittered = decide(policy, event, now_ms=T0, ok=False, rand=0.999).next_attempt_ms - T0
    assert 500 <= jittered < 1000
    assert decide(policy, event, now_ms=T0, ok=True, rand=0.0).delivered


def test_an_event_past_max_age_fails_but_only_after_min_attempts():
    policy = DeliveryPolicy(backoff=Backoff(base_s=1, cap_s=1, jitter=0), max_age_s=60,
                            min_attempts=3)
    old = captured(make_job(), 0, at_ms=T0)
    late = T0 + 120_000
    first = decide(policy, old, now_ms=late, ok=False, rand=0)
    assert not first.failed  # a day-old event still gets its tries (livesnap was down)
    third = replace(old, attempts=2)
    assert decide(policy, third, now_ms=late, ok=False, rand=0).failed
    young = replace(old, attempts=50)
    assert not decide(policy, young, now_ms=T0 + 58_000, ok=False, rand=0).failed


# dispatcher --------------------------------------------------------------------------------
class Receiver:
    """A scripted ``MockTransport`` handler: answers from ``script`` (then 200), records all."""

    def __init__(self, *script: int | Exception | str):
        self.script = list(script)
        self.requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.script else 200
        if step == "hang":
            await asyncio.sleep(3600)
        if isinstance(step, Exception):
            raise step
        return httpx.Response(int(step))

    def event_ids(self) -> list[str]:
        return [r.headers["X-Livesnap-Event-Id"] for r in self.requests]


class FakeResolver:
    def __init__(self, answers: dict[str, list[list[str]]] | None = None):
        # host -> successive answers (the last one repeats)
        self.answers = answers or {}
        self.calls: list[str] = []

    async def resolve(self, host: str) -> list[str]:
        self.calls.append(host)
        answers = self.answers.get(host, [["203.0.113.7"]])
        return answers.pop(0) if len(answers) > 1 else answers[0]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
        return
    sql = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    yield sql
    await sql.close()


POLICY = DeliveryPolicy(
    backoff=Backoff(base_s=1, factor=2, cap_s=60, jitter=0.5), blocked_networks=BLOCKED,
    total_timeout_s=0.1,
)


def dispatcher(store, receiver, clock, *, policy=POLICY, resolver=None, keys=None):
    client = HttpxPoster(httpx.AsyncClient(transport=httpx.MockTransport(receiver)))
    return CallbackDispatcher(
        store=store, client=client, clock=clock, policy=policy, rand=lambda: 0.0,
        keys=keys or CallbackKeys({"acct": KEY}), resolver=resolver or FakeResolver(),
    )


async def event_state(store, job_id: str) -> dict[str, OutboxEvent]:
    return {e.id: e for e in await store.get_events(job_id, failed_only=False)}


async def test_500s_then_200_delivers_after_growing_waits(store):
    clock, receiver = ManualClock(T0 / 1000), Receiver(500, 500, 503, 200)
    job = make_job()
    event = captured(job, 0, at_ms=T0)
    await store.create_job(job, [event])
    d = dispatcher(store, receiver, clock)
    waits = []
    for _ in range(4):
        assert await d.dispatch_once() == 1
        state = (await event_state(store, job.id))[event.id]
        if state.delivered_ms is not None:
            break
        waits.append(state.next_attempt_ms - int(clock.time() * 1000))
        clock.advance(waits[-1] / 1000 - 0.001)
        assert await d.dispatch_once() == 0  # not before its time
        clock.advance(0.001)
    assert waits == [1000, 2000, 4000]
    assert state.delivered_ms == int(clock.time() * 1000) and state.attempts == 4
    bodies = {r.content for r in receiver.requests}
    assert bodies == {payload.render(event)}  # the same bytes on every attempt
    assert [r.headers["X-Livesnap-Attempt"] for r in receiver.requests] == ["1", "2", "3", "4"]
    for request in receiver.requests:
        assert signing.verify_signature(
            KEY, request.content, request.headers["X-Livesnap-Timestamp"],
            request.headers["X-Livesnap-Signature"], now=clock.time())
        assert request.headers["X-Livesnap-Event-Id"] == event.id
        assert request.headers["Host"] == "hooks.test"
        assert request.url.host == "203.0.113.7"  # pinned to the checked address
    log = await store.delivery_log(job.id, 10)
    assert [(a.status_code, a.error) for a in reversed(log)] == [
        (500, "HTTP 500"), (500, "HTTP 500"), (503, "HTTP 503"), (200, "")]


async def test_timeouts_and_connection_errors_are_retried(store):
    clock = ManualClock(T0 / 1000)
    receiver = Receiver(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), "hang", 200)
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d = dispatcher(store, receiver, clock)
    for _ in range(4):
        await d.dispatch_once()
        clock.advance(60)
    log = [(a.status_code, a.error) for a in reversed(await store.delivery_log(job.id, 10))]
    assert log == [
        (None, "ConnectError: refused"),
        (None, "timeout: ReadTimeout: slow"),
        (None, "timeout: no response within 0.1 s"),
        (200, ""),
    ]


async def test_the_next_checked_address_is_tried_when_one_refuses(store):
    clock = ManualClock(T0 / 1000)
    receiver = Receiver(httpx.ConnectError("refused"), 200)
    resolver = FakeResolver({"hooks.test": [["2001:db8::1", "203.0.113.9"]]})
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    await dispatcher(store, receiver, clock, resolver=resolver).dispatch_once()
    assert [r.url.host for r in receiver.requests] == ["2001:db8::1", "203.0.113.9"]
    assert [a.status_code for a in await store.delivery_log(job.id, 10)] == [200]


async def test_max_age_marks_the_event_failed_and_later_events_go_on(store):
    clock, receiver = ManualClock(T0 / 1000), Receiver(*[500] * 50)
    policy = DeliveryPolicy(backoff=Backoff(base_s=4, cap_s=4, jitter=0), max_age_s=10,
                            min_attempts=2, blocked_networks=BLOCKED)
    job = make_job()
    first, second = captured(job, 0, at_ms=T0), captured(job, 1, at_ms=T0 + 1)
    await store.create_job(job, [first, second])
    d = dispatcher(store, receiver, clock, policy=policy)
    for _ in range(3):  # at +0 s, +4 s, +8 s; the next would be past 10 s
        await d.dispatch_once()
        clock.advance(4)
    state = await event_state(store, job.id)
    assert state[first.id].failed and state[first.id].attempts == 3
    assert receiver.event_ids() == [first.id] * 3
    assert not state[second.id].failed  # no longer held back by the given-up one
    await d.dispatch_once()
    assert receiver.event_ids()[-1] == second.id
    assert [e.id for e in await store.get_events(job.id, failed_only=True)] == [first.id]


async def test_a_job_sends_its_events_in_order_while_other_jobs_go_on(store):
    clock = ManualClock(T0 / 1000)
    job_a, job_b = make_job("a"), make_job("b")
    a1, a2, b1 = captured(job_a, 1), captured(job_a, 2), captured(job_b, 3)
    await store.create_job(job_a, [a1, a2])
    await store.create_job(job_b, [b1])
    receiver = Receiver(500)  # a1's first attempt fails
    clock.advance(10)  # every event is due
    d = dispatcher(store, receiver, clock)
    assert await d.dispatch_once() == 2
    assert sorted(receiver.event_ids()) == sorted([a1.id, b1.id])  # a2 waits behind a1
    assert await d.dispatch_once() == 0  # a1 backs off; a2 still may not overtake it
    clock.advance(1)
    await d.dispatch_once()
    await d.dispatch_once()
    assert receiver.event_ids()[2:] == [a1.id, a2.id]
    assert all(e.delivered_ms for e in (await event_state(store, "a")).values())


async def test_a_backlog_of_one_job_does_not_starve_the_others(store):
    clock = ManualClock(T0 / 1000)
    job_a, job_b = make_job("a"), make_job("b")
    backlog = [captured(job_a, n) for n in range(40)]
    await store.create_job(job_a, backlog)
    await store.create_job(job_b, [captured(job_b, 100)])
    clock.advance(200)
    one = DeliveryPolicy(concurrency=1, blocked_networks=BLOCKED, total_timeout_s=1.0)
    await dispatcher(store, Receiver(500), clock, policy=one).dispatch_once()
    # a's head failed and backs off; its 39 other events are due behind it, and older than b's
    receiver = Receiver()
    two = DeliveryPolicy(concurrency=2, blocked_networks=BLOCKED, total_timeout_s=1.0)
    await dispatcher(store, receiver, clock, policy=two).dispatch_once()
    assert receiver.event_ids() == ["b-ev100"]


async def test_a_blocked_address_is_a_failed_attempt_and_nothing_is_sent(store):
    clock, receiver = ManualClock(T0 / 1000), Receiver()
    # DNS rebinding: the name was fine at Submit, now it points at the metadata service
    resolver = FakeResolver({"hooks.test": [["169.254.169.254"], ["203.0.113.7"]]})
    job = make_job()
    event = captured(job, 0, at_ms=T0)
    await store.create_job(job, [event])
    d = dispatcher(store, receiver, clock, resolver=resolver)
    await d.dispatch_once()
    assert receiver.requests == []
    [attempt] = await store.delivery_log(job.id, 10)
    assert attempt.status_code is None
    assert attempt.error == (
        "refused: hooks.test resolves to 169.254.169.254, which is in a blocked network "
        "(LIVESNAP_BLOCKED_NETWORKS); nothing was sent"
    )
    state = (await event_state(store, job.id))[event.id]
    assert not state.failed and state.next_attempt_ms > T0  # retried later, like any failure
    clock.advance(1)
    await d.dispatch_once()
    assert [r.url.host for r in receiver.requests] == ["203.0.113.7"]


async def test_a_mixed_answer_with_one_blocked_address_is_refused(store):
    clock, receiver = ManualClock(T0 / 1000), Receiver()
    resolver = FakeResolver({"hooks.test": [["203.0.113.7", "fe80::1"]]})
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    await dispatcher(store, receiver, clock, resolver=resolver).dispatch_once()
    assert receiver.requests == []
    assert "fe80::1" in (await store.delivery_log(job.id, 1))[0].error


async def test_unresolvable_hosts_and_bad_urls_are_failed_attempts(store):
    class Failing:
        async def resolve(self, host):
            raise OSError("Name or service not known")

    clock, receiver = ManualClock(T0 / 1000), Receiver()
    job = make_job()
    bad_url = make_job("bad", url="ftp://hooks.test/x")
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    await store.create_job(bad_url, [captured(bad_url, 1, at_ms=T0)])
    await dispatcher(store, receiver, clock, resolver=Failing()).dispatch_once()
    assert receiver.requests == []
    [attempt] = await store.delivery_log(job.id, 1)
    assert attempt.error == "cannot resolve hooks.test: Name or service not known"
    [attempt] = await store.delivery_log("bad", 1)
    assert attempt.error == "the callback URL must be http or https and name a host"


async def test_https_keeps_the_tls_name_of_the_url():
    clock, receiver = ManualClock(T0 / 1000), Receiver()
    store = MemoryStore()
    job = make_job(url="https://hooks.test:8443/cb?x=1")
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    await dispatcher(store, receiver, clock).dispatch_once()
    [request] = receiver.requests
    assert str(request.url) == "https://203.0.113.7:8443/cb?x=1"
    assert request.headers["Host"] == "hooks.test:8443"
    assert request.extensions["sni_hostname"] == "hooks.test"


async def test_replay_requeues_failed_events_through_the_api():
    clock, store = ManualClock(T0 / 1000), MemoryStore()
    manager = JobManager(store=store, clock=clock)
    job = make_job()
    event = captured(job, 0, at_ms=T0)
    await store.create_job(job, [event])
    policy = DeliveryPolicy(backoff=Backoff(base_s=1, cap_s=1, jitter=0), max_age_s=0.5,
                            min_attempts=1, blocked_networks=BLOCKED)
    receiver = Receiver(500)
    d = dispatcher(store, receiver, clock, policy=policy)
    manager.on_events_written(d.offer)
    await d.dispatch_once()
    assert (await event_state(store, job.id))[event.id].failed
    ctx = Context(manager=manager, account="acct", now_ms=int(clock.time() * 1000))
    log = await ACTIONS["ListLiveSnapshotCallbackAttempts"](ctx, Params([("JobId", job.id)]))
    assert log == {"AttemptList": [{"EventId": event.id, "Time": "2026-01-01T12:00:00.000Z",
                                    "StatusCode": 500, "LatencyMs": 0, "Error": "HTTP 500"}]}
    answer = await ACTIONS["ReplayLiveSnapshotCallbacks"](ctx, Params([("JobId", job.id)]))
    assert answer == {"Requeued": 1}
    assert d._wake.is_set()  # the dispatcher was told
    clock.advance(3600)  # long past max age: a replayed event still gets its attempts
    await d.dispatch_once()
    state = (await event_state(store, job.id))[event.id]
    assert state.delivered_ms is not None and receiver.event_ids() == [event.id, event.id]
    assert await manager.replay_failed("acct", job.id) == 0
    other = Context(manager=manager, account="someone-else", now_ms=0)
    with pytest.raises(JobNotFound):
        await ACTIONS["ReplayLiveSnapshotCallbacks"](other, Params([("JobId", job.id)]))
    with pytest.raises(JobNotFound):
        await manager.delivery_log("someone-else", job.id, 10)


async def test_the_manager_hands_over_the_events_it_writes():
    store, clock = MemoryStore(), ManualClock(T0 / 1000)
    manager = JobManager(store=store, clock=clock)
    woken: list[list[OutboxEvent]] = []
    manager.on_events_written(lambda events: woken.append(list(events)))
    job = make_job()
    await store.create_job(job)
    report = CaptureReport(job_id=job.id, create_ms=T0, sequence=1, sequence_key="k/1.jpg",
                           overwrite_key=None, width=1, height=1, size=1, stream_time_ms=None,
                           lag_ms=None)
    await manager.snapshot_stored(job, report)
    await manager.stream_changed(job.id, StreamStatus.RECONNECTING, error="eof")
    pending = await store.pending_events(job.id)
    assert [e.type for e in pending] == [EventType.CAPTURED, EventType.STATUS_CHANGED]
    assert woken == [[pending[0]], [pending[1]]]  # each write's events, as committed
    await manager.snapshot_stored(job.evolve(callback_url=None), replace(report, create_ms=T0 + 5))
    assert len(woken) == 2  # no callback URL, no event, nothing handed over
    await manager.replay_failed("acct", job.id)
    assert len(woken) == 2  # nothing failed, nothing requeued


# lifecycle ---------------------------------------------------------------------------------
async def until(predicate, seconds: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; a generous bound, as a loaded 2-core machine running
    the suite in parallel is slow (it only makes a failing run wait longer)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_run_delivers_on_notify_and_stops_promptly():
    clock, store, receiver = ManualClock(T0 / 1000), MemoryStore(), Receiver()
    policy = DeliveryPolicy(poll_interval_s=30, blocked_networks=BLOCKED)
    d = dispatcher(store, receiver, clock, policy=policy)
    d.start()
    await asyncio.sleep(0.05)
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d.notify()  # without it the next poll would be 30 s away
    await until(lambda: receiver.requests)
    assert len(receiver.requests) == 1
    started = time.monotonic()
    await d.close(5)
    assert time.monotonic() - started < 0.5


async def test_close_abandons_a_hanging_delivery_within_its_timeout_and_records_nothing():
    clock, store, receiver = ManualClock(T0 / 1000), MemoryStore(), Receiver("hang")
    policy = DeliveryPolicy(total_timeout_s=60, blocked_networks=BLOCKED)
    d = dispatcher(store, receiver, clock, policy=policy)
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d.start()
    await until(lambda: receiver.requests)
    started = time.monotonic()
    await d.close(0.2)
    assert time.monotonic() - started < 1.5
    assert await store.delivery_log(job.id, 10) == []  # made again after the next start
    assert len(await store.pending_events(job.id)) == 1


async def test_cancelling_run_stops_the_loop():
    d = dispatcher(MemoryStore(), Receiver(), ManualClock())
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert d._stopping.is_set()
    await d.close(1)


async def test_a_store_outage_does_not_kill_the_loop():
    class FlakyStore(MemoryStore):
        fails = 2

        async def due_heads(self, now_ms, limit):
            if self.fails:
                self.fails -= 1
                raise StoreError("database is locked")
            return await super().due_heads(now_ms, limit)

    store, receiver = FlakyStore(), Receiver()
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d = dispatcher(store, receiver, ManualClock(T0 / 1000),
                   policy=DeliveryPolicy(poll_interval_s=0.01, blocked_networks=BLOCKED))
    d.start()
    await until(lambda: receiver.requests)
    await d.close(1)
    assert len(receiver.requests) == 1


async def test_a_delivery_that_ends_during_a_poll_is_not_sent_again_from_its_stale_answer():
    release = asyncio.Event()

    class SlowStore(MemoryStore):
        slow = False

        async def due_heads(self, now_ms, limit):
            stale = await super().due_heads(now_ms, limit)
            if self.slow:  # the delivery in flight finishes and records while we "query"
                release.set()
                await asyncio.sleep(0.05)
            return stale

    class Gated(Receiver):
        async def __call__(self, request):
            self.requests.append(request)
            await release.wait()
            return httpx.Response(200)

    store, receiver = SlowStore(), Gated()
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d = dispatcher(store, receiver, ManualClock(T0 / 1000),
                   policy=DeliveryPolicy(poll_interval_s=0.01, blocked_networks=BLOCKED))
    d.start()
    await until(lambda: receiver.requests)
    store.slow = True
    await asyncio.sleep(0.3)
    await d.close(1)
    assert len(receiver.requests) == 1
    assert len(await store.delivery_log(job.id, 10)) == 1


def test_the_production_client_takes_the_policys_timeouts_and_keeps_a_slot_per_delivery():
    policy = DeliveryPolicy(connect_timeout_s=2, read_timeout_s=5, concurrency=7)
    client = callback_client(policy)
    assert isinstance(client, CallbackClient)
    assert (client.connect_timeout_s, client.read_timeout_s) == (2, 5)
    assert (client.max_idle, client.idle_expiry_s) == (7, 2.0)


class KeepAliveReceiver:
    """A real HTTP/1.1 server on loopback that answers 200 and notes each request's client
    port (one port = one connection); it drops a connection idle for ``idle_s``."""

    def __init__(self, idle_s: float = 30.0, answer_bytes: int = 0) -> None:
        ports: list[int] = []
        self.ports = ports

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = idle_s  # a read of the next request that takes longer ends it

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ports.append(self.client_address[1])
                self.send_response(200)
                self.send_header("Content-Length", str(answer_bytes))
                self.end_headers()
                try:
                    self.wfile.write(b"x" * answer_bytes)
                except OSError:
                    self.close_connection = True  # the client stopped reading: fine

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://hooks.test:{self.server.server_address[1]}/cb"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def deliver_all(store, d: CallbackDispatcher, job: Job, clock: ManualClock) -> None:
    for _ in range(20):
        await d.dispatch_once()
        clock.advance(0.001)
        if not [e for e in await store.get_events(job.id, failed_only=False)
                if e.delivered_ms is None]:
            return
    raise AssertionError(f"events left undelivered: {await store.delivery_log(job.id, 3)}")


@contextlib.asynccontextmanager
async def production_dispatcher(receiver: KeepAliveReceiver, events: int):
    """A dispatcher with the production client, ``events`` due captures of one job to
    ``receiver`` (loopback is not blocked by default); closes both afterwards."""
    clock, store = ManualClock(T0 / 1000), MemoryStore()
    job = make_job(url=receiver.url)
    await store.create_job(job, [captured(job, n, at_ms=T0) for n in range(events)])
    policy = DeliveryPolicy(blocked_networks=BLOCKED)
    client = callback_client(policy)
    d = CallbackDispatcher(store=store, client=client, clock=clock, policy=policy,
                           keys=CallbackKeys({"acct": KEY}), rand=lambda: 0.0,
                           resolver=FakeResolver({"hooks.test": [["127.0.0.1"]]}))
    try:
        yield store, d, job, clock
    finally:
        await client.aclose()
        receiver.close()


@pytest.mark.parametrize("idle_s", [30.0, 0.1])
async def test_http_callbacks_reuse_a_connection_and_a_dropped_one_is_no_failure(idle_s):
    receiver = KeepAliveReceiver(idle_s=idle_s)
    async with production_dispatcher(receiver, 4) as (store, d, job, clock):
        await deliver_all(store, d, job, clock)
        await asyncio.sleep(0.3)  # past the short idle timeout, the server dropped it
        clock.advance(10)  # the next captures are due
        for n in range(4, 7):  # the next captures, after that pause
            event = captured(job, n)
            assert await store.record_snapshot(make_file(job, event.created_ms + 1), [event])
        await deliver_all(store, d, job, clock)
    log = await store.delivery_log(job.id, 100)
    assert len(log) == 7 and len(receiver.ports) == 7
    assert [a.status_code for a in log] == [200] * 7  # not one failed attempt
    # one connection for all; with the short idle timeout, a second one after the pause
    assert len(set(receiver.ports)) == (1 if idle_s > 1 else 2)


async def test_a_long_answer_is_not_downloaded_and_its_connection_not_reused():
    receiver = KeepAliveReceiver(answer_bytes=8 * 1024 * 1024)
    async with production_dispatcher(receiver, 3) as (store, d, job, clock):
        await deliver_all(store, d, job, clock)
    log = await store.delivery_log(job.id, 10)
    assert [a.status_code for a in log] == [200] * 3
    assert len(set(receiver.ports)) == 3  # closed after 16 KiB, not read to the end


# retention -----------------------------------------------------------------------------------
async def poll(d: CallbackDispatcher) -> None:
    """One round of the dispatcher's loop, and the deliveries it started."""
    await d._poll()
    running = d._running()
    if running:
        await asyncio.wait(running)


async def test_events_done_with_are_deleted_after_the_retention_once_per_round(
        store, monkeypatch):
    import livesnap.callbacks.dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "PRUNE_BATCH", 2)  # several batches in one round
    clock, receiver = ManualClock(T0 / 1000), Receiver()
    job = make_job()
    await store.create_job(job, [captured(job, n, at_ms=T0 - 10 + n) for n in range(5)])
    policy = replace(POLICY, retention_s=3600.0, prune_every_s=600.0)
    d = dispatcher(store, receiver, clock, policy=policy)
    for _ in range(5):  # one event per poll: a job's events go in order
        await poll(d)
    assert len(receiver.requests) == 5
    await store.create_job(make_job("job-2"), [captured(make_job("job-2"), 0, at_ms=T0)])
    d2_pending = {e.id for e in await store.pending_events("job-2")}  # never delivered

    clock.advance(3599)  # a round runs (the first ran at the first poll): nothing an hour old
    await poll(d)
    assert len(await store.get_events(job.id, failed_only=False)) == 5
    clock.advance(2)  # an hour old now, but the last round was less than prune_every_s ago
    await poll(d)
    assert len(await store.get_events(job.id, failed_only=False)) == 5
    clock.advance(600)
    await poll(d)
    assert await store.get_events(job.id, failed_only=False) == []
    assert await store.delivery_log(job.id, 10) == []
    # the undelivered event of the other job was delivered by that poll, and is kept
    assert {e.id for e in await store.get_events("job-2", failed_only=False)} == d2_pending
    await d.close(1)


async def test_a_retention_of_zero_keeps_every_event(store):
    clock, receiver = ManualClock(T0 / 1000), Receiver()
    job = make_job()
    await store.create_job(job, [captured(job, 0, at_ms=T0)])
    d = dispatcher(store, receiver, clock, policy=replace(POLICY, retention_s=0.0))
    await poll(d)
    clock.advance(365 * 86_400)
    await poll(d)
    assert len(await store.get_events(job.id, failed_only=False)) == 1
    await d.close(1)


# delivery from memory ----------------------------------------------------------------------
def count_polls(store) -> list[int]:
    """Count ``due_heads`` calls on ``store`` (the dispatcher's poll)."""
    polls: list[int] = []
    real = store.due_heads

    async def due_heads(now_ms, limit):
        polls.append(now_ms)
        return await real(now_ms, limit)

    store.due_heads = due_heads
    return polls


async def write_and_offer(store, d: CallbackDispatcher, job: Job, n: int) -> OutboxEvent:
    """What the manager does: commit the event with its file, then hand it over."""
    event = captured(job, n)
    assert await store.record_snapshot(make_file(job, event.created_ms - 50), [event])
    d.offer([event])
    return event


async def started_slow_poller(store) -> tuple[CallbackDispatcher, Receiver, Job, list[int]]:
    """A running dispatcher whose poll comes every 30 s (so memory must do the work), a
    receiver, a job, and the list its polls are counted in."""
    receiver = Receiver()
    d = dispatcher(store, receiver, ManualClock(T0 / 1000 + 60),
                   policy=DeliveryPolicy(poll_interval_s=30, blocked_networks=BLOCKED))
    job = make_job()
    await store.create_job(job)
    polls = count_polls(store)
    d.start()
    await until(lambda: polls)  # the first round, at start
    return d, receiver, job, polls


async def test_a_known_jobs_offered_events_go_out_without_a_poll(store):
    d, receiver, job, polls = await started_slow_poller(store)
    first = await write_and_offer(store, d, job, 1)  # not known yet: the poll delivers it
    await until(lambda: receiver.requests)
    await until(lambda: job.id in d._known)  # its attempt showed nothing else pending
    rounds = len(polls)
    later = [await write_and_offer(store, d, job, n) for n in (2, 3, 4)]
    await until(lambda: len(receiver.requests) == 4)
    await d.close(1)
    assert len(polls) == rounds  # from memory: no poll since
    assert receiver.event_ids() == [e.id for e in (first, *later)]
    state = await event_state(store, job.id)
    assert all(e.delivered_ms is not None for e in state.values())


async def test_a_fresh_events_attempt_waits_to_share_the_next_records_transaction(tmp_path):
    # SQLite: an attempt of a known job with nothing else to deliver may wait (here up to 30 s)
    # for the next write that may not; the next offer of the job, or close, hurries it
    store = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}",
                                 group_company_s=30)
    try:
        flags: list[bool] = []
        real = store.record_attempt

        async def record_attempt(attempt, **kw):
            flags.append(kw["may_wait"])
            return await real(attempt, **kw)

        store.record_attempt = record_attempt
        d, receiver, job, _ = await started_slow_poller(store)
        other = make_job("job-2")
        await store.create_job(other)
        first = await write_and_offer(store, d, job, 1)  # the poll's: not known yet
        await until(lambda: job.id in d._known)
        second = await write_and_offer(store, d, job, 2)  # from memory
        await until(lambda: len(flags) == 2)
        await asyncio.sleep(0.2)
        assert (await event_state(store, job.id))[second.id].delivered_ms is None  # waiting
        # another job's file record takes it along
        assert await store.record_snapshot(make_file(other, T0 + 5), [])
        await until(lambda: len(d._inflight) == 0)
        assert (await event_state(store, job.id))[second.id].delivered_ms is not None
        third = await write_and_offer(store, d, job, 3)
        await until(lambda: len(flags) == 3)
        fourth = await write_and_offer(store, d, job, 4)  # its offer hurries the third's
        await until(lambda: len(flags) == 4)
        await d.close(5)  # and close the fourth's
        assert flags == [False, True, True, True]
        assert receiver.event_ids() == [first.id, second.id, third.id, fourth.id]
        state = await event_state(store, job.id)
        assert all(e.delivered_ms is not None for e in state.values())
    finally:
        await store.close()


async def test_a_job_waiting_for_a_retry_keeps_its_order_through_the_poll(store):
    clock, receiver = ManualClock(T0 / 1000 + 60), Receiver(200, 500)
    policy = DeliveryPolicy(poll_interval_s=0.02, backoff=Backoff(base_s=10, cap_s=10, jitter=0),
                            blocked_networks=BLOCKED)
    d = dispatcher(store, receiver, clock, policy=policy)
    job = make_job()
    await store.create_job(job)
    d.start()
    first = await write_and_offer(store, d, job, 1)
    await until(lambda: job.id in d._known)
    failing = await write_and_offer(store, d, job, 2)  # from memory; answered 500
    await until(lambda: len(receiver.requests) == 2)
    await until(lambda: job.id not in d._known)  # its event waits for a retry
    after = await write_and_offer(store, d, job, 3)  # may not overtake the retry
    await asyncio.sleep(0.2)
    assert receiver.event_ids() == [first.id, failing.id]
    clock.advance(10)
    await until(lambda: len(receiver.requests) == 4)
    await d.close(1)
    assert receiver.event_ids() == [first.id, failing.id, failing.id, after.id]


async def test_notify_forgets_what_memory_knew(store):
    d, receiver, job, polls = await started_slow_poller(store)
    await write_and_offer(store, d, job, 1)
    await until(lambda: job.id in d._known)
    # another process wrote an event for the job: this one knows it only from the outbox
    foreign = captured(job, 2)
    assert await store.record_snapshot(make_file(job, foreign.created_ms - 50), [foreign])
    rounds = len(polls)
    d.notify()
    assert job.id not in d._known
    mine = await write_and_offer(store, d, job, 3)  # left to the poll, after the foreign one
    await until(lambda: len(receiver.requests) == 3)
    await d.close(1)
    assert len(polls) > rounds
    assert receiver.event_ids()[1:] == [foreign.id, mine.id]


async def test_offers_beyond_the_concurrency_wait_for_a_slot_in_order():
    clock, store, receiver = ManualClock(T0 / 1000 + 60), MemoryStore(), Receiver()
    d = dispatcher(store, receiver, clock, policy=DeliveryPolicy(
        poll_interval_s=30, concurrency=1, blocked_networks=BLOCKED))
    jobs = [make_job(f"job-{n}") for n in range(3)]
    d.start()
    for job in jobs:
        await store.create_job(job)
        await write_and_offer(store, d, job, 0)
    await until(lambda: all(j.id in d._known for j in jobs) and not d._inflight, 5)
    sent = [await write_and_offer(store, d, job, n) for n in (1, 2) for job in jobs]
    await until(lambda: len(receiver.requests) == 9)
    await d.close(1)
    delivered = receiver.event_ids()[3:]
    assert sorted(delivered) == sorted(e.id for e in sent)
    for job in jobs:  # each job's in the order written
        assert [i for i in delivered if i.startswith(job.id)] == [f"{job.id}-ev1", f"{job.id}-ev2"]


async def test_an_offer_to_a_dispatcher_that_is_not_running_waits_for_the_poll():
    clock, store, receiver = ManualClock(T0 / 1000 + 60), MemoryStore(), Receiver()
    d = dispatcher(store, receiver, clock)
    job = make_job()
    await store.create_job(job)
    event = await write_and_offer(store, d, job, 1)
    await asyncio.sleep(0.05)
    assert receiver.requests == [] and d._wake.is_set()
    assert await d.dispatch_once() == 1
    assert receiver.event_ids() == [event.id]


async def test_a_quiet_dispatcher_polls_rarely_but_wakes_for_notify_and_its_own_retries():
    store, receiver = MemoryStore(), Receiver(500)
    policy = DeliveryPolicy(poll_interval_s=0.01, idle_poll_interval_s=30,
                            backoff=Backoff(base_s=0.3, cap_s=0.3, jitter=0),
                            blocked_networks=BLOCKED)
    d = dispatcher(store, receiver, SystemClock(), policy=policy)
    job = make_job()
    await store.create_job(job)
    polls = count_polls(store)
    d.start()
    await until(lambda: polls)  # found nothing due: the next poll is 30 s away
    event = captured(job, 0, at_ms=int(time.time() * 1000))
    await store.record_snapshot(make_file(job, event.created_ms - 50), [event])
    await asyncio.sleep(0.3)  # written without a word: not seen (a busy poll would have)
    assert receiver.requests == [] and len(polls) == 1
    d.notify()
    await until(lambda: receiver.requests)  # answered 500: a retry 0.3 s later
    await until(lambda: len(receiver.requests) == 2, 3)  # woken for it, not 30 s later
    await d.close(1)
    assert receiver.event_ids() == [event.id, event.id]


def test_the_idle_poll_may_not_be_shorter_than_the_busy_one():
    with pytest.raises(ValueError, match="idle_poll_interval_s"):
        DeliveryPolicy(poll_interval_s=1, idle_poll_interval_s=0.5)
    assert DeliveryPolicy(poll_interval_s=0.7).idle_poll_s == 0.7


# fairness ------------------------------------------------------------------------------------
class ByHost:
    """A receiver per host: ``hang`` hosts never answer, others answer ``status``."""

    def __init__(self, hang: set[str] = frozenset(), status: dict[str, int] | None = None):
        self.hang, self.status = hang, status or {}
        self.requests: list[httpx.Request] = []
        self.hanging = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        host = request.headers["Host"]
        if host in self.hang:
            self.hanging += 1
            await asyncio.sleep(3600)
        return httpx.Response(self.status.get(host, 200))

    def hosts(self) -> list[str]:
        return [r.headers["Host"] for r in self.requests]


async def test_one_accounts_hanging_receivers_leave_the_other_account_its_slots(store):
    """B's 40 jobs call receivers that never answer; A's event is still delivered at once."""
    clock = ManualClock(T0 / 1000)
    for n in range(40):  # each on a host of its own: the per-host limit does not help here
        job = make_job(f"b{n}", account="acct-b", url=f"http://b{n}.test/cb")
        await store.create_job(job, [captured(job, n)])
    a = make_job("a", account="acct-a", url="http://a.test/cb")
    await store.create_job(a, [captured(a, 100)])
    clock.advance(200)
    receiver = ByHost(hang={f"b{n}.test" for n in range(40)})
    policy = DeliveryPolicy(concurrency=16, blocked_networks=BLOCKED, total_timeout_s=60)
    keys = CallbackKeys({"acct-a": KEY, "acct-b": KEY})
    d = dispatcher(store, receiver, clock, policy=policy, keys=keys)
    d.start()
    await until(lambda: "a.test" in receiver.hosts())
    for _ in range(200):
        (event,) = await store.get_events("a", failed_only=False)
        if event.delivered_ms is not None:
            break
        await asyncio.sleep(0.01)
    assert event.delivered_ms is not None and event.attempts == 1
    assert receiver.hanging == 8  # B holds half the slots, never more
    await d.close(0.1)


async def test_one_receiver_gets_at_most_its_share_of_an_accounts_deliveries(store):
    clock = ManualClock(T0 / 1000)
    for n in range(12):
        job = make_job(f"slow{n}", url="http://slow.test/cb")
        await store.create_job(job, [captured(job, n)])
    fast = make_job("fast", url="http://fast.test/cb")
    await store.create_job(fast, [captured(fast, 50)])
    clock.advance(200)
    receiver = ByHost(hang={"slow.test"})
    policy = DeliveryPolicy(concurrency=8, per_account=8, per_host=3, blocked_networks=BLOCKED,
                            total_timeout_s=60)
    d = dispatcher(store, receiver, clock, policy=policy)
    d.start()
    await until(lambda: "fast.test" in receiver.hosts())
    await asyncio.sleep(0.05)
    assert receiver.hosts().count("slow.test") == 3
    await d.close(0.1)


async def test_a_receiver_that_keeps_hanging_gets_no_attempt_until_its_breaker_lets_a_probe(
        store):
    clock = ManualClock(T0 / 1000)
    jobs = [make_job(f"j{n}", url="http://down.test/cb") for n in range(8)]
    for n, job in enumerate(jobs):
        await store.create_job(job, [captured(job, n)])
    clock.advance(200)
    receiver = ByHost(hang={"down.test"})
    policy = DeliveryPolicy(concurrency=1, blocked_networks=BLOCKED, total_timeout_s=0.05,
                            breaker_failures=3, breaker_open_s=30)
    d = dispatcher(store, receiver, clock, policy=policy)
    for _ in range(6):
        await d.dispatch_once()
    assert len(receiver.requests) == 3  # three attempts in a row hung: the breaker opens
    clock.advance(29)
    await d.dispatch_once()
    assert len(receiver.requests) == 3
    clock.advance(1)
    receiver.hang.clear()
    await d.dispatch_once()  # the probe, which is answered: the breaker closes
    assert len(receiver.requests) == 4
    for _ in range(3):
        await d.dispatch_once()
    assert len(receiver.requests) == 7  # one at a time (concurrency 1), no breaker


async def test_quick_failures_never_open_the_breaker(store):
    clock = ManualClock(T0 / 1000)
    for n in range(6):
        job = make_job(f"j{n}", url="http://err.test/cb")
        await store.create_job(job, [captured(job, n)])
    clock.advance(200)
    receiver = ByHost(status={"err.test": 503})
    policy = DeliveryPolicy(concurrency=1, blocked_networks=BLOCKED, total_timeout_s=1,
                            breaker_failures=2, breaker_open_s=30)
    d = dispatcher(store, receiver, clock, policy=policy)
    for _ in range(6):
        await d.dispatch_once()
    assert len(receiver.requests) == 6  # a 503 answers at once: the usual retries go on


async def test_a_2xx_whose_body_trickles_is_delivered_once():
    """The receiver answers 200 at once, then sends its body a byte a second."""

    class Trickle(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(1)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        clock, store = SystemClock(), MemoryStore()
        url = f"http://127.0.0.1:{server.server_port}/cb"
        job = make_job(url=url)
        await store.create_job(job, [captured(job, 0, at_ms=int(time.time() * 1000))])
        # the body would take 100 s: its wait is cut at 1 s, inside the attempt's 3 s
        policy = DeliveryPolicy(blocked_networks=(), total_timeout_s=3, read_timeout_s=5)
        d = CallbackDispatcher(store=store, client=callback_client(policy), clock=clock,
                               policy=policy, keys=CallbackKeys({"acct": KEY}))
        await d.dispatch_once()
        (event,) = (await event_state(store, job.id)).values()
        assert event.delivered_ms is not None and event.attempts == 1
        await d.close(1)
    finally:
        server.shutdown()
        server.server_close()
