"""Publish hooks: what each origin's call says, which jobs it names, what the manager does,
and the HTTP endpoint's answers (token, errors, the shapes nginx-rtmp and SRS need)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from starlette.applications import Starlette
from tests.unit.test_manager import FakeEngine, spec, until, waiting_manager

from livesnap.api.hooks import HOOK_PATH, hook_routes
from livesnap.errors import InvalidParameter
from livesnap.jobs.hooks import StreamEvent, parse_hook, stream_key
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import Job, JobStatus, StreamStatus
from livesnap.jobs.waiting import WaitPolicy

TOKEN = "a-long-enough-hook-token"
URL = "rtmp://127.0.0.1/live/a"


# what a call says ---------------------------------------------------------------------------
def test_nginx_rtmp_calls_name_the_stream_by_tcurl_and_name():
    call = parse_hook({"call": "publish", "app": "live", "name": "cam1",
                       "tcurl": "rtmp://127.0.0.1:1935/live", "addr": "127.0.0.1"})
    assert (call.event, call.url) == (StreamEvent.PUBLISHED, "rtmp://127.0.0.1:1935/live/cam1")
    done = parse_hook({"call": "publish_done", "app": "live", "name": "cam1",
                       "tcurl": "rtmp://127.0.0.1:1935/live"})
    assert done.event is StreamEvent.UNPUBLISHED


def test_srs_calls_and_generic_calls():
    srs = parse_hook({"action": "on_unpublish", "app": "live", "stream": "s",
                      "tcUrl": "rtmp://origin/live"})
    assert (srs.event, srs.url) == (StreamEvent.UNPUBLISHED, "rtmp://origin/live/s")
    generic = parse_hook({"event": "publish", "url": "rtsp://cam.local:8554/door"})
    assert (generic.event, generic.url) == (StreamEvent.PUBLISHED, "rtsp://cam.local:8554/door")


def test_base_replaces_the_host_the_publisher_used():
    call = parse_hook({"call": "publish", "app": "live", "name": "cam1",
                       "tcurl": "rtmp://ingest.example.com/live", "base": "rtmp://origin:1936"})
    assert call.url == "rtmp://origin:1936/live/cam1"
    generic = parse_hook({"event": "publish", "url": "rtsp://localhost:8554/door",
                          "base": "rtsp://cams.internal:8554"})
    assert generic.url == "rtsp://cams.internal:8554/door"


def test_other_calls_are_ignored_and_missing_parts_are_refused():
    assert parse_hook({"call": "update_publish"}).event is None
    with pytest.raises(InvalidParameter, match="must say what happened"):
        parse_hook({"app": "live", "name": "x"})
    with pytest.raises(InvalidParameter, match="must name the stream"):
        parse_hook({"call": "publish", "app": "live"})
    with pytest.raises(InvalidParameter, match="not a URL livesnap can match"):
        parse_hook({"event": "publish", "url": "not a url"})


def test_streams_match_without_credentials_query_default_port_or_case():
    same = ["rtmp://user:pw@Origin/live/cam?token=1", "rtmp://origin:1935/live/cam/",
            "RTMP://origin/live/cam"]
    assert {stream_key(u) for u in same} == {("rtmp", "origin", 1935, "/live/cam")}
    assert stream_key("rtmp://origin/live/cam2") != stream_key(same[0])
    assert stream_key("rtmp://origin:1936/live/cam") != stream_key(same[0])
    assert stream_key("srt://origin/live/cam") is None


# what the manager does ------------------------------------------------------------------------
SLOW_WAIT = WaitPolicy(first_s=600, max_s=600, jitter=0)  # the watcher never probes again


@pytest.fixture
async def env():
    async with waiting_manager(SLOW_WAIT) as (manager, _, engine):
        yield manager, engine


def hook(event: str, url: str = URL):
    return parse_hook({"event": event, "url": url})


async def test_a_publish_starts_the_jobs_waiting_for_that_stream_at_once(env):
    manager, engine = env
    waiting = await manager.submit_job("a", spec())
    other = await manager.submit_job("b", spec(stream_url="rtmp://127.0.0.1/live/b"))
    for job in (waiting, other):
        await until(lambda j=job: _status(manager, j.account, j.id, StreamStatus.WAITING))
    engine.live = True
    assert await manager.stream_event(hook("publish", "rtmp://127.0.0.1:1935/live/a?x=1")) == 1
    await until(lambda: _started(manager, "a", waiting.id))
    job = await manager.get_job("a", waiting.id)
    assert job.status_reason == "stream published (publish hook)"
    assert manager.waiting_count() == 1  # only the other stream's job still waits
    assert (await manager.get_job("b", other.id)).status is JobStatus.INIT


async def test_a_hook_reconnects_started_jobs_that_are_not_live_and_leaves_live_ones(env):
    manager, engine = env
    job = await started_job(manager, engine)
    await manager.stream_changed(job.id, StreamStatus.LIVE)
    before = list(engine.calls)
    assert await manager.stream_event(hook("publish")) == 1
    await _settle(manager)
    assert engine.calls == before  # live: nothing to do
    await manager.stream_changed(job.id, StreamStatus.RECONNECTING, error="no data")
    assert await manager.stream_event(hook("publish")) == 1
    await _settle(manager)
    assert engine.calls[len(before):] == [("stop", job.id), ("start", job.id)]
    assert await manager.stream_event(hook("unpublish")) == 1  # ended: connect again now
    await _settle(manager)
    assert engine.calls[len(before) + 2:] == [("stop", job.id), ("start", job.id)]
    assert (await manager.get_job("a", job.id)).status is JobStatus.STARTED


async def test_a_hook_does_not_touch_jobs_stopped_by_hand(env):
    manager, engine = env
    job = await started_job(manager, engine)
    await manager.command("a", job.id, "stop")
    calls = list(engine.calls)
    assert await manager.stream_event(hook("publish")) == 0
    await _settle(manager)
    assert engine.calls == calls


async def started_job(manager: JobManager, engine: FakeEngine) -> Job:
    """A job of account "a" on ``URL``, started (its stream live)."""
    engine.live = True
    job = await manager.submit_job("a", spec())
    await until(lambda: _started(manager, "a", job.id))
    return job


async def _status(manager: JobManager, account: str, job_id: str, status: StreamStatus) -> bool:
    return (await manager.get_job(account, job_id)).stream_status is status


async def _started(manager: JobManager, account: str, job_id: str) -> bool:
    return (await manager.get_job(account, job_id)).status is JobStatus.STARTED


async def _settle(manager: JobManager) -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# the endpoint ---------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def hook_client(manager: JobManager, token: str | None):
    app = Starlette(routes=hook_routes(manager, token))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://livesnap") as client:
        yield client


@pytest.fixture
async def http(env):
    manager, engine = env
    async with hook_client(manager, TOKEN) as client:
        yield client, manager, engine


async def test_nginx_rtmp_form_with_the_token_in_the_hook_url(http):
    client, manager, engine = http
    job = await started_job(manager, engine)
    await manager.stream_changed(job.id, StreamStatus.RECONNECTING, error="no data")
    form = {"call": "publish", "app": "live", "name": "a", "tcurl": "rtmp://127.0.0.1/live"}
    resp = await client.post(f"{HOOK_PATH}?token={TOKEN}", data=form)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"code": 0, "Event": "publish", "Jobs": 1}
    ignored = await client.post(f"{HOOK_PATH}?token={TOKEN}", data={"call": "update_publish"})
    assert ignored.status_code == 200 and ignored.json()["Event"] == "ignored"


async def test_srs_json_and_a_bearer_token(http):
    client, _, _ = http
    body = {"action": "on_publish", "app": "live", "stream": "zz", "tcUrl": "rtmp://x/live",
            "client_id": 7}
    resp = await client.post(HOOK_PATH, content=json.dumps(body),
                             headers={"Content-Type": "application/json",
                                      "Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.json()["code"] == 0 and resp.json()["Jobs"] == 0


@pytest.mark.parametrize(("query", "status", "code"), [
    ("", 403, "Forbidden"),
    ("?token=wrong", 403, "Forbidden"),
    (f"?token={TOKEN}&event=publish", 400, "InvalidParameter"),
    (f"?token={TOKEN}&event=publish&url=nope", 400, "InvalidParameter"),
])
async def test_refusals_say_why(http, query, status, code):
    client, _, _ = http
    resp = await client.post(f"{HOOK_PATH}{query}")
    assert resp.status_code == status
    body = resp.json()
    assert (body["code"], body["Code"]) == (status, code) and body["Message"]


async def test_a_body_that_is_not_json_or_too_big_is_refused(http):
    client, _, _ = http
    bad = await client.post(f"{HOOK_PATH}?token={TOKEN}", content=b"{",
                            headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["Message"]
    big = await client.post(f"{HOOK_PATH}?token={TOKEN}", content=b"a=" + b"x" * 70_000)
    assert big.status_code == 400 and "at most" in big.json()["Message"]


async def test_without_a_token_configured_hooks_are_off(env):
    manager, _ = env
    async with hook_client(manager, None) as client:
        resp = await client.post(f"{HOOK_PATH}?token=anything&event=publish&url={URL}")
    assert resp.status_code == 404 and resp.json()["Code"] == "HooksDisabled"


def test_the_hook_token_must_be_long_enough(tmp_path):
    from pydantic import ValidationError

    from livesnap.config import Settings

    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings(data_dir=tmp_path, hook_token="short")
    assert Settings(data_dir=tmp_path, hook_token=TOKEN).server.hook_token is not None
