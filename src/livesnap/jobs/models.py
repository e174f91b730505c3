"""Domain objects: templates, jobs, snapshot files and callback events.

Frozen, keyword-only value objects. Times are epoch milliseconds (``*_ms``) so that the
same value can be a file's creation time, its ``{UnixTimestamp}`` and a database key.
Wire names (PascalCase) never appear here; ``livesnap.api`` maps them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Self, TypeVar

SYSTEM_TEMPLATE_ID = "system"


class JobStatus(StrEnum):
    """What the user asked for (ICE's external values)."""

    INIT = "init"
    STARTED = "started"
    PAUSED = "paused"


class StreamStatus(StrEnum):
    """What the capture engine sees of the input stream (a livesnap extension)."""

    OFFLINE = "offline"
    CONNECTING = "connecting"
    LIVE = "live"
    RECONNECTING = "reconnecting"


class TemplateType(StrEnum):
    SYSTEM = "system"
    CUSTOM = "custom"


class StorageType(StrEnum):
    OSS = "oss"
    S3 = "s3"
    LOCAL = "local"


class EventType(StrEnum):
    CAPTURED = "LiveSnapshotCaptured"
    STATUS_CHANGED = "LiveSnapshotJobStatusChanged"


class _Evolve:
    def evolve(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class Template(_Evolve):
    id: str
    account: str | None  # None for the system template, visible to every account
    name: str
    type: TemplateType
    interval_s: int
    overwrite_format: str | None
    sequence_format: str | None
    created_ms: int
    modified_ms: int


@dataclass(frozen=True, kw_only=True)
class StorageTarget:
    storage_type: StorageType
    endpoint: str
    bucket: str


@dataclass(frozen=True, kw_only=True)
class Job(_Evolve):
    """A snapshot job. It copies the template's interval and formats at submit."""

    id: str
    account: str
    name: str
    template_id: str
    template_name: str
    interval_s: int
    overwrite_format: str | None
    sequence_format: str | None
    stream_url: str
    stream_type: str
    storage: StorageTarget
    callback_url: str | None
    status: JobStatus
    created_ms: int
    modified_ms: int
    stream_status: StreamStatus = StreamStatus.OFFLINE
    status_reason: str = ""
    last_error: str = ""
    last_snapshot_ms: int | None = None
    snapshot_count: int = 0
    last_sequence: int = 0
    effective_interval_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class JobPatch:
    """Fields a state change sets; ``None`` leaves a field as it is, ``""`` clears a text."""

    status: JobStatus | None = None
    stream_status: StreamStatus | None = None
    status_reason: str | None = None
    last_error: str | None = None
    effective_interval_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class SnapshotFile:
    """One capture's file record (the sequence object, else the overwrite object)."""

    job_id: str
    account: str
    create_ms: int
    endpoint: str
    bucket: str
    object_key: str
    is_overlay: bool
    overwrite_key: str | None = None
    sequence: int | None = None
    width: int = 0
    height: int = 0
    size: int = 0
    stream_time_ms: int | None = None
    lag_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class OutboxEvent:
    """A callback event waiting to be delivered (written with the change it reports)."""

    id: str
    job_id: str
    account: str
    url: str
    type: EventType
    data: dict[str, Any]
    created_ms: int
    attempts: int = 0
    next_attempt_ms: int = 0
    delivered_ms: int | None = None
    failed: bool = False
    last_error: str = ""


@dataclass(frozen=True, kw_only=True)
class DeliveryAttempt:
    event_id: str
    job_id: str
    at_ms: int
    status_code: int | None
    latency_ms: int
    error: str


@dataclass(frozen=True, kw_only=True)
class TemplateQuery:
    page_no: int = 1
    page_size: int = 10
    descending: bool = True
    keyword: str | None = None
    ids: Sequence[str] = ()
    type: TemplateType | None = None


@dataclass(frozen=True, kw_only=True)
class JobQuery:
    start_ms: int
    end_ms: int
    page_no: int = 1
    page_size: int = 10
    descending: bool = True
    keyword: str | None = None
    status: JobStatus | None = None


@dataclass(frozen=True, kw_only=True)
class FileQuery:
    """Files of one job with ``start_ms <= create_ms <= end_ms``, at most ``limit``."""

    job_id: str
    start_ms: int
    end_ms: int
    limit: int = 10
    descending: bool = False


T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    items: list[T] = field(default_factory=list)
    total: int = 0


@dataclass(frozen=True, kw_only=True)
class TemplateSpec:
    """What a caller gives to create or replace a template (validated by the manager)."""

    name: str
    interval_s: int
    overwrite_format: str | None
    sequence_format: str | None


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a caller gives to submit a job."""

    name: str
    template_id: str
    stream_url: str
    stream_type: str
    storage: StorageTarget
    callback_url: str | None


@dataclass(frozen=True, kw_only=True)
class DeleteResult:
    create_ms: int
    result: str  # "OK" or the reason it failed
