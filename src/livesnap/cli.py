"""The ``livesnap`` command line: the edge that reads flags and ``LIVESNAP_*`` environment."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from livesnap import __version__
from livesnap.commands import register as register_client_commands
from livesnap.config import KeyRing, Settings, load_or_create_keys, parse_access_keys
from livesnap.errors import StoreError
from livesnap.logs import setup_logging

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


def _fail(message: str) -> typer.Exit:
    typer.echo(f"livesnap: {message}", err=True)
    return typer.Exit(code=2)


def _settings(**overrides: object) -> Settings:
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise _fail(f"invalid setting {where}: {first['msg']}") from exc


def _keys(settings: Settings) -> KeyRing:
    if settings.access_keys is not None and settings.access_keys.get_secret_value().strip():
        try:
            return KeyRing(parse_access_keys(settings.access_keys.get_secret_value()))
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    keys, created = load_or_create_keys(settings.data_dir)
    if created:
        key = keys[0]
        typer.echo(
            "livesnap: generated an access key pair (shown once; kept in "
            f"{settings.data_dir / 'access-keys.json'}):\n"
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
) -> None:
    """Run the API server and capture engine (embedded defaults: SQLite, local disk)."""
    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    setup_logging(level=settings.log_level, json_lines=settings.log_json)
    keys = _keys(settings)
    from livesnap.service import port_is_free
    from livesnap.service import serve as run

    if settings.port and not port_is_free(settings.host, settings.port):
        raise _fail(f"port {settings.port} on {settings.host} is already in use")
    if settings.capture:
        from livesnap.capture.source import tune_malloc

        tune_malloc()  # before any reader thread exists (docs/performance.md)
    try:
        asyncio.run(run(settings, keys))
    except StoreError as exc:  # e.g. an unreachable database at start: one line, not a trace
        raise _fail(f"database: {exc.message}") from None


@app.command()
def migrate(
    data_dir: Annotated[Path | None, typer.Option(help=DATA_DIR_HELP)] = None,
    database_url: Annotated[str | None, typer.Option(help=DATABASE_URL_HELP)] = None,
) -> None:
    """Apply database migrations and exit (serve also does this on start)."""
    settings = _settings(data_dir=data_dir, database_url=database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from livesnap.store import open_sql_store

    async def run() -> None:
        store = await open_sql_store(settings.resolved_database_url())
        await store.close()

    try:
        asyncio.run(run())
    except StoreError as exc:
        raise _fail(f"database: {exc.message}") from None
    typer.echo("livesnap: database is up to date")


@app.command()
def version() -> None:
    """Print the livesnap version."""
    typer.echo(__version__)


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
