"""The client commands of the ``livesnap`` CLI: templates, jobs and files over the signed API.

Exit codes: 0 ok, 1 the server refused the request (4xx) or a wait did not succeed, 2 usage or
configuration error, 3 the server failed (5xx) or could not be reached (docs/cli.md).
"""

from __future__ import annotations

import typer

from livesnap.commands import files, jobs, storage, templates


def register(app: typer.Typer) -> None:
    """Add the ``templates``, ``jobs``, ``files`` and ``storage`` command groups to ``app``."""
    app.add_typer(templates.app, name="templates")
    app.add_typer(jobs.app, name="jobs")
    app.add_typer(files.app, name="files")
    app.add_typer(storage.app, name="storage")
