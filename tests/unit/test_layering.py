"""The import table of docs/architecture.md, enforced by reading the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import livesnap

ROOT = Path(livesnap.__file__).parent

# package -> livesnap packages/modules it may import (besides itself)
ALLOWED = {
    "jobs": {"errors", "clock"},
    "api": {"jobs", "config", "errors", "clock"},
    "store": {"jobs", "errors"},
    "capture": {"jobs", "outputs.base", "config", "errors", "clock"},
    "outputs": {"errors", "config"},
    "callbacks": {"jobs", "config", "errors", "clock"},
    "errors": set(),
    "clock": set(),
    "logs": set(),
    "config": {"jobs.urls", "jobs.connect"},
    "console": {"jobs", "config", "errors"},  # pages over JobManager; never store/ or capture/
    "client": set(),  # the SDK-free API client stands alone
    "commands": {"client"},  # CLI commands speak to a server only through the client
    "httpserver": {"api"},
    # shards over ports; the actor's wiring is shardhost.py (the edge), passed in by cli.py
    "cluster": {"jobs", "config", "errors", "clock"},  # the HTTP/1.1 protocol borrows only the API's error envelope
}
PURE_JOBS_FORBIDDEN = {"asyncio", "av", "httpx", "sqlalchemy", "aiosqlite", "asyncpg", "starlette"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield path, rel.parts


def allowed(target: str, rules: set[str]) -> bool:
    return any(target == r or target.startswith(r + ".") for r in rules)


def test_packages_import_only_what_the_table_allows():
    problems = []
    for path, parts in modules():
        top = parts[0]
        if top not in ALLOWED:
            continue  # cli.py, service.py, __main__: the composition root imports everything
        for name in imports_of(path):
            if not name.startswith("livesnap."):
                continue
            target = name.removeprefix("livesnap.")
            if target.split(".")[0] == top:
                continue
            if not allowed(target, ALLOWED[top]):
                problems.append(f"{'/'.join(parts)} imports {name}")
    assert problems == []


def test_only_capture_imports_av():
    offenders = [
        "/".join(parts)
        for path, parts in modules()
        if parts[0] != "capture" and any(n == "av" or n.startswith("av.") for n in imports_of(path))
    ]
    assert offenders == []


def test_pure_domain_modules_do_no_io():
    offenders = []
    for path, parts in modules():
        if parts[0] != "jobs" or parts[-1] == "manager":
            continue
        bad = {n.split(".")[0] for n in imports_of(path)} & PURE_JOBS_FORBIDDEN
        if bad:
            offenders.append(f"{'/'.join(parts)}: {sorted(bad)}")
    assert offenders == []


def test_wire_names_stay_in_api():
    # PascalCase ICE response names must not leak into the domain
    for path, parts in modules():
        if parts[0] == "jobs":
            text = path.read_text()
            for wire in ("OssObject", "CreateTimestamp", "TemplateList", "RequestId"):
                assert wire not in text, f"{'/'.join(parts)} mentions {wire}"


def test_public_surface_is_pinned():
    assert livesnap.__all__ == ["__version__"]
