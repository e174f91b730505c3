"""ICE wire shapes: domain objects to response bodies, and errors to the ICE envelope.

Every response is a JSON object with ``RequestId``; errors are
``{RequestId, HostId, Code, Message, Recommend}`` with the documented HTTP status (spec §3.12,
§5.4). Field names and types follow the SDK models exactly; extra fields are livesnap
extensions, which the SDK ignores.
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from xml.sax.saxutils import escape

from livesnap import errors
from livesnap.api.params import iso_from_ms
from livesnap.jobs.models import ImageOptions, Job, SnapshotFile, Template
from livesnap.jobs.ports import StorageInfo

ERROR_TABLE: tuple[tuple[type[errors.LivesnapError], int, str], ...] = (
    (errors.MissingParameter, 400, "MissingParameter"),
    (errors.InvalidParameter, 400, "InvalidParameter"),
    (errors.JobNotFound, 404, "JobNotFound"),
    (errors.TemplateNotFound, 404, "TemplateNotFound"),
    (errors.Forbidden, 403, "Forbidden"),
    (errors.JobAlreadyStarted, 409, "JobAlreadyStarted"),
    (errors.JobNotStarted, 409, "JobNotStarted"),
    (errors.JobLimitExceeded, 400, "JobLimitExceeded"),
    (errors.StreamNotFound, 400, "StreamNotFound"),
    (errors.CaptureTimeout, 504, "CaptureTimeout"),
    (errors.StoreError, 503, "ServiceUnavailable"),
    (errors.ShardUnavailable, 503, "ServiceUnavailable"),
    (errors.OutputError, 502, "StorageError"),
)
INTERNAL_ERROR = (500, "InternalError",
                  "The request processing has failed due to some unknown error.")


def new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def error_for(exc: errors.LivesnapError) -> tuple[int, str]:
    """HTTP status and ICE code for a domain error (most specific class first)."""
    for cls, status, code in ERROR_TABLE:
        if isinstance(exc, cls):
            return status, code
    return INTERNAL_ERROR[0], INTERNAL_ERROR[1]


def error_body(request_id: str, host_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "RequestId": request_id,
        "HostId": host_id,
        "Code": code,
        "Message": message,
        "Recommend": f"See docs/api.md#errors for {code} (request {request_id}).",
    }


# characters XML 1.0 cannot carry, even escaped: replaced, so that any stored text renders
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_document(root: str, body: dict[str, Any]) -> bytes:
    """``body`` in Alibaba's XML shape under ``<root>``.

    An object is an element with a child per field; a list is its name repeated once per
    item (an empty list gives no element); booleans are ``true``/``false``; a null field is
    left out. Element names are the response's field names, which are fixed ASCII words.
    """
    parts = ['<?xml version="1.0" encoding="UTF-8"?>']
    _xml_element(root, body, parts)
    return "".join(parts).encode("utf-8")


def _xml_element(name: str, value: Any, parts: list[str]) -> None:
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            _xml_element(name, item, parts)
        return
    parts.append(f"<{name}>")
    if isinstance(value, dict):
        for key, item in value.items():
            _xml_element(key, item, parts)
    elif isinstance(value, bool):
        parts.append("true" if value else "false")
    else:
        parts.append(escape(_NOT_XML.sub("\ufffd", str(value))))
    parts.append(f"</{name}>")


def template_item(t: Template) -> dict[str, Any]:
    """A ``TemplateList`` entry (no format fields, as in ICE; livesnap's image options)."""
    return {
        "TemplateId": t.id,
        "TemplateName": t.name,
        "Type": t.type.value,
        "TimeInterval": t.interval_s,
        "CreateTime": iso_from_ms(t.created_ms),
        **image_fields(t.image),
        "ConnectMode": t.connect_mode.value,
    }


def image_fields(image: ImageOptions) -> dict[str, Any]:
    """livesnap's image extensions; ``Quality`` is absent when the node's default applies."""
    fields: dict[str, Any] = {"ImageFormat": image.format.value}
    if image.quality is not None:
        fields["Quality"] = image.quality
    fields.update(Width=image.width, Height=image.height, QualityGate=image.quality_gate,
                  LatestPointer=image.latest_pointer)
    return fields


def template_detail(t: Template) -> dict[str, Any]:
    return {
        **template_item(t),
        "OverwriteFormat": t.overwrite_format or "",
        "SequenceFormat": t.sequence_format or "",
        "LastModified": iso_from_ms(t.modified_ms),
    }


def _output(job: Job) -> dict[str, Any]:
    return {
        "StorageType": job.storage.storage_type.value,
        "Endpoint": job.storage.endpoint,
        "Bucket": job.storage.bucket,
    }


def job_item(job: Job) -> dict[str, Any]:
    """A ``JobList`` entry (no stream input, formats or callback, as in ICE)."""
    return {
        "JobId": job.id,
        "JobName": job.name,
        "Status": job.status.value,
        "TemplateId": job.template_id,
        "TemplateName": job.template_name,
        "TimeInterval": job.interval_s,
        "CreateTime": iso_from_ms(job.created_ms),
        "SnapshotOutput": _output(job),
        "StreamStatus": job.stream_status.value,
        "ConnectMode": job.connect_mode.value,  # livesnap extension
    }


def job_detail(job: Job, *, storage: StorageInfo | None = None) -> dict[str, Any]:
    """``GetLiveSnapshotJob``; ``storage`` adds where its snapshots really go (extension)."""
    body: dict[str, Any] = {
        **job_item(job),
        "StreamInput": {"Url": job.stream_url, "Type": job.stream_type},
        "OverwriteFormat": job.overwrite_format or "",
        "SequenceFormat": job.sequence_format or "",
        "CallbackUrl": job.callback_url or "",
        "LastModified": iso_from_ms(job.modified_ms),
        # livesnap extensions
        "SnapshotCount": job.snapshot_count,
        "MissedTicks": job.missed_ticks,
        "LastError": job.last_error,
        "StatusReason": job.status_reason,
        **image_fields(job.image),
    }
    if storage is not None:
        body["StorageFallback"] = storage.fallback
        body["StorageDescription"] = storage.description
    if job.last_snapshot_ms is not None:
        body["LastSnapshotTime"] = iso_from_ms(job.last_snapshot_ms)
        body["LastSnapshotTimestamp"] = job.last_snapshot_ms
    if job.effective_interval_ms:
        body["EffectiveInterval"] = round(job.effective_interval_ms / 1000, 3)
    return body


def file_item(f: SnapshotFile) -> dict[str, Any]:
    return {
        "OssEndpoint": f.endpoint,
        "OssBucket": f.bucket,
        "OssObject": f.object_key,
        "CreateTime": iso_from_ms(f.create_ms),
        "CreateTimestamp": f.create_ms,
        "IsOverlay": f.is_overlay,
        # livesnap extensions
        "Width": f.width,
        "Height": f.height,
        "Size": f.size,
        "CaptureLag": f.lag_ms,  # ms from keyframe arrival to the JPEG handed to storage
        "StreamTimestamp": f.stream_time_ms,  # the keyframe's stream time (pts) in ms
        "Quality": f.quality.value if f.quality is not None else None,
        "SkippedFrames": f.skipped_frames,
    }
