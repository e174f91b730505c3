"""Callback signing keys, one per account.

Keys configured in ``LIVESNAP_CALLBACK_KEYS`` win. An account without one gets a random key
the first time an event of that account is signed; it is kept in ``callback-keys.json`` in
the data directory (mode 0600) so it survives restarts. The file is written under an
exclusive lock and re-read first, so two processes sharing the data directory agree.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

FILE_NAME = "callback-keys.json"


def new_key() -> str:
    """A fresh random key (32 bytes, URL-safe base64)."""
    return secrets.token_urlsafe(32)


class CallbackKeys:
    """Account → callback key: configured keys, else generated once and kept in ``path``."""

    def __init__(
        self,
        configured: Mapping[str, str] | None = None,
        *,
        path: Path | None = None,
        make_key: Callable[[], str] = new_key,
    ) -> None:
        self._configured = dict(configured or {})
        self._path = path
        self._make_key = make_key
        self._generated: dict[str, str] = _read(path) if path is not None else {}

    @classmethod
    def in_data_dir(cls, data_dir: Path, configured: Mapping[str, str]) -> CallbackKeys:
        """Keys for a service whose data directory is ``data_dir``."""
        return cls(configured, path=data_dir / FILE_NAME)

    def key_for(self, account: str) -> str:
        """The account's key, generating (and storing) one on first use."""
        key = self._configured.get(account) or self._generated.get(account)
        if key is None:
            key = self._generate(account)
        return key

    def generated(self) -> dict[str, str]:
        """Generated keys by account (for a CLI command that shows them to the operator)."""
        return dict(self._generated)

    def _generate(self, account: str) -> str:
        if self._path is None:
            return self._generated.setdefault(account, self._make_key())
        with _locked(self._path):
            stored = _read(self._path)
            if account not in stored:
                stored[account] = self._make_key()
                _write(self._path, stored)
        self._generated = stored
        return stored[account]

    def __repr__(self) -> str:
        accounts = sorted({*self._configured, *self._generated})
        return f"CallbackKeys(accounts={accounts!r}, keys='***')"


def _read(path: Path) -> dict[str, str]:
    """The stored keys; ``ValueError`` if the file is not a JSON object of strings."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON") from exc
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()
    ):
        raise ValueError(f"{path} must map account names to keys")
    return raw


def _write(path: Path, keys: Mapping[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover could have looser permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(keys), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


__all__ = ["FILE_NAME", "CallbackKeys", "new_key"]
