"""The console's routes, its dependencies, and the guard every page goes through.

``routes.console_routes(deps)`` gives the Starlette routes under ``/console`` that
``service.py`` adds to the API app. Pages are server-rendered (``templates/``);
``static/console.js`` only refreshes the wall and asks before deleting. The console imports
``jobs`` and ``config`` only (design.md §2); stored pictures are read back through the
injected ``SnapshotReader``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from livesnap.config import KeyRing
from livesnap.console.attempts import LoginAttempts
from livesnap.console.auth import HOME_PATH, LOGIN_PATH, Auth, safe_next, same_origin
from livesnap.console.forms import FormError, read_form
from livesnap.console.pages import Pages
from livesnap.console.session import DEFAULT_MAX_AGE_S, Revocations, Session, csrf_matches
from livesnap.errors import LivesnapError
from livesnap.jobs.connect import DEFAULT_PER_TICK_MIN_INTERVAL_S
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import StorageTarget


class SnapshotReader(Protocol):
    """Reads a stored snapshot back (local disk, or an object store through the server)."""

    async def read(self, account: str, target: StorageTarget, key: str) -> bytes | None:
        """One of ``account``'s objects; None if it does not exist or cannot be read."""


@dataclass(frozen=True, kw_only=True)
class ConsoleDeps:
    manager: JobManager
    keys: KeyRing
    reader: SnapshotReader
    secret: bytes = field(repr=False)
    now: Callable[[], float] = time.time
    session_max_age_s: int = DEFAULT_MAX_AGE_S
    # where logged-out sessions are remembered across restarts (None: in memory only)
    revoked_path: Path | None = None
    attempts: LoginAttempts = field(default_factory=LoginAttempts)
    # what ConnectMode auto means (LIVESNAP_PER_TICK_MIN_INTERVAL_S), to say so on job pages
    per_tick_min_interval_s: float = DEFAULT_PER_TICK_MIN_INTERVAL_S


@dataclass(frozen=True, kw_only=True)
class Visit:
    """A logged-in request: its session and, for a POST, its checked form."""

    session: Session
    form: dict[str, str] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return self.session.account


Handler = Callable[[Request, Visit], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


class Console:
    """Wraps the page handlers in the session guard and the CSRF check."""

    def __init__(self, deps: ConsoleDeps) -> None:
        self.deps = deps
        revocations = Revocations(max_age_s=deps.session_max_age_s, now_s=deps.now(),
                                  path=deps.revoked_path)
        self.auth = Auth(keys=deps.keys, secret=deps.secret, now=deps.now,
                         max_age_s=deps.session_max_age_s, revocations=revocations,
                         attempts=deps.attempts)
        self.pages = Pages(self.auth)

    def now_ms(self) -> int:
        return int(self.deps.now() * 1000)

    def page(self, handler: Handler) -> Endpoint:
        """A page: without a session, redirect to the login page."""
        return self._guarded(handler, api=False)

    def api(self, handler: Handler) -> Endpoint:
        """A picture or JSON: without a session, 401 (the wall's script then goes to login)."""
        return self._guarded(handler, api=True)

    def _guarded(self, handler: Handler, *, api: bool) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            session = self.auth.session(request)
            if session is None or not session.logged_in:
                return _unauthorized() if api else _to_login(request)
            form: dict[str, str] = {}
            if request.method == "POST":
                checked = await self.checked_form(request, session)
                if isinstance(checked, Response):
                    return checked
                form = checked
            return await handler(request, Visit(session=session, form=form))

        return endpoint

    async def checked_form(self, request: Request, session: Session) -> dict[str, str] | Response:
        """The posted form if it carries this session's CSRF token, else a 403 page."""
        reason = "This form came from another site." if not same_origin(request) else ""
        form: dict[str, str] = {}
        if not reason:
            try:
                form = await read_form(request)
            except FormError as exc:
                reason = f"The form could not be read: {exc}."
        if not reason and not _csrf_ok(session, form):
            reason = "The form has expired. Go back, reload the page and try again."
        if reason:
            return self.pages.message(request, session, "Request refused", reason, status=403)
        return form


def _csrf_ok(session: Session, form: dict[str, str]) -> bool:
    return csrf_matches(session, form.get("csrf_token"))


def _unauthorized() -> Response:
    return PlainTextResponse("Log in first.", status_code=401,
                             headers={"Cache-Control": "no-store"})


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET" or safe_next(target) == HOME_PATH:
        return RedirectResponse(LOGIN_PATH, status_code=303)
    return RedirectResponse(f"{LOGIN_PATH}?{urlencode({'next': target})}", status_code=303)


# by class name: console/ may import only jobs and config (design.md §2), not livesnap.errors
_STATUS_BY_ERROR = {
    "NotFound": 404,
    "Forbidden": 403,
    "Conflict": 409,
    "JobLimitExceeded": 429,
    "StoreError": 503,
    "OutputError": 502,
    "CaptureTimeout": 504,
}


def status_for(exc: LivesnapError) -> int:
    """The HTTP status a page shows for a use-case error (400 for bad input)."""
    for cls in type(exc).__mro__:
        status = _STATUS_BY_ERROR.get(cls.__name__)
        if status is not None:
            return status
    return 400
