"""The CLI's list tables fit an 80-column terminal; ``--wide`` shows every column whole."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from livesnap.commands import files, jobs, templates
from livesnap.commands.common import Cli
from livesnap.commands.output import list_table

JOB_ID = "0b9f3c8e-5d1a-4c52-9a1e-7f4d2b6c8a10"
JOBS = [
    {"JobId": JOB_ID, "JobName": "lobby camera on the third floor", "Status": "started",
     "StreamStatus": "reconnecting", "CreateTime": "2026-12-07T04:40:00Z"},
    {"JobId": "5e2d7a41-0c3b-4f9e-8d21-6a5b4c3d2e1f", "JobName": "yard", "Status": "paused",
     "StreamStatus": "offline", "CreateTime": "2026-12-06T22:10:31Z"},
]
TEMPLATES = [
    {"TemplateId": "system", "TemplateName": "System 5s overwrite + sequence", "Type": "system",
     "TimeInterval": 5, "ConnectMode": "auto", "CreateTime": "2026-12-07T00:00:00Z"},
    {"TemplateId": "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a", "TemplateName": "archive",
     "Type": "custom", "TimeInterval": 60, "ConnectMode": "persistent",
     "CreateTime": "2026-12-07T01:00:00Z"},
]
FILES = [
    {"CreateTimestamp": 1796618586727, "CreateTime": "2026-12-07T04:43:06Z",
     "OssObject": f"snapshot/{JOB_ID}/1796618586727.jpg", "IsOverlay": False, "Width": 1920,
     "Height": 1080, "Size": 98_304},
    {"CreateTimestamp": 1796618586727, "CreateTime": "2026-12-07T04:43:06Z",
     "OssObject": f"snapshot/{JOB_ID}.jpg", "IsOverlay": True, "Width": 1920, "Height": 1080,
     "Size": 98_304},
]
CASES = [
    (JOBS, jobs.LIST_COLUMNS, ("started", "reconnecting", JOB_ID)),
    (TEMPLATES, templates.LIST_COLUMNS, ("persistent", "9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a")),
    (FILES, files.FILE_COLUMNS, ("1796618586727", "98304")),
]


def rendered(rows, columns, *, width: int, wide: bool) -> list[str]:
    out = Console(file=io.StringIO(), width=width, color_system=None, soft_wrap=False)
    cli = Cli(client=None, as_json=False, out=out, err=out)  # type: ignore[arg-type]
    cli.show(rows, lambda: list_table(rows, columns, title="T", wide=wide), wide=wide)
    return out.file.getvalue().splitlines()


@pytest.mark.parametrize(("rows", "columns", "whole"), CASES)
def test_tables_fit_80_columns_with_ids_and_states_whole(rows, columns, whole):
    lines = rendered(rows, columns, width=80, wide=False)
    assert max(len(line) for line in lines) <= 80
    text = "\n".join(lines)
    for value in whole:  # never broken over lines, never cut
        assert value in text


@pytest.mark.parametrize(("rows", "columns", "whole"), CASES)
def test_wide_tables_show_every_column_on_one_line_per_row(rows, columns, whole):
    lines = rendered(rows, columns, width=80, wide=True)
    text = "\n".join(lines)
    for column in columns:
        assert column.header in text
    for row in rows:  # each row on one line: every value of the row is on the same line
        values = [str(v) for v in row.values() if not isinstance(v, bool)]
        assert any(all(v in line for v in values) for line in lines), row
