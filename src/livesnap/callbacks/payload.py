"""Callback bodies: an outbox event rendered as ICE-style JSON (pure).

Field names are PascalCase, as in ICE, and every field is always present (``null`` when
unknown), so receivers can rely on the shape. Rendering depends only on the stored event, so
every attempt sends the same bytes and receivers can dedupe on ``EventId``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from livesnap.clock import utc_from_ms
from livesnap.jobs.models import EventType, OutboxEvent

COMMON_FIELDS = ("EventId", "EventType", "EventTime", "JobId", "JobName")
CAPTURED_FIELDS = (
    *COMMON_FIELDS,
    "Endpoint",
    "Bucket",
    "ObjectKey",
    "OverwriteKey",
    "IsOverlay",
    "CreateTime",
    "CreateTimestamp",
    "Sequence",
    "Width",
    "Height",
    "Size",
    "StreamTimestamp",
    "CaptureLag",
    "Quality",
    "SkippedFrames",
)
STATUS_FIELDS = (
    *COMMON_FIELDS,
    "OldStatus",
    "NewStatus",
    "OldStreamStatus",
    "NewStreamStatus",
    "Reason",
)


def iso_utc(ms: int, *, millis: bool) -> str:
    """Epoch milliseconds as ISO 8601 UTC (``…T12:00:00Z`` or ``…T12:00:00.123Z``)."""
    text = utc_from_ms(ms).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if millis else f"{text}Z"


def _captured(data: Mapping[str, Any]) -> dict[str, Any]:
    create_ms = data.get("create_ms")
    return {
        "Endpoint": data.get("endpoint"),
        "Bucket": data.get("bucket"),
        "ObjectKey": data.get("object_key"),
        "OverwriteKey": data.get("overwrite_key"),
        "IsOverlay": data.get("is_overlay"),
        # the same form as ListLiveSnapshotFiles' CreateTime (seconds); the ms are below
        "CreateTime": iso_utc(create_ms, millis=False) if isinstance(create_ms, int) else None,
        "CreateTimestamp": create_ms,
        "Sequence": data.get("sequence"),
        "Width": data.get("width"),
        "Height": data.get("height"),
        "Size": data.get("size"),
        "StreamTimestamp": data.get("stream_time_ms"),
        "CaptureLag": data.get("lag_ms"),
        "Quality": data.get("quality"),
        "SkippedFrames": data.get("skipped_frames"),
    }


def _status(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "OldStatus": data.get("old_status"),
        "NewStatus": data.get("new_status"),
        "OldStreamStatus": data.get("old_stream_status"),
        "NewStreamStatus": data.get("new_stream_status"),
        "Reason": data.get("reason"),
    }


_DETAILS: dict[EventType, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    EventType.CAPTURED: _captured,
    EventType.STATUS_CHANGED: _status,
}


def body(event: OutboxEvent) -> dict[str, Any]:
    """The callback body as a dict, fields in their documented order."""
    common = {
        "EventId": event.id,
        "EventType": event.type.value,
        "EventTime": iso_utc(event.created_ms, millis=True),
        "JobId": event.job_id,
        "JobName": event.data.get("job_name"),
    }
    return {**common, **_DETAILS[event.type](event.data)}


def encode(value: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON (no spaces, no ASCII escaping, no NaN)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def render(event: OutboxEvent) -> bytes:
    """The exact bytes POSTed for ``event`` (the same on every attempt)."""
    return encode(body(event))


__all__ = ["CAPTURED_FIELDS", "STATUS_FIELDS", "body", "encode", "iso_utc", "render"]
