"""Row ↔ domain mapping: the only place that knows both column names and model fields.

``*_values`` turn a domain object into the column values to insert; ``*_from_row`` turn a
result row (any mapping of column name to value) back into a domain object.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from enum import Enum
from typing import Any

from livesnap.jobs.models import (
    ConnectMode,
    DeliveryAttempt,
    EventType,
    ImageFormat,
    ImageOptions,
    Job,
    JobPatch,
    JobStatus,
    LastError,
    OutboxEvent,
    SnapshotFile,
    StorageTarget,
    StorageType,
    StreamStatus,
    Template,
    TemplateType,
    Verdict,
)

Row = Mapping[Any, Any]  # a SQLAlchemy RowMapping, or any dict of column values
_DEFAULT_IMAGE = ImageOptions()


def image_text(image: ImageOptions) -> str | None:
    """The ``image`` column: NULL for the defaults (ICE's behaviour), else JSON."""
    if image == _DEFAULT_IMAGE:
        return None
    values = dataclasses.asdict(image)
    values["format"] = image.format.value
    return encode_data(values)


def image_from_text(text: str | None) -> ImageOptions:
    if text is None:
        return _DEFAULT_IMAGE
    values = decode_data(text)
    known = {f.name for f in dataclasses.fields(ImageOptions)}
    options = {k: v for k, v in values.items() if k in known}
    if "format" in options:
        options["format"] = ImageFormat(options["format"])
    return ImageOptions(**options)


def mode_text(mode: ConnectMode) -> str | None:
    """The ``connect_mode`` column: NULL for ``auto`` (rows written before it existed too)."""
    return None if mode is ConnectMode.AUTO else mode.value


def mode_from_text(text: str | None) -> ConnectMode:
    return ConnectMode.AUTO if text is None else ConnectMode(text)


def template_values(template: Template) -> dict[str, Any]:
    return {
        "id": template.id,
        "account": template.account,
        "name": template.name,
        "type": template.type.value,
        "interval_s": template.interval_s,
        "overwrite_format": template.overwrite_format,
        "sequence_format": template.sequence_format,
        "created_ms": template.created_ms,
        "modified_ms": template.modified_ms,
        "image": image_text(template.image),
        "connect_mode": mode_text(template.connect_mode),
    }


def template_from_row(row: Row) -> Template:
    return Template(
        id=row["id"],
        account=row["account"],
        name=row["name"],
        type=TemplateType(row["type"]),
        interval_s=row["interval_s"],
        overwrite_format=row["overwrite_format"],
        sequence_format=row["sequence_format"],
        created_ms=row["created_ms"],
        modified_ms=row["modified_ms"],
        image=image_from_text(row["image"]),
        connect_mode=mode_from_text(row["connect_mode"]),
    )


_JOB_PLAIN = (
    "id", "account", "name", "template_id", "template_name", "interval_s",
    "overwrite_format", "sequence_format", "stream_url", "stream_type", "callback_url",
    "created_ms", "modified_ms", "status_reason", "last_error", "last_snapshot_ms",
    "snapshot_count", "last_sequence", "effective_interval_ms", "missed_ticks",
)  # fmt: skip


def job_values(job: Job) -> dict[str, Any]:
    values = {name: getattr(job, name) for name in _JOB_PLAIN}
    values.update(
        status=job.status.value,
        stream_status=job.stream_status.value,
        storage_type=job.storage.storage_type.value,
        storage_endpoint=job.storage.endpoint,
        storage_bucket=job.storage.bucket,
        image=image_text(job.image),
        connect_mode=mode_text(job.connect_mode),
    )
    return values


def job_from_row(row: Row) -> Job:
    storage = StorageTarget(
        storage_type=StorageType(row["storage_type"]),
        endpoint=row["storage_endpoint"],
        bucket=row["storage_bucket"],
    )
    return Job(
        **{name: row[name] for name in _JOB_PLAIN},
        storage=storage,
        status=JobStatus(row["status"]),
        stream_status=StreamStatus(row["stream_status"]),
        image=image_from_text(row["image"]),
        connect_mode=mode_from_text(row["connect_mode"]),
    )


_FILE_FIELDS = (
    "job_id", "account", "create_ms", "endpoint", "bucket", "object_key", "is_overlay",
    "overwrite_key", "sequence", "width", "height", "size", "stream_time_ms", "lag_ms",
    "skipped_frames",
)  # fmt: skip


def file_values(file: SnapshotFile) -> dict[str, Any]:
    values = {name: getattr(file, name) for name in _FILE_FIELDS}
    values["quality"] = None if file.quality is None else file.quality.value
    return values


def file_from_row(row: Row) -> SnapshotFile:
    values = {name: row[name] for name in _FILE_FIELDS}
    values["is_overlay"] = bool(values["is_overlay"])
    quality = row["quality"]
    return SnapshotFile(**values, quality=None if quality is None else Verdict(quality))


def encode_data(data: Mapping[str, Any]) -> str:
    """An event's payload as JSON text (raises TypeError/ValueError if it is not JSON)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def decode_data(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("an event's data must be a JSON object")
    return data


def event_values(event: OutboxEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "job_id": event.job_id,
        "account": event.account,
        "url": event.url,
        "type": event.type.value,
        "data": encode_data(event.data),
        "created_ms": event.created_ms,
        "attempts": event.attempts,
        "next_attempt_ms": event.next_attempt_ms,
        "delivered_ms": event.delivered_ms,
        "failed": event.failed,
        "last_error": event.last_error,
    }


def event_from_row(row: Row) -> OutboxEvent:
    return OutboxEvent(
        id=row["id"],
        job_id=row["job_id"],
        account=row["account"],
        url=row["url"],
        type=EventType(row["type"]),
        data=decode_data(row["data"]),
        created_ms=row["created_ms"],
        attempts=row["attempts"],
        next_attempt_ms=row["next_attempt_ms"],
        delivered_ms=row["delivered_ms"],
        failed=bool(row["failed"]),
        last_error=row["last_error"],
    )


def attempt_values(attempt: DeliveryAttempt) -> dict[str, Any]:
    return {
        "event_id": attempt.event_id,
        "job_id": attempt.job_id,
        "at_ms": attempt.at_ms,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
    }


def attempt_from_row(row: Row) -> DeliveryAttempt:
    return DeliveryAttempt(
        event_id=row["event_id"],
        job_id=row["job_id"],
        at_ms=row["at_ms"],
        status_code=row["status_code"],
        latency_ms=row["latency_ms"],
        error=row["error"],
    )


def patch_values(patch: JobPatch) -> dict[str, Any]:
    """The columns a patch sets: every field that is not None (``""`` is a value)."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(patch):
        value = getattr(patch, item.name)
        if isinstance(value, LastError):
            values[item.name] = value.text
        elif value is not None:
            values[item.name] = value.value if isinstance(value, Enum) else value
    return values
