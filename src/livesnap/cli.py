"""The ``livesnap`` command line: the edge that reads flags and ``LIVESNAP_*`` environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer
from pydantic import ValidationError

from livesnap import __version__, eventloop
from livesnap.commands import register as register_client_commands
from livesnap.commands.output import Column, list_table, stdout_console
from livesnap.config import (
    KeyRing,
    Settings,
    load_or_create_keys,
    parse_access_keys,
    storage_account_problem,
)
from livesnap.errors import ClusterMismatch, RebalanceRefused, StoreError
from livesnap.logs import setup_logging

if TYPE_CHECKING:
    from rich.table import Table

    from livesnap.store import SqlStore

T = TypeVar("T")

app = typer.Typer(
    help="livesnap: live-stream snapshots behind an Alibaba Cloud ICE-compatible API.",
    no_args_is_help=True,
    add_completion=False,
)


HOST_HELP = "Address to listen on (env LIVESNAP_HOST; default 127.0.0.1)."
PORT_HELP = "Port to listen on (env LIVESNAP_PORT; default 8080)."
DATA_DIR_HELP = (
    "Data directory: database, keys, local storage "
    "(env LIVESNAP_DATA_DIR; default ./livesnap-data)."
)
DATABASE_URL_HELP = (
    "SQLAlchemy URL, e.g. postgresql+asyncpg://… "
    "(env LIVESNAP_DATABASE_URL; default SQLite in the data dir)."
)
ENGINE_HELP = (
    "local: capture in this process; process: in a child process, apart from the API; "
    "ray: send capture to the cluster's shards (env LIVESNAP_ENGINE; default local)."
)
CAPTURE_PROCESSES_HELP = (
    "Capture processes: 1 keeps capture in this process (or one child with --engine process), "
    "N runs N child processes, 0 one per CPU core (env LIVESNAP_CAPTURE_PROCESSES; default 1)."
)
RAY_ADDRESS_HELP = "Ray cluster address (env LIVESNAP_RAY_ADDRESS; default: this host's node)."
SHARDS_HELP = "Number of capture shards, named shard-0 … (env LIVESNAP_SHARDS; default 4)."
TLS_CERT_HELP = (
    "PEM certificate, with its intermediates (full chain): serve HTTPS instead of HTTP; "
    "needs --tls-key (env LIVESNAP_TLS_CERT)."
)
TLS_KEY_HELP = "Unencrypted PEM private key of --tls-cert (env LIVESNAP_TLS_KEY)."


def _fail(message: str) -> typer.Exit:
    typer.echo(f"livesnap: {message}", err=True)
    return typer.Exit(code=2)


def _settings(**overrides: object) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise _fail(f"invalid setting {where}: {message}" if where
                    else f"invalid settings: {message}") from exc


def _keys(settings: Settings) -> KeyRing:
    given = settings.server.access_keys
    if given is not None and given.get_secret_value().strip():
        try:
            return KeyRing(parse_access_keys(given.get_secret_value()))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    keys, created = load_or_create_keys(settings.server.data_dir)
    if created:
        key = keys[0]
        typer.echo(
            "livesnap: generated an access key pair (shown once; kept in "
            f"{settings.server.data_dir / 'access-keys.json'}):\n"
            f"  AccessKeyId:     {key.id}\n  AccessKeySecret: {key.secret}",
            err=True,
        )
    return KeyRing(keys)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help=HOST_HELP)] = None,
    port: Annotated[int | None, typer.Option(help=PORT_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
    engine: Annotated[str | None, typer.Option(help=ENGINE_HELP)] = None,
    capture_processes: Annotated[
        int | None, typer.Option(help=CAPTURE_PROCESSES_HELP, min=0)] = None,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS_HELP)] = None,
    tls_cert: Annotated[Path | None, typer.Option(help=TLS_CERT_HELP)] = None,
    tls_key: Annotated[Path | None, typer.Option(help=TLS_KEY_HELP)] = None,
) -> None:
    """Run the API server and capture engine (embedded defaults: SQLite, local disk)."""
    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url,
                         engine=engine, capture_processes=capture_processes,
                         ray_address=ray_address, tls_cert=tls_cert, tls_key=tls_key)
    setup_logging(level=settings.server.log_level, json_lines=settings.server.log_json)
    from livesnap.node.httpserver import tls_problem
    from livesnap.node.service import port_is_free
    from livesnap.node.service import serve as run

    problem = tls_problem(settings.server.tls_cert, settings.server.tls_key)
    if problem:
        raise _fail(problem)
    keys = _keys(settings)
    problem = storage_account_problem(settings.storage.storage_credentials(), keys.accounts)
    if problem:
        raise _fail(problem)
    if settings.server.port and not port_is_free(settings.server.host, settings.server.port):
        raise _fail(f"port {settings.server.port} on {settings.server.host} is already in use")
    if settings.capture.capture and settings.capture.engine == "local":
        from livesnap.capture.source import tune_malloc

        tune_malloc()  # before any reader thread exists (docs/performance.md)
    try:
        eventloop.run(run(settings, keys), settings.server.event_loop)
    except StoreError as exc:  # e.g. an unreachable database at start: one line, not a trace
        raise _fail(f"database: {exc.message}") from None
    except ClusterMismatch as exc:
        raise _fail(exc.message) from None


@app.command()
def migrate(
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
) -> None:
    """Apply database migrations and exit (serve also does this on start)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    settings.server.data_dir.mkdir(parents=True, exist_ok=True)
    _migrate(settings)
    typer.echo("livesnap: database is up to date")


def _migrate(settings: Settings, *, cluster: bool = False) -> None:
    """Bring the database schema up to date (``cluster``: and make this command's shard
    count and Ray namespace the cluster's); a database error is one line, exit 2."""
    from livesnap.node.wiring import agree_with_cluster

    async def agree(store: SqlStore) -> None:
        if cluster:
            await agree_with_cluster(settings, store, (), int(time.time() * 1000),
                                     authoritative=True)

    _on_database(settings, agree)


def _on_database(
    settings: Settings, action: Callable[[SqlStore], Awaitable[T]], *, migrate: bool = True,
    failing: str = "database",
) -> T:
    """Open the database (migrated, unless ``migrate`` is false), run ``action`` on it and
    close it; a database error (``failing: …``) or a cluster mismatch is one line, exit 2."""
    from livesnap.store import open_sql_store

    async def run() -> T:
        store = await open_sql_store(settings.server.resolved_database_url(), migrate=migrate)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except StoreError as exc:
        raise _fail(f"{failing}: {exc.message}") from None
    except ClusterMismatch as exc:
        raise _fail(exc.message) from None


def _is_cluster_database(settings: Settings) -> bool:
    """A cluster shares one PostgreSQL database."""
    return settings.server.resolved_database_url().startswith(("postgresql", "postgres"))


@app.command()
def version() -> None:
    """Print the livesnap version."""
    typer.echo(__version__)


cluster_app = typer.Typer(help="Capture shards on a Ray cluster (docs/cluster.md).",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


def _cluster_settings(**overrides: object) -> Settings:
    settings = _settings(**overrides)
    if not _is_cluster_database(settings):
        raise _fail("cluster mode needs a PostgreSQL --database-url shared by every node")
    setup_logging(level="WARNING", json_lines=settings.server.log_json)
    return settings


@contextlib.contextmanager
def _joined(settings: Settings) -> Iterator[TextIO]:
    """Join the Ray cluster for one command; yields the stream the command's output goes to.

    Ray's driver prints the cluster's error messages (a raylet that died, a worker that
    crashed) on ``sys.stdout``, from a thread of its own, at any moment. A command's stdout is
    its output (``cluster status --json`` is read line by line), so while the command runs,
    ``sys.stdout`` is its stderr and the output goes to the stream stdout was."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            from livesnap.cluster.rayengine import connect
        except ImportError as exc:
            raise _fail(f"Ray is not installed ({exc.name}): pip install 'livesnap[ray]'") from None
        try:
            connect(settings.cluster.ray_address, settings.cluster.ray_namespace,
                    settings.cluster.ray_temp_dir)
        except (ConnectionError, RuntimeError) as exc:
            raise _fail(f"cannot join the Ray cluster: {str(exc).splitlines()[0]}") from None
        yield out


@cluster_app.command("up")
def cluster_up(
    shards: Annotated[int | None, typer.Option(help=SHARDS_HELP)] = None,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS_HELP)] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    resource: Annotated[str | None, typer.Option(
        help="A custom Ray resource each shard needs one unit of, e.g. shard "
             "(env LIVESNAP_SHARD_RESOURCE).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for every shard.")] = 60.0,
) -> None:
    """Migrate the database and create the capture shards that do not exist yet."""
    settings = _cluster_settings(shards=shards, ray_address=ray_address,
                                 database_url=database_url, data_dir=data_dir,
                                 shard_resource=resource)
    _migrate(settings, cluster=True)
    with _joined(settings) as out:
        from livesnap.cluster.rayengine import cluster_status, launch_shards
        from livesnap.node.shardhost import ShardHost
        from livesnap.shards.assign import shard_names

        names = shard_names(settings.cluster.shards)
        launch_shards(ShardHost, settings, names, resource=settings.cluster.shard_resource)
        deadline = time.monotonic() + wait
        while True:
            rows = cluster_status(names, settings.cluster.ray_namespace)
            if all(r["state"] == "running" for r in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        _print_status(rows, out)
    if not all(r["state"] == "running" for r in rows):
        raise _fail("not every shard is running yet (see the table)")


@cluster_app.command("status")
def cluster_status_cmd(
    shards: Annotated[int | None, typer.Option(help=SHARDS_HELP)] = None,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS_HELP)] = None,
    resource: Annotated[str | None, typer.Option(
        help="The custom Ray resource shards take, shown per node (env "
             "LIVESNAP_SHARD_RESOURCE; default shard).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per shard and line, then one line {\"nodes\": [...]}."
    )] = False,
) -> None:
    """Shards (node, job counts, epochs, missed ticks, reconcile lag) and Ray's nodes (alive
    or dead, free resources, the shards on each)."""
    settings = _settings(shards=shards, ray_address=ray_address, shard_resource=resource)
    setup_logging(level="WARNING", json_lines=settings.server.log_json)
    with _joined(settings) as out:
        from livesnap.cluster.rayengine import cluster_status, gcs_storage, node_status
        from livesnap.shards.assign import shard_names

        rows = cluster_status(shard_names(settings.cluster.shards),
                              settings.cluster.ray_namespace)
        nodes = node_status(rows, settings.cluster.shard_resource or "shard")
        storage = gcs_storage()
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row, default=str), file=out)
            typer.echo(json.dumps({"nodes": nodes, "gcs_storage": storage}, default=str),
                       file=out)
        else:
            _print_status(rows, out)
            typer.echo(file=out)
            stdout_console(out).print(node_table(nodes))
            typer.echo(gcs_line(storage), file=out)


def gcs_line(storage: str) -> str:
    """One line on whether the cluster survives the loss of its head (docs/cluster.md, "When
    the head fails")."""
    if storage == "redis":
        return ("GCS: fault tolerant (Redis): the shards keep capturing while the head is "
                "down; start it again with the same Redis")
    if storage == "memory":
        return ("GCS: in memory, NOT fault tolerant: if the head fails, every shard stops "
                "about 60 s later (docs/cluster.md, \"When the head fails\")")
    return f"GCS: {storage or 'storage unknown'}"


@cluster_app.command("rebalance")
def cluster_rebalance(
    shards: Annotated[int | None, typer.Option(help=SHARDS_HELP)] = None,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS_HELP)] = None,
    resource: Annotated[str | None, typer.Option(
        help="The custom Ray resource shards take: only nodes with units of it take shards, "
             "as many as they have (env LIVESNAP_SHARD_RESOURCE).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the moves, make none.")] = False,
) -> None:
    """Move shards so that every live node holds a fair share (the floor or the ceiling of
    shards/nodes), one shard at a time: its jobs pause for a tick or two while it moves."""
    settings = _settings(shards=shards, ray_address=ray_address, shard_resource=resource)
    setup_logging(level="WARNING", json_lines=settings.server.log_json)
    with _joined(settings) as out:
        from livesnap.cluster.rayengine import rebalance
        from livesnap.node.shardhost import ShardHost
        from livesnap.shards.assign import shard_names

        try:
            moves = rebalance(
                ShardHost, shard_names(settings.cluster.shards), settings.cluster.ray_namespace,
                resource=settings.cluster.shard_resource, dry_run=dry_run,
                report=lambda line: typer.echo(f"livesnap: {line}", file=out))
        except RebalanceRefused as exc:
            raise _fail(str(exc)) from None
        if not moves:
            typer.echo("livesnap: every node holds a fair share already; nothing to move",
                       file=out)
        elif not dry_run:
            typer.echo(f"livesnap: moved {len(moves)} shard(s)", file=out)


@cluster_app.command("down")
def cluster_down(
    shards: Annotated[int | None, typer.Option(help=SHARDS_HELP)] = None,
    ray_address: Annotated[str | None, typer.Option(help=RAY_ADDRESS_HELP)] = None,
) -> None:
    """Stop every shard's streams and remove the shard actors (jobs stay as they are)."""
    settings = _settings(shards=shards, ray_address=ray_address)
    setup_logging(level="WARNING", json_lines=settings.server.log_json)
    with _joined(settings) as out:
        from livesnap.cluster.rayengine import remove_shards
        from livesnap.shards.assign import shard_names

        removed = remove_shards(shard_names(settings.cluster.shards),
                                settings.cluster.ray_namespace)
        typer.echo(f"livesnap: removed {len(removed)} shard(s)", file=out)
        marked = _mark_started_jobs(settings, CLUSTER_DOWN_NOTE) if removed else 0
        if marked:
            typer.echo(f"livesnap: {marked} started job(s) wait for the next 'livesnap cluster "
                       "up' (their LastError says so)", file=out)


CLUSTER_DOWN_NOTE = ("capture shards removed by 'livesnap cluster down': the job captures again "
                     "after the next 'livesnap cluster up'")


def _mark_started_jobs(settings: Settings, note: str) -> int:
    """Say in every started job's ``LastError`` why it captures nothing (its shard is gone;
    the status stays ``started``, so the next ``cluster up`` resumes it); how many."""
    if not _is_cluster_database(settings):
        return 0  # not a cluster's database: nothing to say it in
    from livesnap.node.wiring import note_on_started_jobs

    return _on_database(settings, lambda store: note_on_started_jobs(
        store, note, int(time.time() * 1000)), migrate=False,
        failing="shards removed, but the jobs could not be marked")


def _print_status(rows: list[dict[str, object]], out: TextIO) -> None:
    now = time.time()
    typer.echo(f"{'SHARD':<10} {'STATE':<12} {'NODE':<16} {'PID':>7} {'EPOCH':>5} "
               f"{'JOBS':>5} {'MISSED':>6} {'LAG_S':>6}", file=out)
    for r in rows:
        last = r.get("last_reconcile_at")
        lag = f"{now - float(last):.1f}" if isinstance(last, int | float) else "-"
        typer.echo(f"{r['name']!s:<10} {r['state']!s:<12} {r.get('node_address', '')!s:<16} "
                   f"{r.get('pid', '')!s:>7} {r.get('epoch', '')!s:>5} {r.get('jobs', '')!s:>5} "
                   f"{r.get('missed_ticks', '')!s:>6} {lag:>6}", file=out)


def node_table(nodes: Sequence[Mapping[str, Any]]) -> Table:
    """Ray's nodes for people, in 80 columns: the first 8 characters of the node id (enough
    to tell nodes apart; ``--json`` has it whole), free/total units of the shards' resource
    and of CPUs, and the shards on each node (wrapped between names)."""
    resource = str(nodes[0]["resource"]) if nodes else "shard"
    columns = [Column("node", "Node", no_wrap=True), Column("address", "Address", no_wrap=True),
               Column("state", "State", no_wrap=True), Column("free", resource, no_wrap=True),
               Column("cpu", "CPU", no_wrap=True), Column("shards", "Shards on it")]
    rows = [{
        "node": f"{str(n['node_id'])[:8]}{' head' if n['head'] else ''}",
        "address": n["address"],
        "state": "alive" if n["alive"] else "dead",
        "free": _free_of_total(n["resource_free"], n["resource_total"]),
        "cpu": _free_of_total(n["cpu_free"], n["cpu_total"]),
        "shards": " ".join(n["shards"]),
    } for n in nodes]
    return list_table(rows, columns, title="Ray nodes", caption=(
        f"{resource}, CPU: free/total units (- free: unknown, for a dead node or one that "
        "has just joined)"))


def _free_of_total(free: object, total: object) -> str:
    if total is None:
        return ""
    return f"{'-' if free is None else free}/{total}"


register_client_commands(app)  # templates, jobs, files: livesnap/commands/


def main() -> None:
    """Console entry point. A usage error is one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)  # Exit(n) comes back as n in this mode
    except typer.TyperException as exc:  # Typer's (click's) usage and parameter errors
        status = int(getattr(exc, "exit_code", 2))
        render = getattr(exc, "format_message", None)
        message = " ".join(str(render() if callable(render) else exc).split())
        ctx = getattr(exc, "ctx", None)
        if not message:  # no arguments: the help was printed already
            sys.exit(status)
        if status == 2:
            where = ctx.command_path if ctx is not None else "livesnap"
            message = f"usage: {message} (see '{where} --help')"
        typer.echo(f"livesnap: {message}", err=True)
        sys.exit(status)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
