"""Syntax of storage targets (``SnapshotOutput``), checked at Submit.

``oss``: ``Endpoint`` is an OSS host name (``oss-cn-shanghai.aliyuncs.com``), ``Bucket`` an
OSS bucket name (3–63 characters: lower-case letters, digits, hyphens; starts and ends with a
letter or digit). ``s3`` (livesnap extension): ``Endpoint`` is a host name, ``host:port`` or an
``http(s)://`` URL; bucket names may also contain dots. ``local``: both are plain names.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from livesnap.errors import InvalidParameter
from livesnap.jobs.models import StorageTarget, StorageType

_OSS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _is_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in host.rstrip(".").split("."))


def _check_host_port(text: str) -> bool:
    try:
        parts = urlsplit("//" + text)
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        return False
    return port_ok and parts.path == "" and _is_host(parts.hostname or "")


def _check_s3_endpoint(endpoint: str) -> bool:
    if "://" not in endpoint:
        return _check_host_port(endpoint)
    try:
        parts = urlsplit(endpoint)
        port_ok = parts.port is None or 0 < parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and port_ok
        and parts.path in ("", "/")
        and not parts.query
        and _is_host(parts.hostname or "")
    )


def check_target(target: StorageTarget) -> None:
    """Raise ``InvalidParameter`` with a clear message unless the target is well-formed."""
    if target.storage_type is StorageType.OSS:
        if not _check_host_port(target.endpoint):
            raise InvalidParameter(
                "SnapshotOutput.Endpoint must be an OSS host name such as "
                "oss-cn-shanghai.aliyuncs.com."
            )
        if not _OSS_BUCKET.match(target.bucket):
            raise InvalidParameter(
                "SnapshotOutput.Bucket must be 3-63 characters of lower-case letters, digits "
                "and hyphens, starting and ending with a letter or digit."
            )
    elif target.storage_type is StorageType.S3:
        if not _check_s3_endpoint(target.endpoint):
            raise InvalidParameter(
                "SnapshotOutput.Endpoint must be a host name, host:port or http(s):// URL."
            )
        if not _S3_BUCKET.match(target.bucket) or ".." in target.bucket:
            raise InvalidParameter("SnapshotOutput.Bucket is not a valid S3 bucket name.")
    else:
        for name, value in (("Endpoint", target.endpoint), ("Bucket", target.bucket)):
            if not _LOCAL_NAME.match(value) or ".." in value:
                raise InvalidParameter(
                    f"SnapshotOutput.{name} must be a plain name (letters, digits, . _ : -)."
                )
