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
# Timestamps and counts are stored as 64-bit integers: a value outside names nothing stored.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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
    WAITING = "waiting"  # not started yet, or paused: probed again until it is live


class TemplateType(StrEnum):
    SYSTEM = "system"
    CUSTOM = "custom"


class StorageType(StrEnum):
    OSS = "oss"
    S3 = "s3"
    LOCAL = "local"


class ImageFormat(StrEnum):
    """Output picture format (livesnap extension; ICE has only JPEG)."""

    JPG = "jpg"
    WEBP = "webp"
    PNG = "png"


class ConnectMode(StrEnum):
    """How a job's capture holds its stream (a livesnap extension; see ``jobs.connect``).

    ``persistent`` keeps one connection open and reads every byte; ``per-tick`` connects
    shortly before each tick, takes one keyframe and disconnects; ``auto`` picks per tick
    when the interval is long enough for that to be cheaper.
    """

    AUTO = "auto"
    PERSISTENT = "persistent"
    PER_TICK = "per-tick"


class Verdict(StrEnum):
    """What the frame-quality gate said of a captured picture (livesnap extension)."""

    OK = "ok"  # passed the gate
    UNCHECKED = "unchecked"  # the job's gate is off
    BLACK = "black"
    UNIFORM = "uniform"  # one flat colour ("no signal" screens)
    FROZEN = "frozen"  # the same picture as the previous capture
    DECODE_ERROR = "decode_error"


class EventType(StrEnum):
    CAPTURED = "LiveSnapshotCaptured"
    STATUS_CHANGED = "LiveSnapshotJobStatusChanged"


class _Evolve:
    def evolve(self, **changes: Any) -> Self:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class ImageOptions(_Evolve):
    """How captures are rendered (livesnap extensions; the defaults are ICE's behaviour).

    ``quality`` None means the node's ``LIVESNAP_JPEG_QUALITY``. ``width``/``height`` 0 mean
    the source size; see ``jobs.imaging.output_size`` for how a box is applied.
    """

    format: ImageFormat = ImageFormat.JPG
    quality: int | None = None
    width: int = 0
    height: int = 0
    quality_gate: bool = False
    latest_pointer: bool = False


@dataclass(frozen=True, kw_only=True)
class ImageChanges:
    """Image options a Create/Update request gives: None keeps the current (or default) value,
    so a client that knows only ICE's fields (the official SDK) never resets them."""

    format: ImageFormat | None = None
    quality: int | None = None
    width: int | None = None
    height: int | None = None
    quality_gate: bool | None = None
    latest_pointer: bool | None = None

    def apply(self, base: ImageOptions) -> ImageOptions:
        changed = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return base.evolve(**changed)


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
    image: ImageOptions = ImageOptions()
    connect_mode: ConnectMode = ConnectMode.AUTO


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
    image: ImageOptions = ImageOptions()
    missed_ticks: int = 0  # ticks with no capture while started (restart, failover, outage)
    connect_mode: ConnectMode = ConnectMode.AUTO  # copied from the template, or given at submit


class ErrorKind(StrEnum):
    """What a job's ``LastError`` is about. The value is the text's prefix: ICE's
    ``LastError`` is one string, so the kind travels in it (the stream's own words have none).
    """

    STREAM = ""  # its stream, its connection or its start (probe, limits, shard)
    STORAGE = "storage: "  # a capture not stored yet, lost, or recorded late
    QUALITY = "quality: "  # a tick whose keyframes all failed the quality gate


@dataclass(frozen=True)
class LastError:
    """A job's ``LastError``: ``message`` about ``kind``; an empty message clears it.

    Every writer says the kind (``LastError.stream(...)``, ``.storage``, ``.quality``);
    ``LastError.of(text)`` reads a stored one back.
    """

    kind: ErrorKind
    message: str

    @property
    def text(self) -> str:
        """What ``LastError`` shows: the kind's prefix and the message, or "" when cleared."""
        return self.kind.value + self.message if self.message else ""

    @classmethod
    def stream(cls, message: str) -> LastError:
        return cls(ErrorKind.STREAM, message)

    @classmethod
    def storage(cls, message: str) -> LastError:
        return cls(ErrorKind.STORAGE, message)

    @classmethod
    def quality(cls, message: str) -> LastError:
        return cls(ErrorKind.QUALITY, message)

    @classmethod
    def of(cls, text: str) -> LastError:
        """The error a stored ``LastError`` text holds."""
        for kind in (ErrorKind.STORAGE, ErrorKind.QUALITY):
            if text.startswith(kind.value):
                return cls(kind, text[len(kind.value):])
        return cls(ErrorKind.STREAM, text)


@dataclass(frozen=True, kw_only=True)
class JobPatch:
    """Fields a state change sets; ``None`` leaves a field as it is, ``""`` clears a text
    (a ``LastError`` with no message clears ``LastError``)."""

    status: JobStatus | None = None
    stream_status: StreamStatus | None = None
    status_reason: str | None = None
    last_error: LastError | None = None
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
    quality: Verdict | None = None  # None: recorded before the gate existed
    skipped_frames: int = 0  # keyframes the gate rejected in this tick before this one


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
    image: ImageChanges = ImageChanges()
    connect_mode: ConnectMode | None = None  # None keeps the current value (auto when new)


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """What a caller gives to submit a job."""

    name: str
    template_id: str
    stream_url: str
    stream_type: str
    storage: StorageTarget
    callback_url: str | None
    connect_mode: ConnectMode | None = None  # None: the template's


@dataclass(frozen=True, kw_only=True)
class DeleteResult:
    create_ms: int
    result: str  # "OK" or the reason it failed


def kept_jobs_message(limit: int) -> str:
    """``JobLimitExceeded``'s message when an account keeps its most jobs."""
    return (f"Job limit exceeded: at most {limit} jobs per account, started or not; delete "
            "jobs you no longer need (DeleteLiveSnapshotJob).")


def started_jobs_message(limit: int) -> str:
    """``JobLimitExceeded``'s message when an account runs its most started jobs."""
    return f"Job limit exceeded: at most {limit} started jobs per account."
