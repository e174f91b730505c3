"""All console routes, for ``service.py`` to add to the API app."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from livesnap.console import editor, login, submit, wall
from livesnap.console.app import Console, ConsoleDeps
from livesnap.console.auth import HOME_PATH


def console_routes(deps: ConsoleDeps) -> list[BaseRoute]:
    """The console's routes, all under ``/console``."""
    console = Console(deps)
    static = StaticFiles(packages=[("livesnap.console", "static")])
    return [
        Route("/console", _to_home, methods=["GET"]),
        *login.routes(console),
        *submit.routes(console),  # before the wall's /console/jobs/{job_id}
        *wall.routes(console),
        *editor.routes(console),
        Mount("/console/static", static, name="console-static"),
    ]


async def _to_home(_: Request) -> Response:
    return RedirectResponse(HOME_PATH, status_code=307)
