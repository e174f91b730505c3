"""The wall of live thumbnails, the job page, job pictures and job commands.

Every job route first loads the job for the session's account; another account's job is
"not found" (404), exactly as in the API, so job ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.console import present
from livesnap.console.app import Console, Visit, status_for
from livesnap.errors import LivesnapError
from livesnap.jobs import connect, imaging, urls
from livesnap.jobs.models import (
    INT64_MAX,
    ConnectMode,
    DeliveryAttempt,
    FileQuery,
    Job,
    JobQuery,
    JobStatus,
    SnapshotFile,
)

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
WALL_PAGE = 100
WALL_MAX_PAGES = 5
FILMSTRIP = 12
BROWSE_LIMIT = 60
DELIVERY_LOG = 20
COMMANDS = ("start", "stop", "restart", "capture")
DONE = {
    "start": "Start sent: the job is capturing.",
    "stop": "Stopped: the job is paused.",
    "restart": "Restarted: the job is capturing.",
    "capture": "Captured one snapshot.",
}
IMAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def content_type(key: str) -> str:
    """The picture type of an object key by its extension (templates tie the two together)."""
    for image_format, extension in imaging.EXTENSIONS.items():
        if key.endswith(extension):
            return imaging.CONTENT_TYPES[image_format]
    return "application/octet-stream"


@dataclass(frozen=True, kw_only=True)
class Tile:
    job: Job
    badge: present.Badge
    picture: present.Picture | None
    interval_ms: int
    stale_after_ms: int | None


@dataclass(frozen=True, kw_only=True)
class Browse:
    """The time-picker range and its newest files, one page at a time (older on the next)."""

    from_ms: int
    to_ms: int
    files: list[SnapshotFile]
    older_to_ms: int | None  # ``to`` of the next page of older files; None: no more
    paged: bool  # this page starts before ``to`` (an "Older files" link led here)


class WallViews:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.manager = console.deps.manager
        self.reader = console.deps.reader
        self.pages = console.pages

    # queries -------------------------------------------------------------------------------
    async def _started_jobs(self, account: str, now_ms: int) -> list[Job]:
        found: list[Job] = []
        for page_no in range(1, WALL_MAX_PAGES + 1):
            query = JobQuery(start_ms=0, end_ms=now_ms + DAY_MS, page_no=page_no,
                             page_size=WALL_PAGE, descending=False, status=JobStatus.STARTED)
            page = await self.manager.list_jobs(account, query)
            found += page.items
            if len(page.items) < WALL_PAGE:
                break
        return found

    async def _idle_jobs(self, account: str, now_ms: int) -> list[Job]:
        query = JobQuery(start_ms=0, end_ms=now_ms + DAY_MS, page_size=WALL_PAGE)
        page = await self.manager.list_jobs(account, query)
        return [job for job in page.items if job.status is not JobStatus.STARTED]

    async def _files(
        self, account: str, job_id: str, start_ms: int, end_ms: int, *, limit: int,
        newest_first: bool,
    ) -> list[SnapshotFile]:
        query = FileQuery(job_id=job_id, start_ms=start_ms, end_ms=end_ms, limit=limit,
                          descending=newest_first)
        return await self.manager.list_files(account, query)

    async def _latest(self, account: str, job: Job, now_ms: int) -> SnapshotFile | None:
        newest = await self._files(account, job.id, 0, now_ms + DAY_MS, limit=1,
                                   newest_first=True)
        return newest[0] if newest else None

    async def _job(self, visit: Visit, request: Request) -> Job | None:
        try:
            return await self.manager.get_job(visit.account, request.path_params["job_id"])
        except LivesnapError as exc:
            if status_for(exc) == 404:
                return None
            raise

    async def _tile(self, account: str, job: Job, now_ms: int) -> Tile:
        latest = await self._latest(account, job, now_ms)
        return Tile(job=job, badge=present.badge_for(job),
                    picture=present.picture_of(job, latest, now_ms),
                    interval_ms=present.interval_ms(job),
                    stale_after_ms=present.stale_after_ms(job))

    # the wall ------------------------------------------------------------------------------
    async def wall(self, request: Request, visit: Visit) -> Response:
        now_ms = self.console.now_ms()
        view = present.WallView.from_query(dict(request.query_params))
        started = await self._started_jobs(visit.account, now_ms)
        shown = present.arrange_wall(started, view)
        # only this page's tiles look up their latest picture
        tiles = await asyncio.gather(*(self._tile(visit.account, job, now_ms)
                                       for job in shown.jobs))
        idle = await self._idle_jobs(visit.account, now_ms)
        context = {"tiles": tiles, "idle": [(job, present.badge_for(job)) for job in idle],
                   "view": view, "shown": shown, "shows": present.WALL_SHOWS,
                   "sorts": present.WALL_SORTS, "now_ms": now_ms, "title": "Wall"}
        return self.pages.render(request, visit.session, "wall.html", context)

    async def state(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        if job is None:
            return PlainTextResponse("Not found", status_code=404, headers=IMAGE_HEADERS)
        now_ms = self.console.now_ms()
        latest = await self._latest(visit.account, job, now_ms)
        return JSONResponse(present.job_state(job, latest, now_ms), headers=IMAGE_HEADERS)

    # pictures ------------------------------------------------------------------------------
    async def latest_image(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        latest = None if job is None else await self._latest(
            visit.account, job, self.console.now_ms())
        return await self._image(job, latest)

    async def file_image(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        found: list[SnapshotFile] = []
        if job is not None:
            ms = int(request.path_params["create_ms"])
            if ms <= INT64_MAX:  # a larger one names no file (and no database integer)
                found = await self._files(visit.account, job.id, ms, ms, limit=1,
                                          newest_first=False)
        return await self._image(job, found[0] if found else None)

    async def _image(self, job: Job | None, file: SnapshotFile | None) -> Response:
        """The stored picture, with its format's type (the URL says .jpg for every format)."""
        if job is None or file is None:
            return PlainTextResponse("Not found", status_code=404, headers=IMAGE_HEADERS)
        data = await self.reader.read(job.account, job.storage, file.object_key)
        if data is None:
            return PlainTextResponse("The picture is not in storage.", status_code=404,
                                     headers=IMAGE_HEADERS)
        return Response(data, media_type=content_type(file.object_key), headers=IMAGE_HEADERS)

    # the job page --------------------------------------------------------------------------
    async def job_page(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        if job is None:
            return self._not_found(request, visit)
        notice = DONE.get(request.query_params.get("done", ""), "")
        return await self._render_job(request, visit, job, notice=notice)

    async def command(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        if job is None:
            return self._not_found(request, visit)
        command = visit.form.get("command", "")
        if command not in COMMANDS:
            return await self._render_job(request, visit, job, status=400,
                                          error="Unknown command.")
        try:
            await self.manager.command(visit.account, job.id, command)
        except LivesnapError as exc:
            job = await self._job(visit, request) or job
            return await self._render_job(request, visit, job, status=status_for(exc),
                                          error=exc.message)
        logger.info("console command", extra={"action": command, "job_id": job.id})
        return RedirectResponse(f"/console/jobs/{job.id}?done={command}", status_code=303)

    async def delete(self, request: Request, visit: Visit) -> Response:
        job = await self._job(visit, request)
        if job is None:
            return self._not_found(request, visit)
        objects = visit.form.get("delete_objects") == "1"
        try:
            count = await self.manager.delete_job(visit.account, job.id, delete_objects=objects)
        except LivesnapError as exc:
            job = await self._job(visit, request) or job
            return await self._render_job(request, visit, job, status=status_for(exc),
                                          error=exc.message)
        logger.info("console delete", extra={"action": "delete_job", "job_id": job.id})
        what = f"{count} file records" + (" and their images" if objects else "")
        return self.pages.message(request, visit.session, "Job deleted",
                                  f"The job {job.name} was deleted with {what}.", status=200)

    def _not_found(self, request: Request, visit: Visit) -> Response:
        return self.pages.message(request, visit.session, "Job not found",
                                  "There is no such job in this account.", status=404)

    async def _render_job(
        self, request: Request, visit: Visit, job: Job, *, status: int = 200,
        notice: str = "", error: str = "",
    ) -> Response:
        now_ms = self.console.now_ms()
        tile = await self._tile(visit.account, job, now_ms)
        recent = await self._files(visit.account, job.id, 0, now_ms + DAY_MS,
                                   limit=FILMSTRIP, newest_first=True)
        context: dict[str, Any] = {
            "title": job.name, "tile": tile, "job": job, "details": job_details(
                job, per_tick_min_interval_s=self.console.deps.per_tick_min_interval_s),
            "filmstrip": [f for f in recent if not f.is_overlay],
            "browse": await self._browse(request, visit.account, job.id, now_ms),
            "deliveries": await self._deliveries(visit.account, job),
            "notice": notice, "error": error, "now_ms": now_ms,
        }
        return self.pages.render(request, visit.session, "job.html", context, status=status)

    async def _browse(self, request: Request, account: str, job_id: str, now_ms: int) -> Browse:
        params = request.query_params
        to_ms = present.parse_local_input(params.get("to")) or now_ms + 60_000
        from_ms = present.parse_local_input(params.get("from")) or to_ms - HOUR_MS
        # a page of older files keeps the range's end in "until" and starts below it
        until_ms = present.parse_local_input(params.get("before"))
        page_to = min(to_ms, until_ms - 1) if until_ms is not None else to_ms
        files = await self._files(account, job_id, from_ms, page_to, limit=BROWSE_LIMIT + 1,
                                  newest_first=True)
        more = len(files) > BROWSE_LIMIT
        files = files[:BROWSE_LIMIT]
        older = files[-1].create_ms if more else None
        return Browse(from_ms=from_ms, to_ms=to_ms, files=files, older_to_ms=older,
                      paged=until_ms is not None)

    async def _deliveries(self, account: str, job: Job) -> list[DeliveryAttempt] | None:
        """The callback delivery log; None where this build has none."""
        log = getattr(self.manager, "delivery_log", None)
        if log is None:
            return None
        attempts: list[DeliveryAttempt] = await log(account, job.id, DELIVERY_LOG)
        return attempts


def connect_text(job: Job, mode: ConnectMode) -> str:
    """The job's ``ConnectMode``, and what ``auto`` means for it on this node (``mode``)."""
    if job.connect_mode is ConnectMode.AUTO:
        return f"auto ({mode.value})"
    return mode.value


def next_capture_text(job: Job, mode: ConnectMode) -> str:
    """When a started per-tick job connects next: one interval after its last capture
    (its ticks keep to the interval; the capture lands on the first keyframe after one)."""
    if (mode is not ConnectMode.PER_TICK or job.status is not JobStatus.STARTED
            or job.last_snapshot_ms is None):
        return "—"
    return f"by about {present.utc_text(job.last_snapshot_ms + job.interval_s * 1000)}"


def job_details(job: Job, *, per_tick_min_interval_s: float) -> list[tuple[str, str]]:
    """Every field of the job, under its API name."""
    effective = job.effective_interval_ms
    mode = connect.resolve(job.connect_mode, interval_s=job.interval_s,
                           per_tick_min_interval_s=per_tick_min_interval_s)
    return [
        ("JobId", job.id),
        ("JobName", job.name),
        ("Status", job.status.value),
        ("StreamStatus", job.stream_status.value),
        ("StatusReason", job.status_reason or "—"),
        ("LastError", job.last_error or "—"),
        ("SnapshotCount", str(job.snapshot_count)),
        ("LastSnapshotTime", present.utc_text(job.last_snapshot_ms) or "—"),
        ("TimeInterval", f"{job.interval_s} s"),
        ("EffectiveInterval", f"{effective / 1000:g} s" if effective else "—"),
        ("ConnectMode", connect_text(job, mode)),
        ("NextCapture", next_capture_text(job, mode)),
        ("TemplateId", job.template_id),
        ("TemplateName", job.template_name),
        ("StreamInput.Type", job.stream_type),
        ("StreamInput.Url", urls.redacted(job.stream_url)),  # no password on a page
        ("SnapshotOutput.StorageType", job.storage.storage_type.value),
        ("SnapshotOutput.Endpoint", job.storage.endpoint),
        ("SnapshotOutput.Bucket", job.storage.bucket),
        ("OverwriteFormat", job.overwrite_format or "—"),
        ("SequenceFormat", job.sequence_format or "—"),
        ("CallbackUrl", job.callback_url or "—"),
        ("CreateTime", present.utc_text(job.created_ms)),
        ("LastModified", present.utc_text(job.modified_ms)),
    ]


def routes(console: Console) -> list[BaseRoute]:
    views = WallViews(console)
    page, api = console.page, console.api
    return [
        Route("/console/", page(views.wall), methods=["GET"]),
        Route("/console/jobs/{job_id}", page(views.job_page), methods=["GET"]),
        Route("/console/jobs/{job_id}/command", page(views.command), methods=["POST"]),
        Route("/console/jobs/{job_id}/delete", page(views.delete), methods=["POST"]),
        Route("/console/jobs/{job_id}/state.json", api(views.state), methods=["GET"]),
        Route("/console/jobs/{job_id}/latest.jpg", api(views.latest_image), methods=["GET"]),
        Route("/console/jobs/{job_id}/files/{create_ms:int}.jpg", api(views.file_image),
              methods=["GET"]),
    ]
