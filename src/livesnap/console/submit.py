"""The New job form: SubmitLiveSnapshotJob from the console, with the API's rules.

The stream URL, template, storage target and callback URL are checked by the manager, as for
the API; each message is shown next to the field it is about, and what was typed is kept.
A job whose stream is not live yet is created all the same and waits for it (its page says so).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.console.app import Console, Visit
from livesnap.console.forms import STORAGE_TYPES, JobForm
from livesnap.errors import LivesnapError, TemplateNotFound
from livesnap.jobs.models import TemplateQuery

logger = logging.getLogger(__name__)

NEW_JOB_PATH = "/console/jobs/new"


class SubmitViews:
    def __init__(self, console: Console) -> None:
        self.manager = console.deps.manager
        self.pages = console.pages

    async def new(self, request: Request, visit: Visit) -> Response:
        form = JobForm()
        if request.method == "POST":
            form = JobForm.from_form(visit.form)
            job_id = await self._submit(visit, form)
            if job_id is not None:
                return RedirectResponse(f"/console/jobs/{job_id}", status_code=303)
        templates = await self.manager.list_templates(
            visit.account, TemplateQuery(page_no=1, page_size=100))
        context = {"title": "New job", "form": form, "templates": templates.items,
                   "storage_types": STORAGE_TYPES, "read_only": False}
        return self.pages.render(request, visit.session, "job_new.html", context,
                                 status=400 if form.errors else 200)

    async def _submit(self, visit: Visit, form: JobForm) -> str | None:
        spec = form.spec()
        if spec is None:
            return None
        try:
            job = await self.manager.submit_job(visit.account, spec)
        except TemplateNotFound:
            form.errors["template_id"] = "There is no such template in this account."
            return None
        except LivesnapError as exc:
            form.add_error(exc.message)
            return None
        logger.info("console job submitted", extra={"action": "submit_job", "job_id": job.id})
        return job.id


def routes(console: Console) -> list[BaseRoute]:
    views = SubmitViews(console)
    return [Route(NEW_JOB_PATH, console.page(views.new), methods=["GET", "POST"])]
