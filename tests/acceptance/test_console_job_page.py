"""The console's job page in real headless Chromium against ``livesnap serve`` capturing a live
nginx-rtmp stream: the callback delivery log of a real receiver, the Capture now / Stop / Start
/ Restart buttons, and the time picker that browses the job's files. Saves
``test-artifacts/console-job-page.png``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alibabacloud_ice20201109 import models as m
from playwright.sync_api import Browser, Page, expect

from tests.acceptance.test_console import (
    ARTIFACTS,
    FAST,
    OUTPUT,
    browser,  # noqa: F401  (the Chromium fixture)
    has_files,
    log_in,
)
from tests.integration.test_callbacks_real import Receiver
from tests.support.service import LivesnapServer, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FILE_ROWS = "table.files tbody tr"
ALL_FILE_PICTURES_LOADED = """() => {
  const images = [...document.querySelectorAll('table.files img')];
  return images.length > 0 && images.every((i) => i.complete && i.naturalWidth === 1280);
}"""


def local_input(moment: datetime) -> str:
    """A value for the page's UTC ``datetime-local`` inputs."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def press(page: Page, label: str, notice: str) -> None:
    page.get_by_role("button", name=label, exact=True).click()
    expect(page.get_by_role("status").first).to_contain_text(notice)


def test_job_page_buttons_time_picker_and_delivery_log(
    tmp_path, publisher_factory, browser: Browser  # noqa: F811
):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=FAST) as server:
        client = ice_client(server.endpoint)
        job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name="dock-cam", template_id="system", snapshot_output=OUTPUT,
            callback_url=receiver.url,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(
                type="rtmp", url=publisher.url))).body.job_id
        wait_until(lambda: has_files(client, job_id), 30, "a snapshot")
        wait_until(lambda: receiver.acked(), 20, "a delivered callback")

        base = f"http://{server.endpoint}"
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        log_in(page, base, "testid", "testsecret")
        page.goto(f"{base}/console/jobs/{job_id}")
        expect(page.get_by_role("heading", level=1)).to_have_text("dock-cam")
        badge = page.locator(".job-head [data-field=badge]")
        expect(badge).to_have_text("Live")

        # the delivery log shows the receiver's answers
        deliveries = page.locator("section[aria-labelledby=deliveries-title] tbody tr")
        expect(deliveries.first).to_be_visible()
        expect(deliveries.first.locator("td").nth(1)).to_have_text("200")
        event_ids = {d.event["EventId"] for d in receiver.snapshot()}
        shown = deliveries.first.locator("td code").inner_text()
        assert shown in event_ids

        # Capture now: one more file in the browse table (the default window: the last hour)
        before = page.locator(FILE_ROWS).count()
        assert before >= 1
        press(page, "Capture now", "Captured one snapshot.")
        assert page.locator(FILE_ROWS).count() >= before + 1

        # the time picker: a window without files, then one around now, pictures loaded
        page.locator("#from").fill("2001-01-01T00:00:00")
        page.locator("#to").fill("2001-01-01T01:00:00")
        page.get_by_role("button", name="Show files").click()
        expect(page.get_by_text("No files in this range.")).to_be_visible()
        assert "from=2001-01-01T00%3A00" in page.url and "testsecret" not in page.url
        now = datetime.now(tz=UTC)
        page.locator("#from").fill(local_input(now - timedelta(minutes=10)))
        page.locator("#to").fill(local_input(now + timedelta(minutes=1)))
        page.get_by_role("button", name="Show files").click()
        expect(page.locator(FILE_ROWS).first).to_be_visible()
        assert page.locator(FILE_ROWS).count() >= before + 1
        page.wait_for_function(ALL_FILE_PICTURES_LOADED, timeout=15_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "console-job-page.png"), full_page=True)

        # Stop, Start, Restart: the badge and the API follow
        press(page, "Stop", "the job is paused")
        expect(badge).to_have_text("Paused")
        assert client.get_live_snapshot_job(
            m.GetLiveSnapshotJobRequest(job_id=job_id)).body.status == "paused"
        press(page, "Start", "Start sent: the job is capturing.")
        expect(badge).to_have_text("Live")
        press(page, "Restart", "Restarted: the job is capturing.")
        assert client.get_live_snapshot_job(
            m.GetLiveSnapshotJobRequest(job_id=job_id)).body.status == "started"

        # on a phone (390 px) the page scrolls down only, never sideways
        page.set_viewport_size({"width": 390, "height": 844})
        page.reload()
        page.screenshot(path=str(ARTIFACTS / "console-job-page-390.png"), full_page=True)
        assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        page.screenshot(path=str(ARTIFACTS / "console-job-page-390.png"), full_page=True)
        assert script_errors == []
