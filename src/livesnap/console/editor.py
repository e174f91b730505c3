"""Snapshot templates: the list and the editor (create, update, delete).

Validation is the manager's (the same rules and messages as the API); the editor shows each
message next to the field it is about and keeps what the user typed.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.console.app import Console, Visit, status_for
from livesnap.console.forms import TemplateForm
from livesnap.errors import LivesnapError
from livesnap.jobs.models import Template, TemplateQuery, TemplateType

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
LIST_PATH = "/console/templates"
DONE = {"created": "Template created.", "saved": "Template saved.",
        "deleted": "Template deleted."}


class EditorViews:
    def __init__(self, console: Console) -> None:
        self.manager = console.deps.manager
        self.pages = console.pages
        self.per_tick_min_interval_s = console.deps.per_tick_min_interval_s

    async def index(self, request: Request, visit: Visit) -> Response:
        return await self._list(request, visit,
                                notice=DONE.get(request.query_params.get("done", ""), ""))

    async def _list(
        self, request: Request, visit: Visit, *, notice: str = "", error: str = "",
        status: int = 200,
    ) -> Response:
        page_no = _page_number(request.query_params.get("page"))
        page = await self.manager.list_templates(
            visit.account, TemplateQuery(page_no=page_no, page_size=PAGE_SIZE))
        last_page = max(1, -(-page.total // PAGE_SIZE))
        context = {"title": "Templates", "templates": page.items, "page_no": page_no,
                   "last_page": last_page, "notice": notice, "error": error}
        return self.pages.render(request, visit.session, "templates.html", context,
                                 status=status)

    async def new(self, request: Request, visit: Visit) -> Response:
        form = TemplateForm()
        if request.method == "POST":
            form = TemplateForm.from_form(visit.form)
            created = await self._save(visit, form, template_id=None)
            if created is not None:
                return RedirectResponse(f"{LIST_PATH}/{created}?done=created", status_code=303)
        return self._editor(request, visit, form, template=None)

    async def edit(self, request: Request, visit: Visit) -> Response:
        template = await self._template(visit, request.path_params["template_id"])
        if template is None:
            return self._not_found(request, visit)
        if request.method == "GET":
            notice = DONE.get(request.query_params.get("done", ""), "")
            return self._editor(request, visit, TemplateForm.from_template(template),
                                template=template, notice=notice)
        form = TemplateForm.from_form(visit.form)
        if template.type is TemplateType.SYSTEM:
            form.errors[""] = "The system template cannot be changed."
        elif await self._save(visit, form, template_id=template.id) is not None:
            return RedirectResponse(f"{LIST_PATH}/{template.id}?done=saved", status_code=303)
        return self._editor(request, visit, form, template=template)

    async def delete(self, request: Request, visit: Visit) -> Response:
        template_id = request.path_params["template_id"]
        try:
            await self.manager.delete_template(visit.account, template_id)
        except LivesnapError as exc:
            if status_for(exc) == 404:
                return self._not_found(request, visit)
            return await self._list(request, visit, error=exc.message, status=status_for(exc))
        logger.info("console template deleted", extra={"action": "delete_template",
                                                        "template_id": template_id})
        return RedirectResponse(f"{LIST_PATH}?done=deleted", status_code=303)

    async def _save(
        self, visit: Visit, form: TemplateForm, *, template_id: str | None
    ) -> str | None:
        """Create or update; the template id, or None with the form's errors set."""
        spec = form.validate()
        if spec is None:
            return None
        try:
            if template_id is None:
                return (await self.manager.create_template(visit.account, spec)).id
            await self.manager.update_template(visit.account, template_id, spec)
        except LivesnapError as exc:
            form.add_error(exc.message)
            return None
        return template_id

    async def _template(self, visit: Visit, template_id: str) -> Template | None:
        try:
            return await self.manager.get_template(visit.account, template_id)
        except LivesnapError as exc:
            if status_for(exc) == 404:
                return None
            raise

    def _editor(
        self, request: Request, visit: Visit, form: TemplateForm, *, template: Template | None,
        notice: str = "",
    ) -> Response:
        read_only = template is not None and template.type is TemplateType.SYSTEM
        title = "New template" if template is None else f"Template {template.name}"
        context = {"title": title, "form": form, "template": template, "read_only": read_only,
                   "notice": notice,
                   "per_tick_min_interval": f"{self.per_tick_min_interval_s:g}"}
        status = 200
        if form.errors:
            status = 403 if read_only else 400
        return self.pages.render(request, visit.session, "template_edit.html", context,
                                 status=status)

    def _not_found(self, request: Request, visit: Visit) -> Response:
        return self.pages.message(request, visit.session, "Template not found",
                                  "There is no such template in this account.", status=404)


def _page_number(text: str | None) -> int:
    return int(text) if text and text.isdigit() and 0 < int(text) < 10_000 else 1


def routes(console: Console) -> list[BaseRoute]:
    views = EditorViews(console)
    page = console.page
    return [
        Route(LIST_PATH, page(views.index), methods=["GET"]),
        Route(f"{LIST_PATH}/new", page(views.new), methods=["GET", "POST"]),
        Route(f"{LIST_PATH}/{{template_id}}", page(views.edit), methods=["GET", "POST"]),
        Route(f"{LIST_PATH}/{{template_id}}/delete", page(views.delete), methods=["POST"]),
    ]
