"""Rendering: the Jinja2 environment (autoescaped, strict), common context and headers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from livesnap.console import present
from livesnap.console.auth import Auth
from livesnap.console.session import Session

# pages only load their own script, style and pictures; nothing may frame them
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

PAGE_DEFAULTS: dict[str, Any] = {"title": "livesnap", "nav": "", "notice": "", "error": ""}


def make_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("livesnap.console", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["utc"] = present.utc_text
    env.filters["age"] = present.age_text
    env.filters["local_input"] = present.local_input_value
    env.filters["local_input_ms"] = present.local_input_value_ms
    return env


class Pages:
    """Renders templates with the session's account and CSRF token."""

    def __init__(self, auth: Auth) -> None:
        self.auth = auth
        self.env = make_environment()

    def render(
        self,
        request: Request,
        session: Session,
        name: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        new_session: bool = False,
    ) -> Response:
        """An HTML page; ``new_session`` also sets the session cookie."""
        html = self.env.get_template(name).render(
            {**PAGE_DEFAULTS, "account": session.account, "csrf_token": session.csrf, **context}
        )
        response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
        if new_session:
            self.auth.store(response, session, request)
        return response

    def message(
        self, request: Request, session: Session, title: str, text: str, *, status: int
    ) -> Response:
        """A page that only says what went wrong (not found, refused)."""
        return self.render(request, session, "message.html",
                           {"title": title, "text": text}, status=status)
