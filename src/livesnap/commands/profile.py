"""Where the CLI finds its server and access key: flags, environment, profile file.

Precedence, highest first (as the AWS CLI does it):

1. command-line flags (``--endpoint``, ``--access-key-id``, …);
2. the profile named with ``--profile NAME``;
3. the environment (``LIVESNAP_ENDPOINT``, ``LIVESNAP_ACCESS_KEY_ID``,
   ``LIVESNAP_ACCESS_KEY_SECRET``, ``LIVESNAP_SIGNATURE``, ``LIVESNAP_TIMEOUT``);
4. the profile named by ``LIVESNAP_PROFILE``, else ``[default]`` if the file has one;
5. built-in defaults (endpoint ``http://127.0.0.1:8080``, ACS3 signatures, 30 s timeout).

The profile file is TOML (``~/.livesnap/config.toml``, or ``LIVESNAP_CONFIG``): one table
per profile with ``endpoint``, ``access_key_id``, ``access_key_secret``, ``signature``
(``acs3`` or ``rpc``) and ``timeout`` (seconds).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from livesnap.client import Scheme, normalize_endpoint

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0
SCHEMES: tuple[Scheme, ...] = ("acs3", "rpc")
FIELDS = ("endpoint", "access_key_id", "access_key_secret", "signature", "timeout")
ENV_NAMES = {
    "endpoint": "LIVESNAP_ENDPOINT",
    "access_key_id": "LIVESNAP_ACCESS_KEY_ID",
    "access_key_secret": "LIVESNAP_ACCESS_KEY_SECRET",
    "signature": "LIVESNAP_SIGNATURE",
    "timeout": "LIVESNAP_TIMEOUT",
}


class ConfigError(Exception):
    """The CLI's connection settings are missing or invalid (exit code 2)."""


@dataclass(frozen=True, kw_only=True)
class ConnectionFlags:
    """What the command line said (None: not given)."""

    profile: str | None = None
    endpoint: str | None = None
    access_key_id: str | None = None
    access_key_secret: str | None = field(default=None, repr=False)
    signature: str | None = None
    timeout: float | None = None

    def given(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}


@dataclass(frozen=True, kw_only=True)
class Connection:
    """Resolved settings for one CLI run."""

    endpoint: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    scheme: Scheme
    timeout_s: float


def config_path(environ: Mapping[str, str]) -> Path:
    """``LIVESNAP_CONFIG`` or ``~/.livesnap/config.toml``."""
    explicit = environ.get("LIVESNAP_CONFIG", "").strip()
    return Path(explicit).expanduser() if explicit else Path.home() / ".livesnap" / "config.toml"


def load_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """Every profile in the file (an absent file has none)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    profiles: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} must be a [{name}] table of settings")
        unknown = sorted(set(table) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{path}: profile {name}: unknown setting(s) {', '.join(unknown)}")
        profiles[name] = table
    return profiles


def _profile(profiles: dict[str, dict[str, Any]], name: str, path: Path) -> dict[str, Any]:
    if name not in profiles:
        raise ConfigError(f"no profile [{name}] in {path}")
    return profiles[name]


def _environment(environ: Mapping[str, str]) -> dict[str, Any]:
    return {name: environ[env] for name, env in ENV_NAMES.items() if environ.get(env, "").strip()}


def _layers(flags: ConnectionFlags, environ: Mapping[str, str]) -> dict[str, Any]:
    """Merge the sources, lowest precedence first."""
    path = config_path(environ)
    profiles = load_profiles(path)
    env_profile = environ.get("LIVESNAP_PROFILE", "").strip()
    base: dict[str, Any] = {}
    if env_profile:
        base = _profile(profiles, env_profile, path)
    elif "default" in profiles:
        base = profiles["default"]
    chosen = _profile(profiles, flags.profile, path) if flags.profile else {}
    return {**base, **_environment(environ), **chosen, **flags.given()}


def resolve_connection(flags: ConnectionFlags, environ: Mapping[str, str]) -> Connection:
    """The connection settings for this run; ``ConfigError`` with a one-line reason."""
    merged = _layers(flags, environ)
    key_id = str(merged.get("access_key_id") or "").strip()
    secret = str(merged.get("access_key_secret") or "").strip()
    if not key_id or not secret:
        raise ConfigError(
            "no access key: set LIVESNAP_ACCESS_KEY_ID and LIVESNAP_ACCESS_KEY_SECRET, "
            f"add them to {config_path(environ)}, or pass --access-key-id/--access-key-secret"
        )
    endpoint = str(merged.get("endpoint") or DEFAULT_ENDPOINT)
    try:
        normalize_endpoint(endpoint)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return Connection(
        endpoint=endpoint,
        access_key_id=key_id,
        access_key_secret=secret,
        scheme=_scheme(merged.get("signature")),
        timeout_s=_timeout(merged.get("timeout")),
    )


def _scheme(value: object) -> Scheme:
    text = str(value or "acs3").strip().lower()
    if text not in SCHEMES:
        raise ConfigError(f"signature must be one of {', '.join(SCHEMES)} (got {value!r})")
    return "rpc" if text == "rpc" else "acs3"


def _timeout(value: object) -> float:
    if value is None or value == "":
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(cast(Any, value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"timeout must be a number of seconds (got {value!r})") from exc
    if seconds <= 0:
        raise ConfigError(f"timeout must be positive (got {value!r})")
    return seconds
