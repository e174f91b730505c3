"""One small function per ICE action: parameters in, response body out."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from livesnap.api import protocol
from livesnap.api.params import Params, iso_from_ms
from livesnap.errors import InvalidParameter, MissingParameter
from livesnap.jobs.imaging import MAX_SIDE
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import (
    INT64_MAX,
    INT64_MIN,
    ConnectMode,
    FileQuery,
    ImageChanges,
    ImageFormat,
    JobQuery,
    JobSpec,
    JobStatus,
    StorageTarget,
    StorageType,
    TemplateQuery,
    TemplateSpec,
    TemplateType,
)
from livesnap.jobs.storage import check_target

DAY_MS = 86_400_000
SORT = ("asc", "desc")


@dataclass(frozen=True, kw_only=True)
class Context:
    manager: JobManager
    account: str
    now_ms: int


Handler = Callable[[Context, Params], Awaitable[dict[str, Any]]]


def _template_spec(p: Params) -> TemplateSpec:
    return TemplateSpec(
        name=p.required("TemplateName", max_len=128),
        interval_s=p.integer("TimeInterval", required=True, low=5, high=3600) or 0,
        overwrite_format=p.text("OverwriteFormat", max_len=255),
        sequence_format=p.text("SequenceFormat", max_len=255),
        image=_image_changes(p),
        connect_mode=_connect_mode(p),
    )


def _connect_mode(p: Params) -> ConnectMode | None:
    """livesnap's ``ConnectMode`` extension; absent keeps the current (or template's) mode."""
    mode = p.choice("ConnectMode", tuple(m.value for m in ConnectMode), default=None)
    return None if mode is None else ConnectMode(mode)


def _image_changes(p: Params) -> ImageChanges:
    """livesnap's template extensions; an absent one keeps its current value."""
    fmt = p.choice("ImageFormat", tuple(f.value for f in ImageFormat), default=None)
    return ImageChanges(
        format=None if fmt is None else ImageFormat(fmt),
        quality=p.integer("Quality", low=1, high=100),
        width=p.integer("Width", low=0, high=MAX_SIDE),
        height=p.integer("Height", low=0, high=MAX_SIDE),
        quality_gate=p.boolean("QualityGate", default=False) if "QualityGate" in p else None,
        latest_pointer=p.boolean("LatestPointer", default=False) if "LatestPointer" in p else None,
    )


async def create_template(ctx: Context, p: Params) -> dict[str, Any]:
    template = await ctx.manager.create_template(ctx.account, _template_spec(p))
    return {"TemplateId": template.id}


async def update_template(ctx: Context, p: Params) -> dict[str, Any]:
    template_id = p.required("TemplateId", max_len=128)
    await ctx.manager.update_template(ctx.account, template_id, _template_spec(p))
    return {}


async def delete_template(ctx: Context, p: Params) -> dict[str, Any]:
    await ctx.manager.delete_template(ctx.account, p.required("TemplateId", max_len=128))
    return {}


async def get_template(ctx: Context, p: Params) -> dict[str, Any]:
    template = await ctx.manager.get_template(ctx.account, p.required("TemplateId", max_len=128))
    return protocol.template_detail(template)


def _paging(p: Params) -> tuple[int, int, str]:
    page_no = p.integer("PageNo", default=1, low=1, high=1_000_000) or 1
    page_size = p.integer("PageSize", default=10, low=1, high=100) or 10
    sort = p.choice("SortBy", SORT, default="desc") or "desc"
    return page_no, page_size, sort


async def list_templates(ctx: Context, p: Params) -> dict[str, Any]:
    page_no, page_size, sort = _paging(p)
    kind = p.choice("Type", ("system", "custom"), default=None)
    query = TemplateQuery(
        page_no=page_no,
        page_size=page_size,
        descending=sort == "desc",
        keyword=p.text("SearchKeyWord", max_len=128),
        ids=p.flat_list("TemplateIds", max_items=200),
        type=TemplateType(kind) if kind else None,
    )
    page = await ctx.manager.list_templates(ctx.account, query)
    return {
        "PageNo": page_no,
        "PageSize": page_size,
        "SortBy": sort,
        "TotalCount": page.total,
        "TemplateList": [protocol.template_item(t) for t in page.items],
    }


def _stream_input(p: Params) -> tuple[str, str]:
    value = p.json_object("StreamInput", required=True) or {}
    kind = value.get("Type")
    url = value.get("Url")
    if not kind or not url:
        raise MissingParameter("StreamInput must have Type and Url.")
    if kind != "rtmp":
        raise InvalidParameter("StreamInput.Type must be rtmp.")
    if not isinstance(url, str):
        raise InvalidParameter("StreamInput.Url must be a string.")
    return kind, url


def _snapshot_output(p: Params) -> StorageTarget:
    value = p.json_object("SnapshotOutput", required=True) or {}
    missing = [k for k in ("StorageType", "Endpoint", "Bucket") if not value.get(k)]
    if missing:
        raise MissingParameter(f"SnapshotOutput must have {', '.join(missing)}.")
    fields = {k: value[k] for k in ("StorageType", "Endpoint", "Bucket")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise InvalidParameter("SnapshotOutput fields must be strings.")
    try:
        storage_type = StorageType(fields["StorageType"])
    except ValueError as exc:
        raise InvalidParameter("SnapshotOutput.StorageType must be oss (or s3, local).") from exc
    target = StorageTarget(
        storage_type=storage_type, endpoint=fields["Endpoint"], bucket=fields["Bucket"]
    )
    check_target(target)
    return target


async def submit_job(ctx: Context, p: Params) -> dict[str, Any]:
    kind, url = _stream_input(p)
    spec = JobSpec(
        name=p.required("JobName", max_len=128),
        template_id=p.required("TemplateId", max_len=128),
        stream_url=url,
        stream_type=kind,
        storage=_snapshot_output(p),
        callback_url=p.text("CallbackUrl", max_len=255),
        connect_mode=_connect_mode(p),
    )
    job = await ctx.manager.submit_job(ctx.account, spec)
    return {"JobId": job.id}


async def get_job(ctx: Context, p: Params) -> dict[str, Any]:
    job = await ctx.manager.get_job(ctx.account, p.required("JobId", max_len=128))
    return protocol.job_detail(job, storage=ctx.manager.storage_info(job))


async def list_jobs(ctx: Context, p: Params) -> dict[str, Any]:
    page_no, page_size, sort = _paging(p)
    end = p.time_ms("EndTime") or ctx.now_ms
    start = p.time_ms("StartTime") or end - 7 * DAY_MS
    _check_window(start, end, 30 * DAY_MS, "30 days")
    status = p.choice("Status", tuple(s.value for s in JobStatus), default=None)
    query = JobQuery(
        start_ms=start,
        end_ms=end,
        page_no=page_no,
        page_size=page_size,
        descending=sort == "desc",
        keyword=p.text("SearchKeyWord", max_len=128),
        status=JobStatus(status) if status else None,
    )
    page = await ctx.manager.list_jobs(ctx.account, query)
    return {
        "PageNo": page_no,
        "PageSize": page_size,
        "SortBy": sort,
        "TotalCount": page.total,
        "JobList": [protocol.job_item(j) for j in page.items],
    }


def _check_window(start: int, end: int, limit_ms: int, label: str) -> None:
    if end < start:
        raise InvalidParameter("EndTime must not be earlier than StartTime.")
    if end - start > limit_ms:
        raise InvalidParameter(f"EndTime - StartTime must be at most {label}.")


COMMANDS = ("start", "stop", "restart", "capture")


async def send_command(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    command = p.choice("Command", COMMANDS, default=None)
    if command is None:
        raise MissingParameter('The input parameter "Command" that is mandatory for '
                               "processing this request is not supplied.")
    file = await ctx.manager.command(ctx.account, job_id, command)
    if file is None:
        return {}
    return {"Snapshot": protocol.file_item(file)}


async def list_files(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    start = p.time_ms("StartTime", required=True) or 0
    end = p.time_ms("EndTime", required=True) or 0
    _check_window(start, end, DAY_MS, "1 day")
    limit = p.integer("Limit", default=10, low=1, high=100) or 10
    sort = p.choice("SortBy", SORT, default="asc") or "asc"
    query = FileQuery(
        job_id=job_id, start_ms=start, end_ms=end, limit=limit + 1, descending=sort == "desc"
    )
    files = await ctx.manager.list_files(ctx.account, query)
    body: dict[str, Any] = {"FileList": [protocol.file_item(f) for f in files[:limit]]}
    if len(files) > limit:
        # The first file not returned; send it back as StartTime (asc) or EndTime (desc).
        body["NextStartTime"] = iso_from_ms(files[limit].create_ms, millis=True)
    return body


async def delete_files(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    stamps = p.json("CreateTimestampList", required=True)
    if not isinstance(stamps, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in stamps
    ):
        raise InvalidParameter("CreateTimestampList must be a JSON array of integers.")
    if not stamps:
        raise InvalidParameter("CreateTimestampList must not be empty.")
    if len(stamps) > 200:
        raise InvalidParameter("CreateTimestampList accepts at most 200 entries.")
    if not all(INT64_MIN <= s <= INT64_MAX for s in stamps):
        raise InvalidParameter(
            "CreateTimestampList entries must be Unix times in milliseconds (64-bit integers).")
    results = await ctx.manager.delete_files(
        ctx.account, job_id, stamps, delete_objects=p.boolean("DeleteOriginalFile", default=False)
    )
    return {
        "DeleteFileResultList": [
            {"CreateTimestamp": r.create_ms, "Result": r.result} for r in results
        ]
    }


# livesnap extensions: the callback delivery log and replay (docs/callbacks.md) -------------
async def list_callback_attempts(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    limit = p.integer("Limit", default=20, low=1, high=100) or 20
    attempts = await ctx.manager.delivery_log(ctx.account, job_id, limit)
    return {
        "AttemptList": [
            {
                "EventId": a.event_id,
                "Time": iso_from_ms(a.at_ms, millis=True),
                "StatusCode": a.status_code,
                "LatencyMs": a.latency_ms,
                "Error": a.error,
            }
            for a in attempts
        ]
    }


async def delete_job(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    deleted = await ctx.manager.delete_job(
        ctx.account, job_id, delete_objects=p.boolean("DeleteOriginalFiles", default=False))
    return {"JobId": job_id, "DeletedFiles": deleted}


async def replay_callbacks(ctx: Context, p: Params) -> dict[str, Any]:
    job_id = p.required("JobId", max_len=128)
    return {"Requeued": await ctx.manager.replay_failed(ctx.account, job_id)}


ACTIONS: dict[str, Handler] = {
    "CreateLiveSnapshotTemplate": create_template,
    "UpdateLiveSnapshotTemplate": update_template,
    "DeleteLiveSnapshotTemplate": delete_template,
    "GetLiveSnapshotTemplate": get_template,
    "ListLiveSnapshotTemplates": list_templates,
    "SubmitLiveSnapshotJob": submit_job,
    "GetLiveSnapshotJob": get_job,
    "ListLiveSnapshotJobs": list_jobs,
    "SendLiveSnapshotJobCommand": send_command,
    "ListLiveSnapshotFiles": list_files,
    "DeleteLiveSnapshotFiles": delete_files,
    # livesnap extensions
    "ListLiveSnapshotCallbackAttempts": list_callback_attempts,
    "ReplayLiveSnapshotCallbacks": replay_callbacks,
    "DeleteLiveSnapshotJob": delete_job,
}
