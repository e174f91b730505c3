"""Console sessions: an HMAC-signed cookie value, its CSRF token, and the per-data-dir secret.

The cookie carries the whole session (no server-side table), so it is signed with
HMAC-SHA256 under a random secret kept in the data directory (mode 0600). A cookie is
``v1.<payload>.<signature>``, both parts unpadded base64url; the payload is compact JSON with
the account, the access key id that logged in, the CSRF token and the issue time. A visitor
who has not logged in yet gets a session with an empty account: it carries the CSRF token
that protects the login form itself. Logging out revokes the session: its CSRF token, which
is new at every login and so names one logged-in session, goes on a revocation list kept in
the data directory until every cookie that could carry it has expired. Everything here is pure
except the secret file and that list.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

VERSION = "v1"
SECRET_FILE = "console-session.key"  # noqa: S105 (a file name, not a secret)
REVOKED_FILE = "console-revoked.json"
SECRET_BYTES = 32
DEFAULT_MAX_AGE_S = 12 * 3600


@dataclass(frozen=True, kw_only=True)
class Session:
    """Who is logged in (``account == ""``: nobody yet) and the token forms must echo."""

    account: str
    key_id: str
    csrf: str
    issued_s: int

    @property
    def logged_in(self) -> bool:
        return bool(self.account)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def anonymous(now_s: float) -> Session:
    """A fresh pre-login session (only a CSRF token)."""
    return Session(account="", key_id="", csrf=new_csrf_token(), issued_s=int(now_s))


def logged_in(account: str, key_id: str, now_s: float) -> Session:
    """A new session for ``account``; the CSRF token is new too (no token fixation)."""
    return Session(account=account, key_id=key_id, csrf=new_csrf_token(), issued_s=int(now_s))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest())


def sign(session: Session, secret: bytes) -> str:
    """The cookie value for ``session``."""
    payload = {"a": session.account, "k": session.key_id, "c": session.csrf,
               "i": session.issued_s}
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signed_part = f"{VERSION}.{body}"
    return f"{signed_part}.{_mac(secret, signed_part)}"


def unsign(
    value: str, secret: bytes, *, now_s: float, max_age_s: int = DEFAULT_MAX_AGE_S
) -> Session | None:
    """The session in a cookie value; None if it is malformed, forged or expired."""
    version, _, rest = value.partition(".")
    body, _, mac = rest.partition(".")
    if version != VERSION or not body or not mac:
        return None
    if not hmac.compare_digest(mac, _mac(secret, f"{version}.{body}")):
        return None
    session = _decode(body)
    if session is None or not 0 <= now_s - session.issued_s <= max_age_s:
        return None
    return session


def _decode(body: str) -> Session | None:
    try:
        raw = json.loads(_b64decode(body))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(raw, dict):
        return None
    fields = (raw.get("a"), raw.get("k"), raw.get("c"), raw.get("i"))
    account, key_id, csrf, issued = fields
    if not (isinstance(account, str) and isinstance(key_id, str) and isinstance(csrf, str)):
        return None
    if not isinstance(issued, int) or isinstance(issued, bool) or not csrf:
        return None
    return Session(account=account, key_id=key_id, csrf=csrf, issued_s=issued)


def csrf_matches(session: Session | None, submitted: str | None) -> bool:
    """True if a form echoed the session's CSRF token (compared in constant time)."""
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def secret_matches(expected: str | None, given: str) -> bool:
    """Compare an access key secret in constant time, also when the key id is unknown."""
    reference = expected if expected is not None else secrets.token_urlsafe(24)
    same = hmac.compare_digest(reference.encode(), given.encode())
    return same and expected is not None


def load_or_create_secret(data_dir: Path) -> bytes:
    """The signing secret in ``data_dir`` (created with mode 0600 on first use)."""
    path = data_dir / SECRET_FILE
    if path.exists():
        return _read_secret(path)
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)  # another process created it first: use theirs
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())
    return secret


def _read_secret(path: Path) -> bytes:
    text = path.read_text().strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError as exc:
        raise ValueError(f"{path} does not hold a hex session secret") from exc
    if len(secret) < 16:
        raise ValueError(f"{path} holds a session secret shorter than 16 bytes")
    return secret


class Revocations:
    """Logged-out sessions, by CSRF token, until no cookie carrying them can still be valid.

    A session's cookie is re-issued while it is used, so a revoked token is kept for the
    longest a cookie may live after the logout (``max_age_s``). With a ``path`` the list is
    read at start and rewritten (atomically) at each logout, so a restart keeps it.
    """

    def __init__(self, *, max_age_s: int, now_s: float, path: Path | None = None) -> None:
        self._max_age_s = max_age_s
        self._path = path
        self._until: dict[str, float] = _read_revoked(path, now_s) if path else {}

    def revoke(self, session: Session, now_s: float) -> None:
        self._until = {t: u for t, u in self._until.items() if u > now_s}
        self._until[session.csrf] = now_s + self._max_age_s
        if self._path is not None:
            _write_revoked(self._path, self._until)

    def revoked(self, session: Session, now_s: float) -> bool:
        until = self._until.get(session.csrf)
        return until is not None and until > now_s

    def __len__(self) -> int:
        return len(self._until)


def _read_revoked(path: Path, now_s: float) -> dict[str, float]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raw = None
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a list of revoked console sessions")
    return {str(t): float(u) for t, u in raw.items()
            if isinstance(u, (int, float)) and u > now_s}


def _write_revoked(path: Path, until: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(until, fh)
    os.replace(temporary, path)
