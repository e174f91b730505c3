"""How the CLI shows answers: rich tables for people, the raw response JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Responses carry this in every answer; tables leave it out, --json keeps it.
HIDDEN = ("RequestId",)


@dataclass(frozen=True)
class Column:
    """One table column: the response field, its header, whether it may wrap, and whether
    only ``--wide`` tables show it (the others fit 80 columns)."""

    key: str
    header: str
    no_wrap: bool = False
    wide_only: bool = False


def json_text(body: Any) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False)


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _cell(value: Any) -> Text:
    """A table cell; ``Text`` so that ``[`` in a job name is shown, not read as markup."""
    return Text(_text(value))


def _flatten(body: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in body.items():
        if not prefix and key in HIDDEN:
            continue
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def detail_table(body: Mapping[str, Any], *, title: str) -> Table:
    """Field / value rows for one object (nested objects as ``Outer.Inner``)."""
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column("Field", style="bold", no_wrap=True)
    table.add_column("Value", overflow="fold")
    for key, value in _flatten(body):
        table.add_row(Text(key), _cell(value))
    return table


def list_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, title: str, caption: str = "",
    wide: bool = False,
) -> Table:
    """Rows under ``columns``; without ``wide`` the ``wide_only`` ones are left out."""
    columns = [column for column in columns if wide or not column.wide_only]
    table = Table(title=Text(title), caption=Text(caption) if caption else None,
                  title_justify="left", caption_justify="left")
    for column in columns:
        table.add_column(column.header, no_wrap=column.no_wrap, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(_lookup(row, column.key)) for column in columns))
    return table


def _lookup(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def page_caption(body: Mapping[str, Any], noun: str) -> str:
    """``page 1 of 3, 25 templates`` from ICE's ``PageNo``/``PageSize``/``TotalCount``."""
    total = int(body.get("TotalCount") or 0)
    size = max(int(body.get("PageSize") or 1), 1)
    pages = max((total + size - 1) // size, 1)
    return f"page {body.get('PageNo', 1)} of {pages}, {total} {noun}"


def stdout_console(file: TextIO | None = None) -> Console:
    """A console on stdout, or on ``file`` (the stream stdout was, where it is redirected)."""
    return Console(file=file, soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=False)
