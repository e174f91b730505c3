"""``livesnap templates …``: snapshot templates (interval and object-key formats)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from livesnap.commands.common import Cli, WideFlag, api_command, paging_params
from livesnap.commands.output import Column, detail_table, list_table, page_caption

app = typer.Typer(
    help="Manage snapshot templates: list, create, get, update, delete.",
    no_args_is_help=True,
)

TemplateId = Annotated[str, typer.Argument(help="Template id (the built-in one is 'system').")]
IntervalOpt = Annotated[int, typer.Option("--interval", help="Seconds between snapshots (5-3600).")]
OverwriteOpt = Annotated[str | None, typer.Option(
    "--overwrite", help="Key of the latest-picture object, e.g. snapshot/{JobId}.jpg.")]
SequenceOpt = Annotated[str | None, typer.Option(
    "--sequence", help="Key of each sequence object, e.g. snapshot/{JobId}/{UnixTimestamp}.jpg.")]


class ImageFormat(StrEnum):
    jpg = "jpg"
    webp = "webp"
    png = "png"


FormatOpt = Annotated[ImageFormat | None, typer.Option(
    "--image-format", help="Picture format (extension); keys must end with .jpg/.webp/.png.")]
QualityOpt = Annotated[int | None, typer.Option(
    "--quality", min=1, max=100, help="JPEG/WebP quality (extension; default: the server's).")]
WidthOpt = Annotated[int | None, typer.Option(
    "--width", min=0, max=7680, help="Long side in pixels, 0 = source (extension).")]
HeightOpt = Annotated[int | None, typer.Option(
    "--height", min=0, max=7680, help="Short side in pixels, 0 = source (extension).")]
GateOpt = Annotated[bool | None, typer.Option(
    "--quality-gate/--no-quality-gate",
    help="Skip ticks whose keyframes are black, single-colour or frozen "
         "(extension; off by default).")]
PointerOpt = Annotated[bool | None, typer.Option(
    "--latest-pointer/--no-latest-pointer",
    help="Write <overwrite key>.latest.json naming the newest snapshot (extension).")]


class ConnectMode(StrEnum):
    auto = "auto"
    persistent = "persistent"
    per_tick = "per-tick"


ConnectModeOpt = Annotated[ConnectMode | None, typer.Option(
    "--connect-mode",
    help="Hold the stream open (persistent), connect once per tick (per-tick), or choose by "
         "interval (auto, the default) (extension).")]


def mode_params(mode: ConnectMode | None) -> list[tuple[str, str]]:
    """``ConnectMode`` when given (the server keeps the current one otherwise)."""
    return [] if mode is None else [("ConnectMode", mode.value)]


def _image_params(
    image_format: ImageFormat | None, quality: int | None, width: int | None,
    height: int | None, gate: bool | None, pointer: bool | None,
) -> list[tuple[str, str]]:
    """livesnap's image extensions, only those given (the server keeps the others)."""
    given: list[tuple[str, object]] = [
        ("ImageFormat", image_format.value if image_format else None), ("Quality", quality),
        ("Width", width), ("Height", height), ("QualityGate", gate), ("LatestPointer", pointer),
    ]
    return [(key, str(value).lower() if isinstance(value, bool) else str(value))
            for key, value in given if value is not None]


class Sort(StrEnum):
    asc = "asc"
    desc = "desc"


class Kind(StrEnum):
    system = "system"
    custom = "custom"


LIST_COLUMNS = (
    Column("TemplateId", "Id", no_wrap=True),
    Column("TemplateName", "Name"),
    Column("Type", "Type", no_wrap=True, wide_only=True),
    Column("TimeInterval", "Interval", no_wrap=True),
    Column("ConnectMode", "Connect", no_wrap=True),
    Column("CreateTime", "Created", no_wrap=True, wide_only=True),
)


def _spec(name: str, interval: int, overwrite: str | None, sequence: str | None) -> list[
    tuple[str, str]
]:
    params = [("TemplateName", name), ("TimeInterval", str(interval))]
    if overwrite:
        params.append(("OverwriteFormat", overwrite))
    if sequence:
        params.append(("SequenceFormat", sequence))
    return params


@app.command("list")
@api_command
def list_templates(
    cli: Cli,
    kind: Annotated[Kind | None, typer.Option("--type", help="Only system or custom.")] = None,
    keyword: Annotated[str | None, typer.Option(
        "--keyword", help="Exact id or part of the name.")] = None,
    page: Annotated[int, typer.Option(min=1, help="Page number.")] = 1,
    page_size: Annotated[int, typer.Option(min=1, max=100, help="Templates per page.")] = 10,
    sort: Annotated[Sort, typer.Option(help="By creation time.")] = Sort.desc,
    wide: WideFlag = False,
) -> None:
    """List templates (yours and the built-in system template)."""
    params = paging_params(page, page_size, sort.value, keyword)
    if kind is not None:
        params.append(("Type", kind.value))
    body = cli.call("ListLiveSnapshotTemplates", params)
    cli.show(body, lambda: list_table(
        body.get("TemplateList", []), LIST_COLUMNS, wide=wide, title="Templates",
        caption=page_caption(body, "templates")), wide=wide)


@app.command("create")
@api_command
def create_template(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="Template name (at most 128 characters).")],
    interval: IntervalOpt,
    overwrite: OverwriteOpt = None,
    sequence: SequenceOpt = None,
    image_format: FormatOpt = None,
    quality: QualityOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    quality_gate: GateOpt = None,
    latest_pointer: PointerOpt = None,
    connect_mode: ConnectModeOpt = None,
) -> None:
    """Create a template; prints its id (give --overwrite, --sequence or both)."""
    params = [*_spec(name, interval, overwrite, sequence),
              *_image_params(image_format, quality, width, height, quality_gate, latest_pointer),
              *mode_params(connect_mode)]
    body = cli.call("CreateLiveSnapshotTemplate", params)
    cli.show(body, lambda: str(body["TemplateId"]))


@app.command("get")
@api_command
def get_template(cli: Cli, template_id: TemplateId) -> None:
    """Show one template with its formats."""
    body = cli.call("GetLiveSnapshotTemplate", [("TemplateId", template_id)])
    cli.show(body, lambda: detail_table(body, title=f"Template {template_id}"))


def _merged(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The current template with the given changes (``""`` clears a format)."""
    keep = {key: current.get(key) for key in ("TemplateName", "TimeInterval",
                                               "OverwriteFormat", "SequenceFormat")}
    return {**keep, **{k: v for k, v in changes.items() if v is not None}}


@app.command("update")
@api_command
def update_template(
    cli: Cli,
    template_id: TemplateId,
    name: Annotated[str | None, typer.Option("--name", help="New name.")] = None,
    interval: Annotated[int | None, typer.Option(
        "--interval", help="Seconds between snapshots (5-3600).")] = None,
    overwrite: OverwriteOpt = None,
    sequence: SequenceOpt = None,
    image_format: FormatOpt = None,
    quality: QualityOpt = None,
    width: WidthOpt = None,
    height: HeightOpt = None,
    quality_gate: GateOpt = None,
    latest_pointer: PointerOpt = None,
    connect_mode: ConnectModeOpt = None,
) -> None:
    """Change a template; fields not given keep their value (--overwrite '' clears it)."""
    current = cli.call("GetLiveSnapshotTemplate", [("TemplateId", template_id)])
    merged = _merged(current, {"TemplateName": name, "TimeInterval": interval,
                               "OverwriteFormat": overwrite, "SequenceFormat": sequence})
    params = [("TemplateId", template_id), *_spec(
        str(merged["TemplateName"]), int(merged["TimeInterval"]),
        merged["OverwriteFormat"], merged["SequenceFormat"]),
        *_image_params(image_format, quality, width, height, quality_gate, latest_pointer),
        *mode_params(connect_mode)]
    body = cli.call("UpdateLiveSnapshotTemplate", params)
    cli.show(body, lambda: f"updated template {template_id}")


@app.command("delete")
@api_command
def delete_template(cli: Cli, template_id: TemplateId) -> None:
    """Delete a template (jobs that use it keep their copy)."""
    body = cli.call("DeleteLiveSnapshotTemplate", [("TemplateId", template_id)])
    cli.show(body, lambda: f"deleted template {template_id}")
