"""The web console in real headless Chromium (Debian ``chromium`` driven by Playwright), against
``livesnap serve`` capturing a live nginx-rtmp stream. Saves ``test-artifacts/console-wall.png``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.servers import require_binary
from tests.support.service import LivesnapServer, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)
ALL_THUMBNAILS_LOADED = """(count) => {
  const images = [...document.querySelectorAll('.wall img')];
  return images.length === count && images.every((i) => i.complete && i.naturalWidth === 1280);
}"""

PICTURE_CHANGED = "(old) => document.querySelector('.wall img').getAttribute('src') !== old"


def submit(client, url, name):
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=name, template_id="system", snapshot_output=OUTPUT,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def has_files(client, job_id):
    now = datetime.now(tz=UTC)
    body = client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time=(now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        end_time=(now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"), limit=10)).body
    return bool(body.file_list)


def log_in(page: Page, base: str, key: str, secret: str) -> None:
    page.goto(f"{base}/console/login")
    page.get_by_label("Access key ID").fill(key)
    page.get_by_label("Access key secret").fill(secret)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture
def browser():
    executable = require_binary(CHROMIUM, "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def check_without_session(base: str, job_id: str) -> None:
    page = httpx.get(f"{base}/console/jobs/{job_id}", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/login")
    image = httpx.get(f"{base}/console/jobs/{job_id}/latest.jpg", follow_redirects=False)
    assert image.status_code == 401


def check_wall(page: Page, base: str, count: int) -> None:
    expect(page).to_have_url(f"{base}/console/")
    page.wait_for_function(ALL_THUMBNAILS_LOADED, arg=count, timeout=20_000)
    tiles = page.locator(".wall .tile")
    expect(tiles).to_have_count(count)
    assert tiles.first.bounding_box()["width"] >= 400  # on a 1400 px screen: large tiles
    for index in range(count):
        expect(tiles.nth(index).locator("[data-field=badge]")).to_have_text("Live")
        expect(tiles.nth(index).locator("[data-field=age]")).to_contain_text(" s ago")
    # the script swaps in the next picture on the job's interval (5 s)
    first = page.locator(".wall img").first.get_attribute("src")
    page.wait_for_function(PICTURE_CHANGED, arg=first, timeout=15_000)
    page.wait_for_function(ALL_THUMBNAILS_LOADED, arg=count, timeout=5_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-wall.png"), full_page=True)


NO_SIDEWAYS_SCROLL = "() => document.documentElement.scrollWidth <= window.innerWidth"


def check_wall_controls(page: Page) -> None:
    """The filter form narrows the wall; on a phone (390 px) tiles fill the width, no sideways
    scrolling."""
    page.get_by_label("Name or job ID").fill("stage")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator(".wall .tile")).to_have_count(1)
    expect(page.locator(".wall .tile h2")).to_have_text("stage-cam")
    expect(page.locator("[data-field=wall-count]")).to_contain_text("Showing 1–1 of 1 matching")
    page.get_by_role("link", name="Reset").click()
    expect(page.locator(".wall .tile")).to_have_count(2)
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate(NO_SIDEWAYS_SCROLL)
    width = page.locator(".wall .tile").first.bounding_box()["width"]
    assert 300 <= width <= 390
    page.screenshot(path=str(ARTIFACTS / "console-wall-390.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 900})


def check_stop(page: Page, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    badge = page.locator(".job-head [data-field=badge]")
    expect(badge).to_have_text("Live")
    expect(page.locator(".filmstrip img").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "console-job.png"), full_page=True)
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(badge).to_have_text("Paused")
    expect(page.get_by_role("status").first).to_contain_text("the job is paused")
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_visible()


def test_console_wall_job_page_and_sessions(tmp_path, publisher_factory, browser: Browser):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        names = ("lobby-cam", "stage-cam")
        jobs = {name: submit(client, publisher.url, name) for name in names}
        for name, job_id in jobs.items():
            wait_until(lambda job_id=job_id: has_files(client, job_id), 25, f"{name} snapshots")
        base = f"http://{server.endpoint}"
        check_without_session(base, jobs["lobby-cam"])

        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.goto(f"{base}/console/")
        expect(page).to_have_url(f"{base}/console/login")
        log_in(page, base, "testid", "wrong-secret")
        expect(page.get_by_role("alert")).to_have_text("The access key ID or secret is wrong.")
        log_in(page, base, "testid", "testsecret")
        script_errors: list[str] = []  # from here on: no script errors, nothing blocked by CSP
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.on("console", lambda msg: msg.type == "error" and script_errors.append(msg.text))
        check_wall(page, base, len(names))
        check_wall_controls(page)
        check_stop(page, "lobby-cam")
        status = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=jobs["lobby-cam"]))
        assert status.body.status == "paused"
        assert script_errors == []

        other = browser.new_context().new_page()
        log_in(other, base, "otherid", "othersecret")
        expect(other).to_have_url(f"{base}/console/")
        response = other.goto(f"{base}/console/jobs/{jobs['stage-cam']}")
        assert response is not None and response.status == 404
        expect(other.get_by_role("heading", level=1)).to_have_text("Job not found")
        picture = other.request.get(f"{base}/console/jobs/{jobs['stage-cam']}/latest.jpg")
        assert picture.status == 404

        # logging out revokes the session itself: a copy of its cookie is refused, also by
        # the server started again after a crash
        copied = other.context.cookies()
        other.get_by_role("button", name="Log out").click()
        expect(other).to_have_url(f"{base}/console/login")
        server.restart()
        replay = browser.new_context()
        replay.add_cookies(copied)
        replayed = replay.new_page()
        replayed.goto(f"{base}/console/")
        expect(replayed).to_have_url(f"{base}/console/login")


def test_template_editor_sets_the_picture_extensions(tmp_path, publisher_factory, browser: Browser):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        base = f"http://{server.endpoint}"
        page = browser.new_context().new_page()
        log_in(page, base, "testid", "testsecret")
        page.goto(f"{base}/console/templates/new")
        page.get_by_label("Name").fill("small webp")
        page.get_by_label("Overwrite format").fill("w/{JobId}.webp")
        page.get_by_label("Sequence format").fill("w/{JobId}/{UnixTimestamp}.jpg")
        page.get_by_label("Image format").select_option("webp")
        page.get_by_label("Width").fill("320")
        expect(page.get_by_label("Quality gate")).not_to_be_checked()  # off by default, as ICE
        page.get_by_label("Quality gate").check()
        page.get_by_role("button", name="Create template").click()
        # the sequence key does not match the format: that field is marked, nothing is saved
        expect(page.locator("#sequence_format-error")).to_contain_text(
            "SequenceFormat must end with '.webp' when ImageFormat is webp")
        page.get_by_label("Sequence format").fill("w/{JobId}/{UnixTimestamp}.webp")
        page.get_by_role("button", name="Create template").click()
        expect(page.locator(".error-box")).to_have_count(0)

        client = ice_client(server.endpoint)
        listed = client.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
            type="custom")).body.template_list
        assert [t.template_name for t in listed] == ["small webp"]
        template_id = listed[0].template_id
        page.goto(f"{base}/console/templates/{template_id}")  # the editor shows what was saved
        expect(page.get_by_label("Image format")).to_have_value("webp")
        expect(page.get_by_label("Width")).to_have_value("320")
        expect(page.get_by_label("Quality gate")).to_be_checked()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-template-editor.png"), full_page=True)
        page.goto(f"{base}/console/templates/system")  # read-only, and looks it
        expect(page.get_by_label("Name")).to_have_attribute("readonly", "")
        page.screenshot(path=str(ARTIFACTS / "console-system-template.png"), full_page=True)

        job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name="webp-cam", template_id=template_id, snapshot_output=OUTPUT,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(
                type="rtmp", url=publisher.url))).body.job_id
        wait_until(lambda: has_files(client, job_id), 30, "a webp snapshot")
        picture = page.request.get(f"{base}/console/jobs/{job_id}/latest.jpg")
        assert picture.status == 200 and picture.headers["content-type"] == "image/webp"
        assert picture.body()[:4] == b"RIFF" and picture.body()[8:12] == b"WEBP"
        size = page.evaluate("""async (url) => {
            const img = new Image(); img.src = url; await img.decode();
            return [img.naturalWidth, img.naturalHeight]; }""",
                             f"{base}/console/jobs/{job_id}/latest.jpg")
        assert size == [320, 180]  # Chromium decoded the WebP at the template's size


def test_a_job_is_created_from_the_new_job_form(tmp_path, publisher_factory, browser: Browser):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data", env=FAST) as server:
        base = f"http://{server.endpoint}"
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        log_in(page, base, "testid", "testsecret")
        page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
        expect(page.get_by_role("heading", name="New job")).to_be_visible()
        # the API's rules, each message next to its field, and what was typed is kept
        page.get_by_label("Name").fill("door camera")
        page.get_by_label("Stream URL").fill("srt://127.0.0.1:9000/cam")
        page.get_by_label("Callback URL").fill("ftp://example/")
        page.get_by_role("button", name="Create job").click()
        expect(page.locator("#stream_url-error")).to_contain_text("SRT cannot be captured")
        expect(page.get_by_label("Name")).to_have_value("door camera")
        page.get_by_label("Stream URL").fill(publisher.url)
        page.get_by_role("button", name="Create job").click()
        expect(page.locator("#callback_url-error")).to_contain_text("CallbackUrl")
        page.get_by_label("Callback URL").fill("")
        page.get_by_label("Bucket").fill("")
        page.get_by_role("button", name="Create job").click()
        expect(page.locator("#bucket-error")).to_contain_text("The bucket is needed.")
        page.screenshot(path=str(ARTIFACTS / "console-new-job-form.png"), full_page=True)
        page.get_by_label("Bucket").fill("cams")
        page.get_by_role("button", name="Create job").click()
        # created: the job's page, and the official SDK sees the same job capture
        expect(page).to_have_url(re.compile(r"/console/jobs/[0-9a-f-]{36}$"))
        job_id = page.url.rsplit("/", 1)[1]
        client = ice_client(server.endpoint)
        job = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body
        assert (job.job_name, job.stream_input.url) == ("door camera", publisher.url)
        assert (job.snapshot_output.storage_type, job.snapshot_output.bucket) == ("local", "cams")
        wait_until(lambda: has_files(client, job_id), 30, "a snapshot of the new job")
        page.reload()
        expect(page.locator("main")).to_contain_text("started")
