"""Login with an access key id and secret, and logout."""

from __future__ import annotations

import logging
import math

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.console.app import Console, Visit
from livesnap.console.auth import HOME_PATH, LOGIN_PATH, safe_next
from livesnap.console.session import Session

logger = logging.getLogger(__name__)

WRONG_KEY = "The access key ID or secret is wrong."


class LoginViews:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.auth = console.auth
        self.pages = console.pages

    async def form(self, request: Request) -> Response:
        session = self.auth.session(request)
        if session is not None and session.logged_in:
            return RedirectResponse(HOME_PATH, status_code=303)
        fresh = session is None
        current = session or self.auth.anonymous()
        return self._page(request, current, new_session=fresh,
                          next_path=safe_next(request.query_params.get("next")))

    async def submit(self, request: Request) -> Response:
        session = self.auth.session(request)
        if session is None:
            # no cookie (expired, or cookies blocked): start over with a fresh form
            return self._page(request, self.auth.anonymous(), new_session=True, status=403,
                              error="Your login form expired. Please try again.")
        checked = await self.console.checked_form(request, session)
        if isinstance(checked, Response):
            return checked
        key_id = checked.get("access_key_id", "").strip()
        next_path = safe_next(checked.get("next"))
        address = request.client.host if request.client else ""
        wait_s = self.auth.login_wait_s(key_id, address)
        if wait_s > 0:
            logger.info("console login throttled", extra={"action": "console_login"})
            response = self._page(
                request, session, status=429, key_id=key_id, next_path=next_path,
                error=f"Too many wrong logins for this access key or from this address. "
                      f"Try again in {math.ceil(wait_s)} s.")
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response
        new = self.auth.login(key_id, checked.get("access_key_secret", ""), address)
        if new is None:
            logger.info("console login refused", extra={"action": "console_login"})
            return self._page(request, session, status=401, error=WRONG_KEY,
                              key_id=key_id, next_path=next_path)
        logger.info("console login", extra={"action": "console_login", "account": new.account})
        response = RedirectResponse(next_path, status_code=303)
        self.auth.store(response, new, request)
        return response

    async def logout(self, request: Request, visit: Visit) -> Response:
        self.auth.logout(visit.session)
        logger.info("console logout", extra={"action": "console_logout",
                                             "account": visit.account})
        response = RedirectResponse(LOGIN_PATH, status_code=303)
        self.auth.store(response, self.auth.anonymous(), request)
        return response

    def _page(
        self,
        request: Request,
        session: Session,
        *,
        new_session: bool = False,
        status: int = 200,
        error: str = "",
        key_id: str = "",
        next_path: str = HOME_PATH,
    ) -> Response:
        context = {"title": "Log in", "login_error": error, "key_id": key_id,
                   "next_path": next_path}
        return self.pages.render(request, session, "login.html", context, status=status,
                                 new_session=new_session)


def routes(console: Console) -> list[BaseRoute]:
    views = LoginViews(console)
    return [
        Route(LOGIN_PATH, views.form, methods=["GET"]),
        Route(LOGIN_PATH, views.submit, methods=["POST"]),
        Route("/console/logout", console.page(views.logout), methods=["POST"]),
    ]
