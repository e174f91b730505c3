"""Every log call in api/, capture/ and jobs/ carries ``action``, and ``job_id`` when it can.

Read from the source with ``ast``: a call ``logger.<level>(…, extra={…})`` must name
``action`` in a literal ``extra`` dict; if the enclosing function has a job id at hand (a
``job_id`` name, or a ``job`` / ``self.job`` / ``session.job``), ``job_id`` must be there too,
except on summary lines over many jobs (they carry a ``count``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import livesnap

ROOT = Path(livesnap.__file__).parent
PACKAGES = ("api", "capture", "jobs")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _keys(call: ast.Call) -> set[str] | None:
    extra = next((k.value for k in call.keywords if k.arg == "extra"), None)
    if not isinstance(extra, ast.Dict):
        return None
    keys = {k.value for k in extra.keys if isinstance(k, ast.Constant)}
    if any(k is None for k in extra.keys):  # **spread: trust it to carry the ids
        keys.add("job_id")
    return keys


def _has_job(fn: ast.AST) -> bool:
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and node.id in ("job_id", "job"):
            return True
        if isinstance(node, ast.arg) and node.arg in ("job_id", "job"):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "job":
            return True
    return False


def _log_calls(fn: ast.AST):
    for node in ast.walk(fn):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "logger"):
            yield node


def problems() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for fn in ast.walk(tree):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for call in _log_calls(fn):
                    keys = _keys(call)
                    where = f"{path.relative_to(ROOT)}:{call.lineno}"
                    if keys is None or "action" not in keys:
                        found.append(f"{where}: no action")
                    elif _has_job(fn) and "job_id" not in keys and "count" not in keys:
                        found.append(f"{where}: no job_id")
    return sorted(set(found))


def test_log_calls_carry_action_and_job_id():
    assert problems() == []
