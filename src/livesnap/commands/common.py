"""What every API command shares: connection options, the client, output, errors, exit codes.

A command is a plain function ``(cli: Cli, …own options) -> None`` wrapped by
:func:`api_command`, which adds the connection options and ``--json`` to its signature,
builds the signed client, runs it, and turns failures into one line on stderr
(``livesnap: <Code>: <Message>``) and a documented exit code.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement

from livesnap.client import ApiError, ClientError, Credentials, IceClient, Params, TransportError
from livesnap.commands.output import json_text, stderr_console, stdout_console
from livesnap.commands.profile import ConfigError, ConnectionFlags, resolve_connection


class ExitCode(IntEnum):
    OK = 0
    API_ERROR = 1  # the server refused the request (4xx), or a wait ended without success
    USAGE = 2  # bad flags or arguments, missing or invalid configuration
    SERVER = 3  # the server failed (5xx) or could not be reached


class CommandError(Exception):
    """A failure found by the CLI itself, reported like an API error."""

    def __init__(self, code: str, message: str, exit_code: ExitCode = ExitCode.API_ERROR) -> None:
        super().__init__(message)
        self.code, self.message, self.exit_code = code, message, exit_code


UNBOUNDED_WIDTH = 100_000  # what a --wide table is measured against


class Cli:
    """What a command works with: the signed client and the output mode."""

    def __init__(
        self, client: IceClient, *, as_json: bool, out: Console, err: Console
    ) -> None:
        self.client = client
        self.as_json = as_json
        self.out = out
        self.err = err

    def call(self, action: str, params: Params = ()) -> dict[str, Any]:
        return self.client.call(action, params)

    def show(
        self, body: Any, render: Callable[[], RenderableType | str], *, wide: bool = False
    ) -> None:
        """The raw JSON with ``--json``, else what ``render`` draws: fitted to the terminal,
        or with ``wide`` at its natural width however wide the terminal is."""
        if self.as_json:
            typer.echo(json_text(body))
            return
        drawn = render()
        fitted = self.out.width
        if wide:  # rich never draws wider than its console: widen it for this table
            unbounded = self.out.options.update_width(UNBOUNDED_WIDTH)
            self.out.width = max(Measurement.get(self.out, unbounded, drawn).maximum, fitted)
        try:  # names and ids are data: never read as rich markup
            self.out.print(drawn, markup=False, highlight=False)
        finally:
            self.out.width = fitted

    @contextlib.contextmanager
    def waiting(self, message: str) -> Iterator[None]:
        """A spinner on stderr while something slow happens (only on a terminal)."""
        if self.as_json or not self.err.is_terminal:
            yield
            return
        with self.err.status(message):
            yield

    def wait_for(
        self, message: str, check: Callable[[], bool], *, timeout_s: float, step_s: float = 0.5
    ) -> bool:
        """Poll ``check`` under a spinner until it is true or ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        with self.waiting(message):
            while True:
                if check():
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(step_s)


# --------------------------------------------------------------------------- options

CONNECTION = "Connection (also from LIVESNAP_* variables or ~/.livesnap/config.toml)"

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw response JSON (scripts).")]
WideFlag = Annotated[bool, typer.Option(
    "--wide", help="Every column at full width (the table may be wider than the terminal); "
    "without it, tables fit 80 columns.")]
ProfileOpt = Annotated[str | None, typer.Option(
    "--profile", help="Profile in the config file.", rich_help_panel=CONNECTION)]
EndpointOpt = Annotated[str | None, typer.Option(
    "--endpoint", help="Server URL (default http://127.0.0.1:8080).", rich_help_panel=CONNECTION)]
KeyIdOpt = Annotated[str | None, typer.Option(
    "--access-key-id", help="Access key id.", rich_help_panel=CONNECTION)]
KeySecretOpt = Annotated[str | None, typer.Option(
    "--access-key-secret", help="Access key secret (prefer the environment or a profile).",
    rich_help_panel=CONNECTION)]
SignatureOpt = Annotated[str | None, typer.Option(
    "--signature", help="acs3 (HMAC-SHA256, default) or rpc (HMAC-SHA1).",
    rich_help_panel=CONNECTION)]
TimeoutOpt = Annotated[float | None, typer.Option(
    "--timeout", help="Seconds to wait for each answer (default 30).", min=0.1,
    rich_help_panel=CONNECTION)]

_SHARED: dict[str, tuple[Any, Any]] = {
    "as_json": (JsonFlag, False),
    "profile": (ProfileOpt, None),
    "endpoint": (EndpointOpt, None),
    "access_key_id": (KeyIdOpt, None),
    "access_key_secret": (KeySecretOpt, None),
    "signature": (SignatureOpt, None),
    "timeout": (TimeoutOpt, None),
}


def _shared_parameters() -> list[inspect.Parameter]:
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=default)
        for name, (hint, default) in _SHARED.items()
    ]


def api_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give ``fn(cli, …)`` the shared options and run it with errors turned into exit codes."""
    signature = inspect.signature(fn, eval_str=True)
    own = list(signature.parameters.values())[1:]  # the first one is the Cli

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        shared = {name: kwargs.pop(name) for name in _SHARED}
        as_json = bool(shared.pop("as_json"))
        flags = ConnectionFlags(**shared)
        run(lambda cli: fn(cli, **kwargs), flags, as_json=as_json)

    parameters = [*own, *_shared_parameters()]
    command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


# --------------------------------------------------------------------------- running


def fail(code: str, message: str, exit_code: ExitCode) -> typer.Exit:
    """Print ``livesnap: <Code>: <Message>`` as one line on stderr; the exit to raise."""
    one_line = re.sub(r"\s+", " ", message).strip()
    typer.echo(f"livesnap: {code}: {one_line}" if one_line else f"livesnap: {code}", err=True)
    return typer.Exit(code=int(exit_code))


def _client(flags: ConnectionFlags) -> IceClient:
    connection = resolve_connection(flags, os.environ)
    return IceClient(
        endpoint=connection.endpoint,
        credentials=Credentials(access_key_id=connection.access_key_id,
                                access_key_secret=connection.access_key_secret),
        scheme=connection.scheme,
        timeout_s=connection.timeout_s,
    )


def run(action: Callable[[Cli], None], flags: ConnectionFlags, *, as_json: bool) -> None:
    try:
        client = _client(flags)
    except ConfigError as exc:
        raise fail("InvalidConfig", str(exc), ExitCode.USAGE) from exc
    with client:
        cli = Cli(client, as_json=as_json, out=stdout_console(), err=stderr_console())
        try:
            action(cli)
        except ApiError as exc:
            exit_code = ExitCode.SERVER if exc.server_side else ExitCode.API_ERROR
            message = _what_to_check(exc.code, client.access_key_id) or exc.message
            raise fail(exc.code, message, exit_code) from exc
        except TransportError as exc:
            raise fail("ConnectionFailed", exc.message, ExitCode.SERVER) from exc
        except ClientError as exc:
            raise fail("ClientError", exc.message, ExitCode.SERVER) from exc
        except CommandError as exc:
            raise fail(exc.code, exc.message, exc.exit_code) from exc


def _what_to_check(code: str, key_id: str) -> str:
    """For the errors a user fixes on their side, what to check (instead of the server's
    text, which for a bad signature is the whole string it signed)."""
    where = "LIVESNAP_ACCESS_KEY_SECRET, --access-key-secret or the profile"
    if code in ("SignatureDoesNotMatch", "IncompleteSignature"):
        return f"the server refused the request's signature: check the secret for key " \
               f"{key_id} ({where})"
    if code == "InvalidAccessKeyId.NotFound":
        return f"the server knows no access key {key_id}: check the key id " \
               "(LIVESNAP_ACCESS_KEY_ID, --access-key-id or the profile)"
    return ""


# --------------------------------------------------------------------------- values

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(text: str, *, now: datetime | None = None) -> str:
    """``now``, ``15m``/``2h``/``1d`` ago, or ISO 8601 → ICE's ``yyyy-MM-ddTHH:mm:ssZ``.

    ICE's own millisecond form (``…:05.123Z``, as in ``NextStartTime``) passes through.
    """
    value = text.strip()
    current = now or datetime.now(tz=UTC)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{1,3}Z", value):
        return value
    if value.lower() == "now":
        return ice_time(current)
    match = _RELATIVE.match(value.lower())
    if match:
        return ice_time(current - timedelta(seconds=float(match[1]) * _UNITS[match[2]]))
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not a time: use ISO 8601 (2026-01-02T03:04:05Z), now, or 15m/2h/1d ago"
        ) from exc
    if stamp.tzinfo is None:
        raise typer.BadParameter(f"{text!r} has no time zone: add Z or +08:00")
    return ice_time(stamp)


def ice_time(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def paging_params(
    page: int, page_size: int, sort: str, keyword: str | None
) -> list[tuple[str, str]]:
    params = [("PageNo", str(page)), ("PageSize", str(page_size)), ("SortBy", sort)]
    if keyword:
        params.append(("SearchKeyWord", keyword))
    return params
