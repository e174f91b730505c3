"""Settings: read once at the edge (CLI flags and ``LIVESNAP_*`` environment), then passed down.

Secrets are masked in ``repr``. Access keys come from ``LIVESNAP_ACCESS_KEYS`` as
``id:secret:account`` entries separated by commas; without any, the CLI generates one pair in
the data directory on first start.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from livesnap.jobs.urls import DEFAULT_BLOCKED_NETWORKS, Network, parse_networks


@dataclass(frozen=True)
class AccessKey:
    id: str
    secret: str = field(repr=False)
    account: str

    def __repr__(self) -> str:
        return f"AccessKey(id={self.id!r}, secret='***', account={self.account!r})"


class KeyRing:
    """Access key id → key. Read-only after construction."""

    def __init__(self, keys: list[AccessKey]) -> None:
        self._keys = {k.id: k for k in keys}

    def secret_for(self, key_id: str) -> str | None:
        key = self._keys.get(key_id)
        return None if key is None else key.secret

    def account_for(self, key_id: str) -> str | None:
        key = self._keys.get(key_id)
        return None if key is None else key.account

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing({sorted(self._keys)!r})"


def parse_access_keys(text: str) -> list[AccessKey]:
    """``id:secret:account,…``; ``ValueError`` with a one-line reason on bad input."""
    keys: list[AccessKey] = []
    for number, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(
                f"LIVESNAP_ACCESS_KEYS entry {number} must look like id:secret:account"
            )
        keys.append(AccessKey(*(p.strip() for p in parts)))
    return keys


def load_or_create_keys(data_dir: Path) -> tuple[list[AccessKey], bool]:
    """The generated key pair in ``data_dir`` (created on first call); True if just created."""
    path = data_dir / "access-keys.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return [AccessKey(k["id"], k["secret"], k["account"]) for k in raw], False
    data_dir.mkdir(parents=True, exist_ok=True)
    key = AccessKey("LS" + secrets.token_hex(10).upper(), secrets.token_urlsafe(24), "default")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump([{"id": key.id, "secret": key.secret, "account": key.account}], fh)
    tmp.replace(path)
    return [key], True


class Settings(BaseSettings):
    """Every setting, with its ``LIVESNAP_`` environment name (see docs/configuration.md)."""

    model_config = SettingsConfigDict(env_prefix="LIVESNAP_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("./livesnap-data")
    database_url: SecretStr | None = None  # may carry a password
    access_keys: SecretStr | None = None
    host_id: str = "livesnap"
    blocked_networks: str = ",".join(DEFAULT_BLOCKED_NETWORKS)
    max_jobs_per_account: int = Field(default=100, ge=1)
    max_jobs_per_node: int = Field(default=500, ge=1)
    capture: bool = True
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    rw_timeout_s: float = Field(default=5.0, gt=0)
    probe_timeout_s: float = Field(default=10.0, gt=0)
    outage_window_s: float = Field(default=1800.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    log_json: bool = False
    log_level: str = "INFO"

    @field_validator("blocked_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value.split(","))
        return value

    def networks(self) -> tuple[Network, ...]:
        return parse_networks(self.blocked_networks.split(","))

    def resolved_database_url(self) -> str:
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'livesnap.db').resolve()}"
