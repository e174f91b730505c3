"""Settings: read once at the edge (CLI flags and ``LIVESNAP_*`` environment), then passed down,
grouped by concern (``settings.server``, ``.storage``, ``.capture``, ``.callbacks``,
``.cluster``).

Secrets are masked in ``repr``. Access keys come from ``LIVESNAP_ACCESS_KEYS`` as
``id:secret:account`` entries separated by commas; without any, the CLI generates one pair in
the data directory on first start. Object-storage credentials come from
``LIVESNAP_STORAGE_CONFIG`` (a TOML or JSON file, or the JSON itself; see docs/storage.md).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from livesnap.eventloop import EventLoopChoice, uvloop_available
from livesnap.jobs.connect import DEFAULT_PER_TICK_MIN_INTERVAL_S
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

    @property
    def accounts(self) -> frozenset[str]:
        return frozenset(k.account for k in self._keys.values())

    def __repr__(self) -> str:
        return f"KeyRing({sorted(self._keys)!r})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's where the system
    does not say)."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


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
        key_id, secret, account = (p.strip() for p in parts)
        if not ACCOUNT_NAME.fullmatch(account):
            raise ValueError(
                f"LIVESNAP_ACCESS_KEYS entry {number}: the account must be 1-64 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        keys.append(AccessKey(key_id, secret, account))
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


def parse_callback_keys(text: str) -> dict[str, str]:
    """``account:key,…`` (the key may contain ``:``); ``ValueError`` with a one-line reason."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        account, sep, key = entry.strip().partition(":")
        if not sep or not account.strip() or not key.strip():
            raise ValueError(f"LIVESNAP_CALLBACK_KEYS entry {number} must look like account:key")
        keys[account.strip()] = key.strip()
    return keys


MIN_HOOK_TOKEN = 16  # characters of LIVESNAP_HOOK_TOKEN

# An account name is a directory name and an object key segment (its storage prefix).
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ACCOUNT_PLACEHOLDER = "{Account}"

STORAGE_TYPES = ("oss", "s3")
_STORAGE_KEYS = frozenset({
    "storage_type", "endpoint", "bucket", "access_key_id", "access_key_id_env",
    "access_key_secret", "access_key_secret_env", "region", "endpoint_url", "path_style",
    "accounts", "prefix", "conditional_writes",
})


@dataclass(frozen=True, kw_only=True)
class StorageCredential:
    """Credentials and addressing for one OSS/S3 endpoint and bucket (``bucket="*"``: any).

    ``endpoint`` is compared with a job's ``SnapshotOutput.Endpoint``; ``endpoint_url``,
    ``region`` and ``path_style`` override what livesnap derives from it.
    """

    storage_type: str
    endpoint: str
    bucket: str
    access_key_id: str
    access_key_secret: str = field(repr=False)
    region: str | None = None
    endpoint_url: str | None = None
    path_style: bool | None = None
    # Who may use the entry: account names, or ("*",) for every account. None (not given):
    # every account, keys as given; ``livesnap serve`` refuses that with several accounts.
    accounts: tuple[str, ...] | None = None
    prefix: str = ""  # before every object key; "{Account}" is the writing job's account
    # If-Match writes of the overwrite object by cluster shards (None: on for s3, off for oss)
    conditional_writes: bool | None = None

    def __repr__(self) -> str:
        return (f"StorageCredential({self.storage_type} {self.endpoint} bucket={self.bucket!r}, "
                f"access_key_id={self.access_key_id!r}, access_key_secret='***')")

    @property
    def writes_conditionally(self) -> bool:
        """Whether a cluster shard writes the overwrite object with ``If-Match``."""
        if self.conditional_writes is not None:
            return self.conditional_writes
        return self.storage_type == "s3"

    @property
    def shared(self) -> bool:
        """True if several accounts may write to the entry (each under its own prefix)."""
        return _shared(self.accounts)

    def allows(self, account: str) -> bool:
        return self.accounts is None or "*" in self.accounts or account in self.accounts

    def key_prefix(self, account: str) -> str:
        """What every object key of ``account`` starts with in this entry's bucket."""
        return self.prefix.replace(ACCOUNT_PLACEHOLDER, account)

    def matches(self, storage_type: str, endpoint: str, bucket: str) -> bool:
        """True if this entry covers the target (the bucket exactly, or ``*``)."""
        return (
            self.storage_type == storage_type
            and normalize_endpoint(self.endpoint) == normalize_endpoint(endpoint)
            and self.bucket in ("*", bucket)
        )


def normalize_endpoint(endpoint: str) -> str:
    """Endpoints compare without case and without a trailing slash."""
    return endpoint.strip().rstrip("/").lower()


def load_storage_config(
    value: str, environ: Mapping[str, str] | None = None
) -> list[StorageCredential]:
    """``LIVESNAP_STORAGE_CONFIG``: inline JSON, or a ``.toml`` / ``.json`` file path.

    ``ValueError`` with a one-line reason (never the secret) on bad input.
    """
    text = value.strip()
    if not text:
        return []
    if text[0] in "[{":
        return parse_storage_config(text, toml=False, environ=environ)
    path = Path(text).expanduser()
    try:
        content = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read storage config {path}: {exc.strerror or exc}") from exc
    return parse_storage_config(content, toml=path.suffix == ".toml", environ=environ)


def parse_storage_config(
    text: str, *, toml: bool, environ: Mapping[str, str] | None = None
) -> list[StorageCredential]:
    """Entries from TOML (``[[storage]]`` tables) or JSON (a list, or ``{"storage": [...]}``)."""
    try:
        raw: Any = tomllib.loads(text) if toml else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if toml else "JSON"
        raise ValueError(f"storage config is not valid {kind}: {exc}") from exc
    entries = raw.get("storage", []) if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise ValueError("storage config must be a list of entries (TOML: [[storage]] tables)")
    env = os.environ if environ is None else environ
    return [_storage_entry(entry, number, env) for number, entry in enumerate(entries, start=1)]


def _storage_entry(entry: object, number: int, env: Mapping[str, str]) -> StorageCredential:
    where = f"storage config entry {number}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table/object")
    unknown = sorted(set(entry) - _STORAGE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    storage_type = _text(entry, "storage_type", where)
    if storage_type not in STORAGE_TYPES:
        raise ValueError(f"{where}: storage_type must be one of {', '.join(STORAGE_TYPES)}")
    endpoint_url = _optional_text(entry, "endpoint_url", where)
    if endpoint_url is not None and urlsplit(endpoint_url).scheme not in ("http", "https"):
        raise ValueError(f"{where}: endpoint_url must be an http:// or https:// URL")
    path_style = entry.get("path_style")
    if path_style is not None and not isinstance(path_style, bool):
        raise ValueError(f"{where}: path_style must be true or false")
    conditional = entry.get("conditional_writes")
    if conditional is not None and not isinstance(conditional, bool):
        raise ValueError(f"{where}: conditional_writes must be true or false")
    accounts = _accounts(entry.get("accounts"), where)
    return StorageCredential(
        storage_type=storage_type,
        endpoint=_text(entry, "endpoint", where),
        bucket=_text(entry, "bucket", where),
        access_key_id=_secret(entry, "access_key_id", where, env),
        access_key_secret=_secret(entry, "access_key_secret", where, env),
        region=_optional_text(entry, "region", where),
        endpoint_url=endpoint_url,
        path_style=path_style,
        conditional_writes=conditional,
        accounts=accounts,
        prefix=_prefix(entry.get("prefix"), accounts, where),
    )


def _accounts(value: object, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and (v == "*" or ACCOUNT_NAME.fullmatch(v))
                       for v in value)):
        raise ValueError(f"{where}: accounts must be a list of account names, or [\"*\"]")
    return tuple(dict.fromkeys(value))


def _shared(accounts: tuple[str, ...] | None) -> bool:
    return accounts is not None and (len(accounts) > 1 or "*" in accounts)


def _prefix(value: object, accounts: tuple[str, ...] | None, where: str) -> str:
    """The entry's key prefix: ``{Account}/`` by default when several accounts share it."""
    shared = _shared(accounts)
    if value is None:
        return f"{ACCOUNT_PLACEHOLDER}/" if shared else ""
    if value == "" and not shared:
        return ""
    segments = value.split("/") if isinstance(value, str) else []
    if (not isinstance(value, str) or not value.endswith("/")
            or any(s in ("", ".", "..") for s in segments[:-1])):
        raise ValueError(f"{where}: prefix must be a path ending in '/', "
                         "without empty, '.' or '..' segments")
    if shared and ACCOUNT_PLACEHOLDER not in segments:
        raise ValueError(f"{where}: several accounts share this entry, so its prefix needs "
                         f"a segment that is exactly {ACCOUNT_PLACEHOLDER} (each account's "
                         "keys under its own name)")
    return value


def storage_account_problem(
    credentials: Sequence[StorageCredential], accounts: frozenset[str]
) -> str:
    """Why the storage entries do not keep these accounts apart ("" if they do)."""
    if len(accounts) < 2:
        return ""
    for number, cred in enumerate(credentials, start=1):
        if cred.accounts is None:
            return (f"storage config entry {number} ({cred.storage_type} {cred.endpoint} "
                    f"bucket {cred.bucket}) does not say which accounts may use it, and "
                    f"{len(accounts)} accounts are configured: add accounts = [...] (one "
                    "account: its keys as given; several or \"*\": each account's keys "
                    "under its own prefix)")
    return ""


def _text(entry: dict[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {name} is required (a non-empty string)")
    return value.strip()


def _optional_text(entry: dict[str, Any], name: str, where: str) -> str | None:
    return _text(entry, name, where) if entry.get(name) is not None else None


def _secret(entry: dict[str, Any], name: str, where: str, env: Mapping[str, str]) -> str:
    """``name`` itself, or the environment variable that ``name_env`` names."""
    env_name = entry.get(f"{name}_env")
    if env_name is None:
        return _text(entry, name, where)
    if name in entry:
        raise ValueError(f"{where}: give {name} or {name}_env, not both")
    if not isinstance(env_name, str) or not env_name.strip():
        raise ValueError(f"{where}: {name}_env must name an environment variable")
    if not env.get(env_name, "").strip():
        raise ValueError(f"{where}: {name}_env names {env_name}, which is not set (or empty)")
    return env[env_name].strip()


class _Group(BaseSettings):
    """One concern's settings, each read from ``LIVESNAP_<FIELD>`` when not given."""

    # hide_input_in_errors: a rejected value may be a secret (inline storage config, keys)
    model_config = SettingsConfigDict(env_prefix="LIVESNAP_", extra="ignore",
                                      hide_input_in_errors=True)


class ServerSettings(_Group):
    """The node itself: where it listens and keeps its data, who may call it and how much,
    which networks it may reach, how it logs and how long it takes to stop.

    ``data_dir`` and ``database_url`` are here, not in a group of their own: the node keeps its
    keys, database and local files there, whatever its engine or storage.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("./livesnap-data")
    database_url: SecretStr | None = None  # may carry a password
    access_keys: SecretStr | None = None
    host_id: str = "livesnap"
    # stream and callback URLs may not point into these (checked at Submit and at connect time)
    blocked_networks: str = ",".join(DEFAULT_BLOCKED_NETWORKS)
    max_jobs_per_account: int = Field(default=100, ge=1)
    max_jobs_per_node: int = Field(default=500, ge=1)
    max_kept_jobs_per_account: int = Field(default=1000, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    log_json: bool = False
    log_level: str = "INFO"
    # API protection (docs/api.md#limits-and-throttling)
    rate_limit_rps: float = Field(default=50.0, ge=0)  # per access key; 0 turns the quota off
    rate_limit_burst: int = Field(default=100, ge=1)
    max_request_bytes: int = Field(default=1024 * 1024, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)  # request line + headers
    body_timeout_s: float = Field(default=30.0, gt=0)
    # idle time between requests on a connection: longer than clients' polling intervals
    keep_alive_s: int = Field(default=75, ge=1)
    # HTTPS on the API port: a PEM certificate (full chain) and its unencrypted PEM key, both
    # or neither (docs/configuration.md#https)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # publish hooks: the token origins send to /hooks/streams (docs/capture.md); unset = off
    hook_token: SecretStr | None = None
    # the asyncio event loop: uvloop where installed (auto), or the standard library's
    event_loop: EventLoopChoice = "auto"

    @field_validator("blocked_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value.split(","))
        return value

    @field_validator("hook_token")
    @classmethod
    def _hook_token_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_HOOK_TOKEN:
            raise ValueError(f"must be at least {MIN_HOOK_TOKEN} characters (it is all that "
                             "guards /hooks/streams)")
        return value

    @field_validator("event_loop")
    @classmethod
    def _event_loop_installed(cls, value: EventLoopChoice) -> EventLoopChoice:
        if value == "uvloop" and not uvloop_available():
            raise ValueError("uvloop is not installed (pip install uvloop); use auto or asyncio")
        return value

    @field_validator("tls_cert", "tls_key", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            given, missing = ("cert", "key") if self.tls_key is None else ("key", "cert")
            raise ValueError(f"HTTPS needs a certificate and its key: tls_{given} is given but "
                             f"not tls_{missing} (--tls-{missing}, LIVESNAP_TLS_{missing.upper()})")
        return self

    @property
    def scheme(self) -> Literal["http", "https"]:
        """``https`` when the API port speaks TLS."""
        return "https" if self.tls_cert is not None else "http"

    def networks(self) -> tuple[Network, ...]:
        return parse_networks(self.blocked_networks.split(","))

    def resolved_database_url(self) -> str:
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'livesnap.db').resolve()}"


class StorageSettings(_Group):
    """Where snapshots go: object-storage credentials, the local-disk fallback, the outage
    spool (docs/storage.md)."""

    storage_config: SecretStr | None = None  # a file path, or the JSON itself (may hold secrets)
    storage_fallback: bool = True  # unconfigured OSS/S3 targets go to local disk
    storage_retry_max_s: float = Field(default=5.0, gt=0)
    storage_connect_timeout_s: float = Field(default=5.0, gt=0)  # per request to a store
    storage_request_timeout_s: float = Field(default=30.0, gt=0)
    spool_max_mb: int = Field(default=1024, ge=1)
    spool_max_age_s: float = Field(default=86400.0, gt=0)

    @field_validator("storage_config")
    @classmethod
    def _storage_config_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            load_storage_config(value.get_secret_value())  # fail fast at start
        return value

    def storage_credentials(self) -> list[StorageCredential]:
        """The configured object-storage credentials (none: every target falls back)."""
        if self.storage_config is None:
            return []
        return load_storage_config(self.storage_config.get_secret_value())


class CaptureSettings(_Group):
    """How streams are read and pictures made, and where that runs (``engine``: in this
    process, in capture processes, or on a cluster's shards)."""

    capture: bool = True  # false: the API without capture
    # where capture runs: local = in this process; process = in one child process on this
    # machine (docs/configuration.md); ray = on the cluster's capture shards (docs/cluster.md)
    engine: Literal["local", "process", "ray"] = "local"
    # process: how many capture processes (0 = one per CPU core); not 1 with local: process
    capture_processes: int = Field(default=1, ge=0, le=256)
    # process: the serving process's threads run this much nicer than the capture process
    api_nice: int = Field(default=5, ge=0, le=19)
    jpeg_quality: int = Field(default=85, ge=1, le=100)
    skip_loop_filter: bool = False  # faster keyframe decode, lossy (docs/performance.md)
    share_streams: bool = True  # jobs on the same stream URL share one connection (capture.md)
    rw_timeout_s: float = Field(default=5.0, gt=0)
    # how RTSP media travels: tcp (interleaved, through NAT) or udp (docs/capture.md)
    rtsp_transport: Literal["tcp", "udp"] = "tcp"
    # rtmps:// and https:// sources: verify their certificates, against this PEM bundle of
    # certificate authorities (unset: the system's) (docs/capture.md#tls-sources)
    source_tls_verify: bool = True
    source_ca_file: Path | None = None
    probe_timeout_s: float = Field(default=10.0, gt=0)
    outage_window_s: float = Field(default=1800.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # jobs in ConnectMode auto connect per tick from this TimeInterval on (docs/capture.md)
    per_tick_min_interval_s: float = Field(default=DEFAULT_PER_TICK_MIN_INTERVAL_S, gt=0)

    @field_validator("source_ca_file", mode="before")
    @classmethod
    def _source_ca_readable(cls, value: object) -> object:
        if value in (None, ""):
            return None
        path = Path(str(value))
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError(f"{path} holds no PEM certificate")
        return path

    @model_validator(mode="after")
    def _several_capture_processes(self) -> CaptureSettings:
        """Asking for several capture processes (or one per core) means the process engine."""
        if self.engine == "local" and self.capture_processes != 1:
            self.engine = "process"
        return self

    @property
    def capture_process_count(self) -> int:
        """How many capture processes ``capture_processes`` asks for (0: one per core)."""
        return self.capture_processes or usable_cores()


class CallbackSettings(_Group):
    """Job event callbacks: their signing keys, timeouts, retries and concurrency
    (docs/callbacks.md)."""

    callback_keys: SecretStr | None = None  # account:key,…; other accounts get a generated key
    callback_connect_timeout_s: float = Field(default=2.0, gt=0)
    callback_read_timeout_s: float = Field(default=5.0, gt=0)
    callback_backoff_base_s: float = Field(default=1.0, gt=0)
    callback_backoff_max_s: float = Field(default=300.0, gt=0)
    callback_max_age_s: float = Field(default=86_400.0, gt=0)
    # delivered and given-up events (and their attempts) are deleted after this; 0 keeps them
    callback_retention_days: float = Field(default=7.0, ge=0)
    callback_concurrency: int = Field(default=16, ge=1, le=1024)
    # per account and per receiver host (0: half of callback_concurrency)
    callback_per_account: int = Field(default=0, ge=0, le=1024)
    callback_per_host: int = Field(default=0, ge=0, le=1024)

    @field_validator("callback_keys")
    @classmethod
    def _callback_keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_callback_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _callback_backoff_order(self) -> CallbackSettings:
        if self.callback_backoff_max_s < self.callback_backoff_base_s:
            raise ValueError("callback_backoff_max_s must be at least callback_backoff_base_s")
        return self

    def configured_callback_keys(self) -> dict[str, str]:
        """Account → callback key from ``LIVESNAP_CALLBACK_KEYS`` (empty if unset)."""
        if self.callback_keys is None:
            return {}
        return parse_callback_keys(self.callback_keys.get_secret_value())


class ClusterSettings(_Group):
    """The capture shards: the Ray cluster they run on (docs/cluster.md), and how often a
    shard, or a capture process of the process engine, is reconciled and waited for."""

    ray_address: str = ""  # "" = the Ray node on this host ("auto")
    # the --temp-dir of the local Ray node to attach to, on a machine that runs several nodes
    # of one cluster (a staging cluster); "" = Ray's choice, the head's node when it is here
    ray_temp_dir: str = ""
    ray_namespace: str = "livesnap"
    shards: int = Field(default=4, ge=1, le=1024)  # shard-0 … shard-{N-1}
    shard_resource: str = ""  # a custom Ray resource each shard needs one unit of
    shard_reconcile_s: float = Field(default=5.0, gt=0)
    shard_call_timeout_s: float = Field(default=15.0, gt=0)
    # how often an API node checks that the shards sit fairly on the live nodes, and moves
    # some when two checks in a row say they do not (0: never; `livesnap cluster rebalance`)
    rebalance_s: float = Field(default=60.0, ge=0)


class Settings(BaseModel):
    """Every setting, grouped by concern; each keeps its ``LIVESNAP_<FIELD>`` environment name
    (docs/configuration.md).

    Built from flat keywords, as the command line has them (``Settings(data_dir=…,
    engine="ray")``): each goes to the group that declares it, and each group reads the
    environment for the rest. A keyword no group declares is an error (a typo would otherwise
    be a setting silently not made).
    """

    server: ServerSettings
    storage: StorageSettings
    capture: CaptureSettings
    callbacks: CallbackSettings
    cluster: ClusterSettings

    def __init__(self, **values: Any) -> None:
        groups = self.groups()
        unknown = sorted(set(values).difference(*(g.model_fields for g in groups.values())))
        if unknown:
            raise TypeError(f"Settings got unknown setting(s): {', '.join(unknown)}")
        super().__init__(**{
            name: group(**{k: v for k, v in values.items() if k in group.model_fields})
            for name, group in groups.items()
        })

    @classmethod
    def groups(cls) -> dict[str, type[BaseSettings]]:
        """Attribute → group class: ``server`` → :class:`ServerSettings`, …"""
        return {name: cast(type[BaseSettings], field.annotation)
                for name, field in cls.model_fields.items()}

    @model_validator(mode="after")
    def _no_scattered_fallback_in_a_cluster(self) -> Settings:
        """A cluster's shards run on any machine: unconfigured OSS/S3 targets would land on
        the local disk of whichever one runs the job, so the fallback is off unless asked for
        (one-host staging, where every node shares the data directory), by keyword or by
        ``LIVESNAP_STORAGE_FALLBACK``."""
        if self.capture.engine == "ray" and "storage_fallback" not in self.storage.model_fields_set:
            self.storage.storage_fallback = False
        return self
