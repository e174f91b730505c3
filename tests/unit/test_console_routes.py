"""The console's routes in-process over the memory store: sessions, CSRF, scoping, pages."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from starlette.applications import Starlette

from livesnap.clock import SystemClock
from livesnap.config import AccessKey, KeyRing
from livesnap.console import ConsoleDeps, console_routes
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import (
    ConnectMode,
    FileQuery,
    JobSpec,
    JobStatus,
    StorageTarget,
    StorageType,
    StreamStatus,
)
from livesnap.jobs.ports import CaptureReport
from livesnap.store import MemoryStore
from livesnap.store.sql import open_sql_store

KEYS = KeyRing([AccessKey("testid", "testsecret", "acct-a"),
                AccessKey("otherid", "othersecret", "acct-b")])
JPEG = b"\xff\xd8\xff\xe0fake-jpeg"


class Engine:
    """Every stream is live; nothing is captured."""

    def __init__(self):
        self.running: set[str] = set()

    async def start(self, job, *, probe):
        self.running.add(job.id)

    async def stop(self, job_id):
        self.running.discard(job_id)

    async def capture_now(self, job):
        raise AssertionError("not used")

    def is_running(self, job_id):
        return job_id in self.running

    def running_count(self):
        return len(self.running)

    async def shutdown(self, timeout_s):
        self.running.clear()


class Reader:
    def __init__(self):
        self.objects: dict[str, bytes] = {}

    async def read(self, account, target, key):
        return self.objects.get(key)


class Console:
    def __init__(self, manager: JobManager, reader: Reader, client: httpx.AsyncClient):
        self.manager, self.reader, self.client = manager, reader, client

    async def csrf(self, path="/console/login"):
        page = await self.client.get(path)
        return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)

    async def login(self, key="testid", secret="testsecret"):
        token = await self.csrf()
        return await self.client.post("/console/login", data={
            "csrf_token": token, "access_key_id": key, "access_key_secret": secret})

    async def job(self, account="acct-a", name="cam-1", *, picture=True,
                  url="rtmp://127.0.0.1/live/a"):
        spec = JobSpec(name=name, template_id="system", stream_url=url,
                       stream_type="rtmp", callback_url=None,
                       storage=StorageTarget(storage_type=StorageType.LOCAL, endpoint="e",
                                             bucket="b"))
        job = await self.manager.submit_job(account, spec)
        for _ in range(50):
            job = await self.manager.get_job(account, job.id)
            if job.status is JobStatus.STARTED:
                break
            await asyncio.sleep(0.01)
        await self.manager.stream_changed(job.id, StreamStatus.LIVE)
        if picture:
            key = f"snapshot/{job.id}/1.jpg"
            self.reader.objects[key] = JPEG
            await self.manager.snapshot_stored(job, CaptureReport(
                job_id=job.id, create_ms=int(SystemClock().time() * 1000) - 3000, sequence=1,
                sequence_key=key, overwrite_key=None, width=1280, height=720, size=len(JPEG),
                stream_time_ms=None, lag_ms=5))
        return await self.manager.get_job(account, job.id)


@pytest.fixture(params=["memory"])
async def console(request, tmp_path):
    if request.param == "sqlite":
        store = await open_sql_store(f"sqlite+aiosqlite:///{tmp_path / 'console.db'}")
    else:
        store = MemoryStore()
    manager = JobManager(store=store, clock=SystemClock())
    manager.attach_engine(Engine())
    await manager.open()
    reader = Reader()
    deps = ConsoleDeps(manager=manager, keys=KEYS, reader=reader, secret=b"s" * 32)
    app = Starlette(routes=console_routes(deps))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Console(manager, reader, client)
    await manager.close(1)
    if request.param == "sqlite":
        await store.close()


@pytest.mark.parametrize("console", ["sqlite"], indirect=True)
async def test_a_file_address_past_the_databases_integers_is_not_found(console):
    await console.login()
    job = await console.job(picture=True)
    for stamp in ("9223372036854775807", "9223372036854775808", "1" + "0" * 30):
        image = await console.client.get(f"/console/jobs/{job.id}/files/{stamp}.jpg")
        assert image.status_code == 404, stamp  # was a plain-text 500 (SQLite overflow)


async def test_pages_need_a_session(console):
    for path in ("/console/", "/console/templates", "/console/jobs/x"):
        response = await console.client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/console/login")
    assert (await console.client.get("/console/jobs/x/latest.jpg")).status_code == 401
    assert (await console.client.get("/console/jobs/x/state.json")).status_code == 401
    redirect = await console.client.get("/console")
    assert redirect.headers["location"] == "/console/"


async def test_login_cookie_is_httponly_strict_and_carries_no_secret(console):
    page = await console.client.get("/console/login")
    cookie = page.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    response = await console.login()
    assert response.status_code == 303 and response.headers["location"] == "/console/"
    assert "testsecret" not in response.headers["set-cookie"]
    assert "testsecret" not in str(response.url)
    wall = await console.client.get("/console/")
    assert wall.status_code == 200 and "acct-a" in wall.text
    assert "script-src 'self'" in wall.headers["content-security-policy"]


async def test_wrong_secret_shows_an_error(console):
    response = await console.login(secret="nope")
    assert response.status_code == 401
    assert "The access key ID or secret is wrong." in response.text
    assert (await console.login(key="nobody")).status_code == 401
    assert (await console.client.get("/console/")).status_code == 303


async def test_login_without_the_csrf_token_is_refused(console):
    await console.client.get("/console/login")
    response = await console.client.post("/console/login", data={
        "access_key_id": "testid", "access_key_secret": "testsecret"})
    assert response.status_code == 403
    assert (await console.client.get("/console/")).status_code == 303


async def test_login_redirects_back_to_a_console_page(console):
    first = await console.client.get("/console/templates")
    assert first.headers["location"] == "/console/login?next=%2Fconsole%2Ftemplates"
    page = await console.client.get(first.headers["location"])
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    response = await console.client.post("/console/login", data={
        "csrf_token": token, "access_key_id": "testid", "access_key_secret": "testsecret",
        "next": "/console/templates"})
    assert response.headers["location"] == "/console/templates"


async def test_wall_shows_started_jobs_with_their_picture(console):
    job = await console.job()
    await console.login()
    wall = await console.client.get("/console/")
    assert "cam-1" in wall.text and f'/console/jobs/{job.id}/latest.jpg?t=' in wall.text
    assert ">Live<" in wall.text
    assert re.search(r"Picture [3-9] s ago", wall.text)
    image = await console.client.get(f"/console/jobs/{job.id}/latest.jpg")
    assert image.content == JPEG and image.headers["cache-control"] == "no-store"
    assert image.headers["content-type"] == "image/jpeg"
    state = (await console.client.get(f"/console/jobs/{job.id}/state.json")).json()
    assert state["status"] == "started" and state["takenMs"] is not None
    assert state["staleAfterMs"] == 20_000


async def test_the_wall_filters_sorts_and_pages_hundreds_of_jobs(console):
    for i in range(30):
        await console.job(name=f"cam-{i:02}", picture=False)
    await console.login()
    wall = await console.client.get("/console/?sort=name")
    tiles = re.findall(r'<li class="tile', wall.text)
    assert len(tiles) == 24 and "30 started jobs, 30 live." in wall.text
    assert "Showing 1–24 of 30." in wall.text and "Page 1 of 2" in wall.text
    assert "cam-00" in wall.text and "cam-29" not in wall.text
    nxt = re.search(r'href="/console/(\?[^"]*)" rel="next"', wall.text).group(1)
    assert "sort=name" in nxt and "page=2" in nxt
    second = await console.client.get("/console/" + nxt.replace("&amp;", "&"))
    assert len(re.findall(r'<li class="tile', second.text)) == 6
    assert "cam-29" in second.text and "Showing 25–30 of 30." in second.text
    assert 'rel="prev"' in second.text and 'rel="next"' not in second.text
    found = await console.client.get("/console/?q=CAM-1")  # cam-10 … cam-19
    assert len(re.findall(r'<li class="tile', found.text)) == 10
    assert "Showing 1–10 of 10 matching." in found.text and "Page 1 of" not in found.text
    none = await console.client.get("/console/?show=trouble")
    assert "No started job matches." in none.text and '<li class="tile' not in none.text


async def test_a_live_job_that_stores_nothing_shows_its_error_on_its_tile(console):
    job = await console.job(picture=False)
    await console.manager.storage_changed(
        job.id, "snapshot not stored: s3 bucket b refused the credentials (InvalidAccessKeyId)")
    await console.login()
    wall = await console.client.get("/console/")
    assert ">Live<" not in wall.text and ">Not storing<" in wall.text
    assert "storage: snapshot not stored: s3 bucket b refused the credentials" in wall.text
    state = (await console.client.get(f"/console/jobs/{job.id}/state.json")).json()
    assert state["badge"] == {"kind": "trouble", "text": "Not storing"}
    assert state["lastError"].startswith("storage: snapshot not stored")
    page = await console.client.get(f"/console/jobs/{job.id}")
    assert ">Not storing<" in page.text and "refused the credentials" in page.text
    await console.manager.storage_changed(job.id, "")  # stored again: Live, no error line
    wall = await console.client.get("/console/")
    assert ">Live<" in wall.text and 'data-field="error" hidden' in wall.text


async def test_job_page_shows_details_filmstrip_and_files(console):
    job = await console.job()
    await console.login()
    page = await console.client.get(f"/console/jobs/{job.id}")
    assert page.status_code == 200
    for text in ("StreamStatus", "LastError", "SnapshotCount", "Recent snapshots",
                 "Browse files", 'type="datetime-local"', "Callback deliveries"):
        assert text in page.text
    created = (await console.manager.list_files("acct-a", _all_files(job.id)))[0].create_ms
    assert f"/console/jobs/{job.id}/files/{created}.jpg" in page.text
    image = await console.client.get(f"/console/jobs/{job.id}/files/{created}.jpg")
    assert image.content == JPEG
    assert (await console.client.get(f"/console/jobs/{job.id}/files/1.jpg")).status_code == 404
    empty = await console.client.get(f"/console/jobs/{job.id}",
                                     params={"from": "2001-01-01T00:00", "to": "2001-01-02T00:00"})
    assert "No files in this range." in empty.text
    # "Capture now" is the filled, first button of a started job; Stop is a plain one
    buttons = re.findall(r'<button type="submit"( class="primary")?>([^<]+)</button>', page.text)
    assert buttons[:3] == [(' class="primary"', "Capture now"), ("", "Restart"), ("", "Stop")]


async def test_files_are_listed_newest_first_a_page_at_a_time(console):
    job = await console.job(picture=False)
    now_ms = int(SystemClock().time() * 1000)
    taken = [now_ms - 600_000 + i * 5_000 + 7 for i in range(65)]  # odd ms: links keep them
    for i, create_ms in enumerate(taken):
        await console.manager.snapshot_stored(job, CaptureReport(
            job_id=job.id, create_ms=create_ms, sequence=i + 1, sequence_key=f"k/{i}.jpg",
            overwrite_key=None, width=1280, height=720, size=10, stream_time_ms=None, lag_ms=5))
    await console.login()
    first = await console.client.get(f"/console/jobs/{job.id}")
    shown = [int(ms) for ms in re.findall(r'<th scope="row">.*?</th>\s*<td><a href="/console/jobs/'
                                          r'[^/]+/files/(\d+)\.jpg"', first.text)]
    assert shown == sorted(taken, reverse=True)[:60]  # newest first, 60 a page
    assert "60 files, newest first" in first.text and "Newest files" not in first.text
    older = re.search(r'href="(/console/jobs/[^"]+)" rel="next">Older files', first.text).group(1)
    second = await console.client.get(older.replace("&amp;", "&"))
    rest = [int(ms) for ms in re.findall(r'<th scope="row">.*?</th>\s*<td><a href="/console/jobs/'
                                         r'[^/]+/files/(\d+)\.jpg"', second.text)]
    assert rest == sorted(taken, reverse=True)[60:]  # the 5 oldest, none twice, none lost
    assert "5 older files, newest first" in second.text
    assert "Newest files" in second.text and "Older files" not in second.text


def _all_files(job_id):
    return FileQuery(job_id=job_id, start_ms=0, end_ms=2**62, limit=10)


async def test_commands_need_the_csrf_token(console):
    job = await console.job()
    await console.login()
    refused = await console.client.post(f"/console/jobs/{job.id}/command", data={"command": "stop"})
    assert refused.status_code == 403
    token = await console.csrf(f"/console/jobs/{job.id}")
    stopped = await console.client.post(f"/console/jobs/{job.id}/command",
                                        data={"command": "stop", "csrf_token": token})
    assert stopped.status_code == 303
    page = await console.client.get(stopped.headers["location"])
    assert "Stopped: the job is paused." in page.text and ">Paused<" in page.text
    assert (await console.manager.get_job("acct-a", job.id)).status is JobStatus.PAUSED
    again = await console.client.post(f"/console/jobs/{job.id}/command",
                                      data={"command": "capture", "csrf_token": token})
    assert again.status_code == 409 and "Job is not started." in again.text


async def test_cross_origin_posts_are_refused(console):
    job = await console.job()
    await console.login()
    token = await console.csrf(f"/console/jobs/{job.id}")
    response = await console.client.post(
        f"/console/jobs/{job.id}/command", data={"command": "stop", "csrf_token": token},
        headers={"Origin": "http://evil.example"})
    assert response.status_code == 403
    assert (await console.manager.get_job("acct-a", job.id)).status is JobStatus.STARTED


async def test_another_accounts_job_is_not_found(console):
    job = await console.job(account="acct-b", name="theirs")
    await console.login()
    assert "theirs" not in (await console.client.get("/console/")).text
    for path in ("", "/latest.jpg", "/state.json"):
        assert (await console.client.get(f"/console/jobs/{job.id}{path}")).status_code == 404
    token = await console.csrf("/console/")
    response = await console.client.post(f"/console/jobs/{job.id}/command",
                                         data={"command": "stop", "csrf_token": token})
    assert response.status_code == 404
    assert (await console.manager.get_job("acct-b", job.id)).status is JobStatus.STARTED


async def test_logout_ends_the_session(console):
    await console.login()
    token = await console.csrf("/console/")
    response = await console.client.post("/console/logout", data={"csrf_token": token})
    assert response.status_code == 303
    assert (await console.client.get("/console/")).status_code == 303


async def test_template_editor_validates_and_saves(console):
    await console.login()
    token = await console.csrf("/console/templates/new")
    form = {"csrf_token": token, "name": "fast", "interval": "2",
            "overwrite_format": "", "sequence_format": "snap/{JobId}/{UnixTimestamp}.jpg"}
    bad = await console.client.post("/console/templates/new", data=form)
    assert bad.status_code == 400
    assert 'id="interval-error"' in bad.text and "between 5 and 3600" in bad.text
    assert 'value="fast"' in bad.text  # what was typed is kept
    none = await console.client.post("/console/templates/new", data={
        **form, "interval": "10", "sequence_format": ""})
    assert none.status_code == 400 and "At least one of" in none.text
    created = await console.client.post("/console/templates/new", data={**form, "interval": "10"})
    assert created.status_code == 303
    edit_path = created.headers["location"].split("?")[0]
    saved = await console.client.post(edit_path, data={**form, "interval": "30", "name": "slow"})
    assert saved.status_code == 303
    listing = await console.client.get("/console/templates")
    assert "slow" in listing.text and "30 s" in listing.text
    deleted = await console.client.post(f"{edit_path}/delete", data={"csrf_token": token})
    assert deleted.status_code == 303
    assert "slow" not in (await console.client.get("/console/templates")).text


async def test_system_template_is_read_only(console):
    await console.login()
    page = await console.client.get("/console/templates/system")
    assert page.status_code == 200 and "readonly" in page.text and "Save template" not in page.text
    token = await console.csrf("/console/templates/system")
    response = await console.client.post("/console/templates/system", data={
        "csrf_token": token, "name": "x", "interval": "5",
        "overwrite_format": "a/{JobId}.jpg", "sequence_format": ""})
    assert response.status_code == 403
    refused = await console.client.post("/console/templates/system/delete",
                                        data={"csrf_token": token})
    assert refused.status_code == 403
    assert (await console.client.get("/console/templates/nope")).status_code == 404


async def test_static_files_are_served(console):
    assert (await console.client.get("/console/static/console.js")).status_code == 200
    assert (await console.client.get("/console/static/console.css")).status_code == 200


async def test_the_connect_mode_is_edited_on_templates_and_shown_on_job_pages(console):
    await console.login()
    token = await console.csrf("/console/templates/new")
    form = {"csrf_token": token, "name": "archive", "interval": "60", "overwrite_format": "",
            "sequence_format": "snap/{JobId}/{UnixTimestamp}.jpg", "connect_mode": "sometimes"}
    bad = await console.client.post("/console/templates/new", data=form)
    assert bad.status_code == 400 and 'id="connect_mode-error"' in bad.text
    created = await console.client.post("/console/templates/new",
                                        data={**form, "connect_mode": "per-tick"})
    assert created.status_code == 303
    template_id = created.headers["location"].split("?")[0].rsplit("/", 1)[1]
    template = await console.manager.get_template("acct-a", template_id)
    assert template.connect_mode is ConnectMode.PER_TICK
    editor = await console.client.get(f"/console/templates/{template_id}")
    assert '<option value="per-tick" selected>' in editor.text

    # the system template (5 s) under auto: persistent, and no next capture to announce
    job = await console.job()
    page = await console.client.get(f"/console/jobs/{job.id}")
    assert "auto (persistent)" in page.text
    # a per-tick job that captured says when its next capture is due
    spec = JobSpec(name="slow", template_id=template_id, stream_url="rtmp://127.0.0.1/live/b",
                   stream_type="rtmp", callback_url=None,
                   storage=StorageTarget(storage_type=StorageType.LOCAL, endpoint="e",
                                         bucket="b"))
    slow = await console.manager.submit_job("acct-a", spec)
    for _ in range(50):
        if (await console.manager.get_job("acct-a", slow.id)).status is JobStatus.STARTED:
            break
        await asyncio.sleep(0.01)
    taken = 1_800_000_000_000
    await console.manager.snapshot_stored(slow, CaptureReport(
        job_id=slow.id, create_ms=taken, sequence=1, sequence_key=f"snap/{slow.id}/1.jpg",
        overwrite_key=None, width=64, height=36, size=4, stream_time_ms=None, lag_ms=5))
    page = await console.client.get(f"/console/jobs/{slow.id}")
    assert "per-tick" in page.text
    assert "by about 2027-01-15 08:01:00 UTC" in page.text  # one interval after the capture


async def test_a_logged_out_cookie_no_longer_logs_in(console):
    """Logout revokes the session itself, not only the browser's copy of the cookie."""
    await console.login()
    job = await console.job()
    stolen = dict(console.client.cookies)
    assert (await console.client.get(f"/console/jobs/{job.id}/state.json")).status_code == 200
    token = await console.csrf("/console/")
    assert (await console.client.post("/console/logout",
                                      data={"csrf_token": token})).status_code == 303
    console.client.cookies.clear()
    console.client.cookies.update(stolen)
    assert (await console.client.get("/console/")).status_code == 303
    assert (await console.client.get(f"/console/jobs/{job.id}/state.json")).status_code == 401
    console.client.cookies.clear()
    await console.login()  # a new login is a new session
    assert (await console.client.get("/console/")).status_code == 200


async def test_wrong_logins_are_limited_per_key_and_per_address(console):
    from livesnap.console.attempts import PER_KEY

    for _ in range(PER_KEY):
        assert (await console.login(secret="wrong")).status_code == 401
    refused = await console.login(secret="wrong")
    assert refused.status_code == 429
    assert "Too many wrong logins" in refused.text
    assert int(refused.headers["retry-after"]) > 0
    # while the key is held, not even its right secret is compared
    assert (await console.login()).status_code == 429
    # another key from the same address still logs in: the address has room left
    assert (await console.login("otherid", "othersecret")).status_code == 303


async def test_the_job_page_shows_no_password_or_token_of_the_stream_url(console):
    await console.login()
    job = await console.job(url="rtsp://viewer:s3cret-pw@127.0.0.1:8554/cam?token=t0ken-value")
    page = await console.client.get(f"/console/jobs/{job.id}")
    assert page.status_code == 200
    assert "rtsp://viewer:***@127.0.0.1:8554/cam?token=***" in page.text
    assert "s3cret-pw" not in page.text and "t0ken-value" not in page.text
    state = await console.client.get(f"/console/jobs/{job.id}/state.json")
    assert "s3cret-pw" not in state.text and "t0ken-value" not in state.text
    wall = await console.client.get("/console/")
    assert "s3cret-pw" not in wall.text


async def test_a_job_is_deleted_from_its_page_and_only_by_its_account(console):
    job = await console.job()
    other = await console.job(account="acct-b", name="cam-b")
    await console.login()
    page = await console.client.get(f"/console/jobs/{job.id}")
    assert f'action="/console/jobs/{job.id}/delete"' in page.text and "Delete job" in page.text
    token = await console.csrf(f"/console/jobs/{job.id}")
    refused = await console.client.post(f"/console/jobs/{job.id}/delete")
    assert refused.status_code == 403  # no CSRF token
    foreign = await console.client.post(f"/console/jobs/{other.id}/delete",
                                        data={"csrf_token": token})
    assert foreign.status_code == 404  # account B's job, as if it did not exist
    done = await console.client.post(f"/console/jobs/{job.id}/delete",
                                     data={"csrf_token": token})
    assert done.status_code == 200 and "was deleted with 1 file records" in done.text
    assert (await console.client.get(f"/console/jobs/{job.id}")).status_code == 404
    assert job.id not in console.manager.engine.running
    assert (await console.manager.get_job("acct-b", other.id)).id == other.id
