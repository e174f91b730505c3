"""``livesnap jobs …``: submit snapshot jobs and control them."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from livesnap.commands.common import (
    Cli,
    CommandError,
    ExitCode,
    WideFlag,
    api_command,
    paging_params,
    parse_time,
)
from livesnap.commands.output import Column, detail_table, list_table, page_caption
from livesnap.commands.templates import ConnectModeOpt, mode_params

app = typer.Typer(
    help="Submit and control snapshot jobs: submit, list, get, start, stop, restart, capture.",
    no_args_is_help=True,
)

JobId = Annotated[str, typer.Argument(help="Job id (as printed by 'livesnap jobs submit').")]
TimeOpt = Annotated[str | None, typer.Option(
    parser=parse_time, metavar="TIME", help="ISO 8601, 'now', or 15m/2h/1d ago.")]


class Status(StrEnum):
    init = "init"
    started = "started"
    paused = "paused"


class Sort(StrEnum):
    asc = "asc"
    desc = "desc"


class StorageType(StrEnum):
    oss = "oss"
    s3 = "s3"
    local = "local"


LIST_COLUMNS = (
    Column("JobId", "Id", no_wrap=True),
    Column("JobName", "Name"),
    Column("Status", "Status", no_wrap=True),
    Column("StreamStatus", "Stream", no_wrap=True),
    Column("CreateTime", "Created", no_wrap=True, wide_only=True),
)


def _default_name(url: str) -> str:
    """The last path segment of the stream URL (``rtmp://host/live/cam1`` → ``cam1``)."""
    segment = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return segment[:128] or "job"


def _submit_params(
    url: str, name: str, template: str, output: dict[str, str], callback_url: str | None
) -> list[tuple[str, str]]:
    params = [
        ("JobName", name),
        ("TemplateId", template),
        ("StreamInput", json.dumps({"Type": "rtmp", "Url": url})),
        ("SnapshotOutput", json.dumps(output)),
    ]
    if callback_url:
        params.append(("CallbackUrl", callback_url))
    return params


@app.command("submit")
@api_command
def submit_job(
    cli: Cli,
    url: Annotated[str, typer.Argument(help="Stream URL, e.g. rtmp://origin/live/cam1.")],
    bucket: Annotated[str, typer.Option(help="SnapshotOutput.Bucket.")],
    storage_endpoint: Annotated[str | None, typer.Option(
        help="SnapshotOutput.Endpoint, e.g. oss-cn-shanghai.aliyuncs.com (with --storage-type "
             "local: a folder name, default 'local').")] = None,
    storage_type: Annotated[StorageType, typer.Option(
        help="SnapshotOutput.StorageType.")] = StorageType.oss,
    name: Annotated[str | None, typer.Option(
        help="Job name (default: the last part of the URL).")] = None,
    template: Annotated[str, typer.Option(help="Template id.")] = "system",
    callback_url: Annotated[str | None, typer.Option(help="Where to POST events.")] = None,
    connect_mode: ConnectModeOpt = None,
    wait: Annotated[bool, typer.Option(help="Wait until the job has started.")] = False,
    wait_timeout: Annotated[float, typer.Option(
        min=1, help="Seconds to wait with --wait.")] = 30.0,
) -> None:
    """Submit a job; livesnap probes the stream at once and starts the job if it is live.

    A job whose stream is not live waits for it (the CLI warns) and starts by itself once
    the stream is live.
    """
    if storage_endpoint is None:
        if storage_type is not StorageType.local:
            raise CommandError("MissingParameter", f"--storage-endpoint is needed with "
                               f"--storage-type {storage_type.value}", ExitCode.USAGE)
        storage_endpoint = "local"
    output = {"StorageType": storage_type.value, "Endpoint": storage_endpoint, "Bucket": bucket}
    params = [*_submit_params(url, name or _default_name(url), template, output, callback_url),
              *mode_params(connect_mode)]
    body = cli.call("SubmitLiveSnapshotJob", params)
    job_id = str(body["JobId"])
    if not wait:
        cli.show(body, lambda: job_id)
        _warn_unless_live(cli, job_id)
        return
    detail = _wait_started(cli, job_id, wait_timeout)
    cli.show(detail, lambda: detail_table(detail, title=f"Job {job_id}"))


PROBE_WATCH_S = 3.0  # how long submit watches the probe for a stream that is not live


def _warn_unless_live(cli: Cli, job_id: str) -> None:
    """Warn on stderr when the probe finds the stream not live (a refused or failed open
    answers within a second or two; a probe still running after ``PROBE_WATCH_S`` is left)."""
    latest: dict[str, Any] = {}

    def probed() -> bool:
        latest.update(cli.call("GetLiveSnapshotJob", [("JobId", job_id)]))
        # a failed probe leaves the job init with its reason in LastError (a fresh job is
        # init and offline too, before its probe has begun)
        return latest.get("Status") != "init" or bool(latest.get("LastError"))

    if not cli.wait_for(f"Probing the stream of job {job_id}", probed, timeout_s=PROBE_WATCH_S,
                        step_s=0.3):
        return
    if latest.get("Status") == "init":
        why = str(latest.get("LastError"))
        typer.echo(f"livesnap: warning: the stream is not live: {why.rstrip('.')}; job {job_id} "
                   f"waits for it and starts by itself once it is live (check the URL and the "
                   f"publisher)", err=True)


def _wait_started(cli: Cli, job_id: str, timeout_s: float) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    def started() -> bool:
        latest.update(cli.call("GetLiveSnapshotJob", [("JobId", job_id)]))
        return latest.get("Status") == "started"

    if cli.wait_for(f"Waiting for job {job_id} to start", started, timeout_s=timeout_s):
        return latest
    why = latest.get("LastError") or "the stream is not live"
    raise CommandError("JobNotStarted", f"job {job_id} is still {latest.get('Status')} after "
                       f"{timeout_s:g} s: {why}")


@app.command("list")
@api_command
def list_jobs(
    cli: Cli,
    status: Annotated[Status | None, typer.Option(help="Only jobs in this status.")] = None,
    keyword: Annotated[str | None, typer.Option(help="Exact id or part of the name.")] = None,
    start_time: TimeOpt = None,
    end_time: TimeOpt = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=100, help="Jobs per page.")] = 10,
    sort: Annotated[Sort, typer.Option(help="By creation time.")] = Sort.desc,
    wide: WideFlag = False,
) -> None:
    """List jobs created in a time window (default: the last 7 days)."""
    params = paging_params(page, page_size, sort.value, keyword)
    for key, value in (("Status", status), ("StartTime", start_time), ("EndTime", end_time)):
        if value is not None:
            params.append((key, str(value)))
    body = cli.call("ListLiveSnapshotJobs", params)
    cli.show(body, lambda: list_table(body.get("JobList", []), LIST_COLUMNS, wide=wide,
                                      title="Jobs", caption=page_caption(body, "jobs")), wide=wide)


@app.command("get")
@api_command
def get_job(cli: Cli, job_id: JobId) -> None:
    """Show one job: status, stream status, last snapshot, last error."""
    body = cli.call("GetLiveSnapshotJob", [("JobId", job_id)])
    cli.show(body, lambda: detail_table(body, title=f"Job {job_id}"))


def _command(cli: Cli, job_id: str, command: str, message: str) -> dict[str, Any]:
    with cli.waiting(message):
        return cli.call("SendLiveSnapshotJobCommand", [("JobId", job_id), ("Command", command)])


@app.command("start")
@api_command
def start_job(cli: Cli, job_id: JobId) -> None:
    """Start a job; waits (up to 10 s) until its stream is found live."""
    body = _command(cli, job_id, "start", f"Starting job {job_id} (probing the stream)")
    cli.show(body, lambda: f"started job {job_id}")


@app.command("stop")
@api_command
def stop_job(cli: Cli, job_id: JobId) -> None:
    """Stop (pause) a job; its files are kept."""
    body = _command(cli, job_id, "stop", f"Stopping job {job_id}")
    cli.show(body, lambda: f"stopped job {job_id}")


@app.command("restart")
@api_command
def restart_job(cli: Cli, job_id: JobId) -> None:
    """Stop and start a job again (reconnects to the stream)."""
    body = _command(cli, job_id, "restart", f"Restarting job {job_id} (probing the stream)")
    cli.show(body, lambda: f"restarted job {job_id}")


@app.command("capture")
@api_command
def capture_job(cli: Cli, job_id: JobId) -> None:
    """Take one snapshot now, at the next keyframe (a livesnap extension)."""
    body = _command(cli, job_id, "capture", f"Capturing job {job_id} at the next keyframe")
    cli.show(body, lambda: detail_table(body.get("Snapshot", {}), title="Snapshot"))


@app.command("delete")
@api_command
def delete_job(
    cli: Cli, job_id: JobId,
    delete_objects: Annotated[bool, typer.Option(
        "--delete-objects", help="Also delete the stored images its files name.")] = False,
) -> None:
    """Stop a job and delete it with its file records and callback events (a livesnap
    extension); the stored images stay unless --delete-objects."""
    params = [("JobId", job_id), ("DeleteOriginalFiles", "true" if delete_objects else "false")]
    with cli.waiting(f"Deleting job {job_id}"):
        body = cli.call("DeleteLiveSnapshotJob", params)
    cli.show(body, lambda: f"deleted job {job_id} and {body.get('DeletedFiles', 0)} file records"
             + (" with their images" if delete_objects else ""))
