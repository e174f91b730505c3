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
    "eventloop": set(),  # which asyncio loop a process runs (uvloop or the standard one)
    "config": {"jobs.urls", "jobs.connect", "eventloop"},
    "console": {"jobs", "config", "errors"},  # pages over JobManager; never store/ or capture/
    "client": set(),  # the SDK-free API client stands alone
    "commands": {"client"},  # CLI commands speak to a server only through the client
    # capture shards over ports: the runtime, the assignment, the engine that commands them
    "shards": {"jobs", "errors"},
    # shards as Ray actors; the actor's wiring is node/shardhost.py, passed in by cli.py
    "cluster": {"shards", "jobs", "config", "errors", "clock"},
    # the edge: one node put together (composition, hosting, HTTP server, metrics); never the
    # command line or the API client
    "node": {"api", "callbacks", "capture", "clock", "cluster", "config", "console", "errors",
             "eventloop", "jobs", "logs", "outputs", "shards", "store"},
    # the command line: starts a node, or speaks to one through the client's commands
    "cli": {"capture", "cluster", "commands", "config", "errors", "eventloop", "logs", "node",
            "shards", "store"},
    "__main__": {"cli"},
    "__init__": set(),
}
# node/ inside: service -> capturehost -> shardhost -> wiring, httpserver and metrics below all
NODE_ORDER = ["service", "capturehost", "shardhost", "wiring", "httpserver", "metrics"]
PURE_JOBS_FORBIDDEN = {"asyncio", "av", "httpx", "sqlalchemy", "aiosqlite", "asyncpg", "starlette"}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from livesnap.pkg import module` imports that module (its package is the one
            # it sits in, already importing); `from livesnap.pkg import name` the package
            modules = {f"{node.module}.{alias.name}" for alias in node.names
                       if _module_path(f"{node.module}.{alias.name}") is not None}
            names.update(modules)
            if len(modules) < len(node.names):
                names.add(node.module)
    return names


def _module_path(name: str) -> Path | None:
    """The file of livesnap module ``name`` (a package's ``__init__``), or None."""
    if not name.startswith("livesnap."):
        return None
    base = ROOT.joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("livesnap", *parts))


def import_graph() -> dict[str, set[str]]:
    """livesnap module -> the livesnap modules it imports anywhere in its file (at the top,
    in functions, under TYPE_CHECKING: an import inside a function still makes a cycle)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        targets = {name for name in imports_of(path) if _module_path(name) is not None}
        graph[_module_name(path)] = targets - {_module_name(path)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


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
            problems.append(f"{'/'.join(parts)} has no row in ALLOWED")
            continue
        for name in imports_of(path):
            if not name.startswith("livesnap."):
                continue
            target = name.removeprefix("livesnap.")
            if target.split(".")[0] == top:
                continue
            if not allowed(target, ALLOWED[top]):
                problems.append(f"{'/'.join(parts)} imports {name}")
    assert problems == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_node_modules_import_one_way():
    # service -> capturehost -> shardhost -> wiring: nothing imports a module left of it
    problems = []
    graph = import_graph()
    for position, name in enumerate(NODE_ORDER):
        for target in graph[f"livesnap.node.{name}"]:
            inner = target.removeprefix("livesnap.node.")
            if inner in NODE_ORDER and NODE_ORDER.index(inner) < position:
                problems.append(f"node/{name} imports node/{inner}")
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
