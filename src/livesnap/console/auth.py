"""Who is asking: the session cookie, access-key login, and the checks on every POST.

Sessions are signed cookies (``session.py``): ``HttpOnly``, ``SameSite=Strict``, path
``/console``, ``Secure`` when the request came over HTTPS. A logged-in session is only valid
while its access key still belongs to the same account in the key ring, so removing a key
from the configuration ends its console sessions at the next restart. Logging out revokes the
session for good (``session.Revocations``). Wrong logins are limited per access key id and per
client address (``attempts.LoginAttempts``). Every POST must echo the session's CSRF token,
and must not come from another origin.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from livesnap.config import KeyRing
from livesnap.console import session as sessions
from livesnap.console.attempts import LoginAttempts
from livesnap.console.session import Revocations, Session

COOKIE_NAME = "livesnap_console"
COOKIE_PATH = "/console"
LOGIN_PATH = "/console/login"
HOME_PATH = "/console/"


class Auth:
    """Reads and writes console sessions; checks access keys and form posts."""

    def __init__(
        self, *, keys: KeyRing, secret: bytes, now: Callable[[], float], max_age_s: int,
        revocations: Revocations, attempts: LoginAttempts,
    ) -> None:
        self._keys = keys
        self._secret = secret
        self._now = now
        self._max_age_s = max_age_s
        self._revocations = revocations
        self._attempts = attempts

    def session(self, request: Request) -> Session | None:
        """The request's valid session (logged in or not), or None."""
        value = request.cookies.get(COOKIE_NAME)
        if not value:
            return None
        found = sessions.unsign(value, self._secret, now_s=self._now(),
                                max_age_s=self._max_age_s)
        if found is None or not found.logged_in:
            return found
        if self._keys.account_for(found.key_id) != found.account:
            return None  # the key was removed or moved to another account
        if self._revocations.revoked(found, self._now()):
            return None  # logged out
        return found

    def anonymous(self) -> Session:
        return sessions.anonymous(self._now())

    def login(self, key_id: str, secret: str, address: str) -> Session | None:
        """A new logged-in session if the access key id and secret are right.

        A wrong one counts against the key id and the client ``address``; see
        :meth:`login_wait_s` for when they may try again.
        """
        account = self._keys.account_for(key_id)
        if not sessions.secret_matches(self._keys.secret_for(key_id), secret) or not account:
            self._attempts.failed(key_id, address, self._now())
            return None
        return sessions.logged_in(account, key_id, self._now())

    def login_wait_s(self, key_id: str, address: str) -> float:
        """Seconds before a login with this key id from this address is taken (0: now)."""
        return self._attempts.wait_s(key_id, address, self._now())

    def logout(self, session: Session) -> None:
        """Revoke ``session``: its cookie, and any copy of it, no longer logs in."""
        self._revocations.revoke(session, self._now())

    def store(self, response: Response, session: Session, request: Request) -> None:
        response.set_cookie(
            COOKIE_NAME,
            sessions.sign(session, self._secret),
            path=COOKIE_PATH,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )


def same_origin(request: Request) -> bool:
    """False if the browser says the request comes from another origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # browsers that send no Origin still send the SameSite=Strict cookie only
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def safe_next(target: str | None) -> str:
    """Where to go after login: a console path on this site, else the wall."""
    if not target or not target.startswith(HOME_PATH) or "\\" in target:
        return HOME_PATH
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "//" in parts.path:
        return HOME_PATH
    return target
