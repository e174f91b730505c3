"""The web console at ``/console``: login, the live wall, job pages and the template editor.

Server-rendered (Jinja2) with a little plain JavaScript; see docs/console.md.
"""

from livesnap.console.app import ConsoleDeps, SnapshotReader
from livesnap.console.routes import console_routes
from livesnap.console.session import REVOKED_FILE, load_or_create_secret

__all__ = ["REVOKED_FILE", "ConsoleDeps", "SnapshotReader", "console_routes",
           "load_or_create_secret"]
