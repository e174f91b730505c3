"""OSS and S3 buckets through obstore (``S3Store``, AWS Signature Version 4).

``oss``: OSS's S3-compatible API, virtual-hosted style: ``https://{Bucket}.{Endpoint}/{key}``.
The SigV4 credential scope uses the OSS *region ID* (``cn-shanghai`` for
``oss-cn-shanghai.aliyuncs.com``), as Alibaba's guide to AWS SDKs does; a ``region`` in the
storage config overrides it. Payloads are signed (``x-amz-content-sha256`` is the body's
SHA-256), never ``aws-chunked``, which OSS does not accept.

``s3``: any S3 endpoint. ``Endpoint`` is a host, ``host:port`` or URL (``https://`` unless given);
path-style by default except on ``*.amazonaws.com``; the region comes from the config, an AWS
host name, or ``us-east-1``.

obstore reads ``AWS_*`` environment variables in every constructor; credentials are therefore
given through a credential provider (so ``AWS_SESSION_TOKEN`` and friends never mix in) and the
endpoint, region and addressing are always set explicitly. obstore errors leave this module
only as ``OutputError`` (refused: not retryable) or ``OutputUnavailable`` (retryable).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from livesnap.config import StorageCredential
from livesnap.errors import OutputError, OutputUnavailable, VersionConflict
from livesnap.outputs.base import ObjectMeta

if TYPE_CHECKING:
    from obstore import Attributes, PutMode
    from obstore.store import ClientConfig, RetryConfig, S3Credential

DEFAULT_REGION = "us-east-1"
_OSS_HOST = re.compile(r"(?:^|\.)oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")
_AWS_HOST = re.compile(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.amazonaws\.com$")
_S3_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")
_HTTP_STATUS = re.compile(r"status code: (\d{3})")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+)")
_OS_MESSAGE = re.compile(r'message: "([^"]{1,80})"')


@dataclass(frozen=True, kw_only=True)
class S3Address:
    """How obstore reaches one bucket (derived from the target and its config entry)."""

    url: str  # virtual-hosted: the bucket's own base URL; path-style: the service URL
    bucket: str
    region: str
    virtual_hosted: bool

    @property
    def allow_http(self) -> bool:
        return self.url.startswith("http://")


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Per-request limits. obstore's own retries stay short: the spool retries for longer."""

    connect_s: float = 5.0
    request_s: float = 30.0
    retries: int = 2
    retry_window_s: float = 10.0


def oss_region(endpoint: str) -> str | None:
    """``oss-cn-shanghai.aliyuncs.com`` (also ``-internal``, ``s3.`` forms) → ``cn-shanghai``."""
    host = (urlsplit("//" + endpoint).hostname or "").lower()
    match = _OSS_HOST.search(host)
    return match.group(1) if match else None


def aws_region(host: str) -> str | None:
    """``s3.eu-west-1.amazonaws.com`` → ``eu-west-1``."""
    match = _AWS_HOST.search(host.lower())
    return match.group(1) if match else None


def address_for(cred: StorageCredential, endpoint: str, bucket: str) -> S3Address:
    """Where requests for ``bucket`` at ``endpoint`` go, per the target's storage type."""
    if cred.storage_type == "oss":
        return S3Address(
            url=(cred.endpoint_url or f"https://{bucket}.{endpoint}").rstrip("/"),
            bucket=bucket,
            region=cred.region or oss_region(endpoint) or DEFAULT_REGION,
            virtual_hosted=True,
        )
    base = (cred.endpoint_url or (endpoint if "://" in endpoint else f"https://{endpoint}"))
    parts = urlsplit(base.rstrip("/"))
    host = parts.hostname or ""
    path_style = cred.path_style if cred.path_style is not None else not host.endswith(
        "amazonaws.com")
    url = parts.geturl() if path_style else f"{parts.scheme}://{bucket}.{parts.netloc}"
    return S3Address(
        url=url,
        bucket=bucket,
        region=cred.region or aws_region(host) or DEFAULT_REGION,
        virtual_hosted=not path_style,
    )


def open_store(
    address: S3Address,
    cred: StorageCredential,
    *,
    timeouts: Timeouts,
    client_options: ClientConfig | None = None,
) -> S3Store:
    """An ``S3Store`` for ``address`` that ignores ambient ``AWS_*`` credentials and endpoints.

    ``client_options`` are merged over livesnap's (tests route requests through a recorder).
    """
    secret: S3Credential = {
        "access_key_id": cred.access_key_id,
        "secret_access_key": cred.access_key_secret,
        "token": None,
        "expires_at": None,
    }

    def credentials() -> S3Credential:
        return secret

    options: ClientConfig = {
        "allow_http": address.allow_http,
        "connect_timeout": timedelta(seconds=timeouts.connect_s),
        "timeout": timedelta(seconds=timeouts.request_s),
    }
    retry: RetryConfig = {
        "max_retries": timeouts.retries,
        "retry_timeout": timedelta(seconds=timeouts.retry_window_s),
    }
    return S3Store(
        address.bucket,
        endpoint=address.url,
        aws_endpoint_url_s3=address.url,  # the environment's AWS_ENDPOINT_URL_S3 would win
        region=address.region,
        virtual_hosted_style_request=address.virtual_hosted,
        skip_signature=False,
        unsigned_payload=False,
        request_payer=False,
        credential_provider=credentials,
        client_options={**options, **(client_options or {})},
        retry_config=retry,
    )


class ObjectStoreSink:
    """A ``SnapshotSink`` writing to one bucket through obstore."""

    def __init__(self, store: S3Store, *, label: str) -> None:
        self.store = store
        self.label = label

    @classmethod
    def for_target(
        cls,
        cred: StorageCredential,
        endpoint: str,
        bucket: str,
        *,
        timeouts: Timeouts | None = None,
        client_options: ClientConfig | None = None,
    ) -> ObjectStoreSink:
        """The sink for ``bucket`` at ``endpoint`` with the matching config entry ``cred``."""
        address = address_for(cred, endpoint, bucket)
        store = open_store(address, cred, timeouts=timeouts or Timeouts(),
                           client_options=client_options)
        style = "virtual-hosted" if address.virtual_hosted else "path-style"
        label = f"{cred.storage_type} bucket {bucket} at {address.url} ({style}, {address.region})"
        return cls(store, label=label)

    def __repr__(self) -> str:
        return f"ObjectStoreSink({self.label})"

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        """One PUT (never multipart: snapshots are small) with type, caching and metadata."""
        try:
            await obstore.put_async(self.store, key, data, attributes=_attributes(meta),
                                    use_multipart=False)
        except Exception as exc:  # obstore raises its own tree and some builtins
            raise translate(exc, self.label, f"store {key}") from exc

    async def version(self, key: str) -> str | None:
        """The object's ETag (a HEAD request), None if there is none."""
        try:
            found = await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise translate(exc, self.label, f"look up {key}") from exc
        if not found["e_tag"]:
            raise OutputError(f"cannot write {key} conditionally: {self.label} gives objects no "
                              "ETag; set conditional_writes = false for it")
        return found["e_tag"]

    async def put_over(self, key: str, data: bytes, *, meta: ObjectMeta,
                       version: str | None) -> str:
        """One PUT with ``If-Match: version`` (``If-None-Match: *`` for None); the new ETag."""
        mode: PutMode = "create" if version is None else {"e_tag": version}
        try:
            result = await obstore.put_async(self.store, key, data, attributes=_attributes(meta),
                                             use_multipart=False, mode=mode)
        except (PreconditionError, AlreadyExistsError) as exc:
            raise VersionConflict(f"{key} changed at {self.label} since it was last "
                                  "seen") from exc
        except Exception as exc:
            raise translate(exc, self.label, f"store {key}") from exc
        return result["e_tag"] or ""

    async def delete(self, key: str) -> None:
        try:
            await obstore.delete_async(self.store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise translate(exc, self.label, f"delete {key}") from exc

    async def read(self, key: str) -> tuple[bytes, dict[str, str]]:
        """An object's bytes and attributes (``Content-Type``, ``Cache-Control``, metadata)."""
        try:
            result = await obstore.get_async(self.store, key)
            data = bytes(await result.bytes_async())
        except Exception as exc:
            raise translate(exc, self.label, f"read {key}") from exc
        return data, {str(k): str(v) for k, v in result.attributes.items()}


def _attributes(meta: ObjectMeta) -> Attributes:
    attributes: Attributes = {"Content-Type": meta.content_type}
    if meta.cache_control:
        attributes["Cache-Control"] = meta.cache_control
    for name, value in meta.metadata.items():
        attributes[name] = value  # any other attribute name becomes x-amz-meta-<name>
    return attributes


def translate(exc: BaseException, label: str, action: str) -> OutputError:
    """An obstore (or builtin) error as an ``OutputError`` saying what kind of failure it is."""
    text = str(exc)
    code = _S3_CODE.search(text)
    detail = f" ({code.group(1)})" if code else ""
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError):
        return OutputError(
            f"cannot {action}: {label} refused the credentials{detail}; check access_key_id "
            "and access_key_secret for this endpoint and bucket in LIVESNAP_STORAGE_CONFIG"
        )
    if isinstance(exc, FileNotFoundError):
        return OutputError(f"cannot {action}: not found at {label}{detail}")
    status = _HTTP_STATUS.search(text)
    if status is not None:
        number = int(status.group(1))
        if number >= 500 or number in (408, 429):
            return OutputUnavailable(
                f"cannot {action}: {label} is unavailable (HTTP {number}{detail})")
        return OutputError(f"cannot {action}: {label} refused it (HTTP {number}{detail})")
    if isinstance(exc, BaseError):
        reason = _network_reason(text)
        return OutputUnavailable(f"cannot {action}: {label} is unreachable ({reason})")
    first = text.splitlines()[0] if text else ""
    return OutputError(f"cannot {action} at {label}: {type(exc).__name__} {first}".rstrip())


def _network_reason(text: str) -> str:
    """A short reason from obstore's debug text: the OS message, or the HTTP error kind."""
    messages = _OS_MESSAGE.findall(text)
    if messages:
        return str(messages[-1]).lower()
    kind = _HTTP_KIND.search(text)
    if kind:
        return {"Connect": "connection failed", "Timeout": "timed out"}.get(
            kind.group(1), f"{kind.group(1).lower()} error")
    first = text.splitlines()[0] if text else "no answer"
    return first.rsplit(" - ", 1)[-1][:160]
