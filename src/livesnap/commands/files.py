"""``livesnap files …``: the snapshot files recorded for a job."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from livesnap.commands.common import Cli, WideFlag, api_command, ice_time, parse_time
from livesnap.commands.output import Column, list_table

app = typer.Typer(help="List and delete snapshot files: list, delete.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="Job id.")]
MAX_PAGES = 1000  # --all stops here (100 000 files) rather than loop on a misbehaving server


class Sort(StrEnum):
    asc = "asc"
    desc = "desc"


FILE_COLUMNS = (
    Column("CreateTimestamp", "CreateTimestamp", no_wrap=True),
    Column("CreateTime", "Created", no_wrap=True, wide_only=True),
    Column("OssObject", "Object"),
    Column("IsOverlay", "Overwrite", no_wrap=True, wide_only=True),
    Column("Width", "Width", no_wrap=True, wide_only=True),
    Column("Height", "Height", no_wrap=True, wide_only=True),
    Column("Size", "Bytes", no_wrap=True),
)
RESULT_COLUMNS = (Column("CreateTimestamp", "CreateTimestamp", no_wrap=True),
                  Column("Result", "Result"))


def _day_before(ice: str) -> str:
    return ice_time(datetime.fromisoformat(ice) - timedelta(days=1))


def _window(job_id: str, start: str, end: str, limit: int, sort: Sort) -> list[tuple[str, str]]:
    return [("JobId", job_id), ("StartTime", start), ("EndTime", end),
            ("Limit", str(limit)), ("SortBy", sort.value)]


def _all_pages(cli: Cli, job_id: str, start: str, end: str, limit: int, sort: Sort) -> dict[
    str, Any
]:
    """Follow ``NextStartTime``: as ``StartTime`` ascending, as ``EndTime`` descending."""
    files: list[Any] = []
    for _ in range(MAX_PAGES):
        body = cli.call("ListLiveSnapshotFiles", _window(job_id, start, end, limit, sort))
        files += body.get("FileList", [])
        following = body.get("NextStartTime")
        if not following:
            break
        start, end = (following, end) if sort is Sort.asc else (start, following)
    return {"FileList": files}


@app.command("list")
@api_command
def list_files(
    cli: Cli,
    job_id: JobId,
    start_time: Annotated[str | None, typer.Option(
        parser=parse_time, metavar="TIME",
        help="Window start: ISO 8601, 'now', or 15m/2h/1d ago (default: 1 day before the end).")
    ] = None,
    end_time: Annotated[str | None, typer.Option(
        parser=parse_time, metavar="TIME",
        help="Window end, at most 1 day after the start (default: now).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Files per page.")] = 10,
    sort: Annotated[Sort, typer.Option(help="By capture time.")] = Sort.asc,
    all_pages: Annotated[bool, typer.Option(
        "--all", help="Fetch every page (--json then prints {\"FileList\": [...]}).")] = False,
    wide: WideFlag = False,
) -> None:
    """List a job's snapshot files in a time window (default: the last 24 hours)."""
    # ICE times have whole seconds: "now" rounds up, so this second's captures are included
    end_time = end_time or ice_time(datetime.now(tz=UTC) + timedelta(seconds=1))
    start_time = start_time or _day_before(end_time)
    if all_pages:
        body = _all_pages(cli, job_id, start_time, end_time, limit, sort)
    else:
        body = cli.call("ListLiveSnapshotFiles",
                        _window(job_id, start_time, end_time, limit, sort))
    more = body.get("NextStartTime")
    caption = f"{len(body.get('FileList', []))} files" + (
        f"; more from {more} (or use --all)" if more else "")
    cli.show(body, lambda: list_table(body.get("FileList", []), FILE_COLUMNS, wide=wide,
                                      title=f"Files of job {job_id}", caption=caption), wide=wide)


@app.command("delete")
@api_command
def delete_files(
    cli: Cli,
    job_id: JobId,
    timestamps: Annotated[list[int], typer.Argument(
        help="CreateTimestamp values (milliseconds) of the files to delete.")],
    delete_object: Annotated[bool, typer.Option(
        "--delete-object", help="Also delete the stored objects.")] = False,
) -> None:
    """Delete file records (and with --delete-object the images too); one result per file."""
    params = [("JobId", job_id), ("CreateTimestampList", json.dumps(timestamps)),
              ("DeleteOriginalFile", "true" if delete_object else "false")]
    body = cli.call("DeleteLiveSnapshotFiles", params)
    cli.show(body, lambda: list_table(body.get("DeleteFileResultList", []), RESULT_COLUMNS,
                                      title=f"Deleted files of job {job_id}"))
