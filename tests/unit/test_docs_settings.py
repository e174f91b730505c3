"""docs/configuration.md names every setting of ``livesnap serve`` by its environment variable."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic.fields import FieldInfo

from livesnap.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def settings_fields() -> dict[str, FieldInfo]:
    """Every setting of every group (``LIVESNAP_<NAME>``)."""
    return {name: field for group in Settings.groups().values()
            for name, field in group.model_fields.items()}


def documented() -> dict[str, str]:
    """Environment name → the first cell after it (the default) of every table row."""
    rows = re.findall(r"^\| `(LIVESNAP_[A-Z0-9_]+)` \| ([^|]*) \|", DOC.read_text(), re.M)
    return dict(rows)


def test_every_setting_has_a_row_with_its_default():
    rows = documented()
    missing = [f"LIVESNAP_{name.upper()}" for name in settings_fields()
               if f"LIVESNAP_{name.upper()}" not in rows]
    assert missing == []
    assert all(default.strip() for default in rows.values())


def test_documented_numeric_defaults_match_the_code():
    rows = documented()
    wrong = []
    for name, field in settings_fields().items():
        default = field.default
        if isinstance(default, bool) or not isinstance(default, int | float):
            continue
        shown = rows[f"LIVESNAP_{name.upper()}"].strip().strip("`")
        if float(shown) != float(default):
            wrong.append(f"LIVESNAP_{name.upper()}: docs {shown}, code {default}")
    assert wrong == []


def test_no_row_names_a_setting_that_does_not_exist():
    known = {f"LIVESNAP_{name.upper()}" for name in settings_fields()}
    assert sorted(set(documented()) - known) == []
