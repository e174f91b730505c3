"""Callback events as domain data (pure). ``livesnap.callbacks`` renders and signs them."""

from __future__ import annotations

from typing import Any

from livesnap.jobs.models import EventType, Job, OutboxEvent, SnapshotFile


def captured_event(event_id: str, job: Job, file: SnapshotFile, *, now_ms: int) -> OutboxEvent:
    """The ``LiveSnapshotCaptured`` event for one stored snapshot."""
    data: dict[str, Any] = {
        "job_id": job.id,
        "job_name": job.name,
        "endpoint": file.endpoint,
        "bucket": file.bucket,
        "object_key": file.object_key,
        "overwrite_key": file.overwrite_key,
        "is_overlay": file.is_overlay,
        "create_ms": file.create_ms,
        "sequence": file.sequence,
        "width": file.width,
        "height": file.height,
        "size": file.size,
        "stream_time_ms": file.stream_time_ms,
        "lag_ms": file.lag_ms,
        "quality": None if file.quality is None else file.quality.value,
        "skipped_frames": file.skipped_frames,
    }
    return _event(event_id, job, EventType.CAPTURED, data, now_ms)


def status_event(
    event_id: str, before: Job, after: Job, *, reason: str, now_ms: int
) -> OutboxEvent:
    """The ``LiveSnapshotJobStatusChanged`` event for a job or stream status change."""
    data: dict[str, Any] = {
        "job_id": after.id,
        "job_name": after.name,
        "old_status": before.status.value,
        "new_status": after.status.value,
        "old_stream_status": before.stream_status.value,
        "new_stream_status": after.stream_status.value,
        "reason": reason,
        "changed_ms": now_ms,
    }
    return _event(event_id, after, EventType.STATUS_CHANGED, data, now_ms)


def _event(
    event_id: str, job: Job, kind: EventType, data: dict[str, Any], now_ms: int
) -> OutboxEvent:
    return OutboxEvent(
        id=event_id,
        job_id=job.id,
        account=job.account,
        url=job.callback_url or "",
        type=kind,
        data=data,
        created_ms=now_ms,
        next_attempt_ms=now_ms,
    )
