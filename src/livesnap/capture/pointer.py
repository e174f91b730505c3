"""The latest pointer: a small JSON object beside the overwrite object (livesnap extension).

It names the newest immutable snapshot, so a CDN or browser can cache every picture for ever
and poll only this small, uncacheable document (docs/api.md, "Latest pointer").
"""

from __future__ import annotations

import json

from livesnap.clock import utc_from_ms
from livesnap.jobs.models import Job
from livesnap.jobs.ports import CaptureReport


def latest_pointer(job: Job, report: CaptureReport) -> bytes:
    """The pointer's bytes for one capture (stable field order, UTF-8)."""
    created = utc_from_ms(report.create_ms)
    document = {
        "JobId": job.id,
        "ObjectKey": report.sequence_key or report.overwrite_key,
        "OverwriteKey": report.overwrite_key,
        "ImageFormat": job.image.format.value,
        "CreateTime": created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{report.create_ms % 1000:03d}Z",
        "CreateTimestamp": report.create_ms,
        "StreamTimestamp": report.stream_time_ms,
        "CaptureLag": report.lag_ms,
        "Width": report.width,
        "Height": report.height,
        "Size": report.size,
        "Quality": None if report.quality is None else report.quality.value,
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
