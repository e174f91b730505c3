"""Alembic environment: runs on a connection handed over by ``livesnap.store.migrate``.

There is no alembic.ini and no offline (SQL script) mode: ``migrate()`` opens a transaction,
puts its connection into ``config.attributes["connection"]`` and calls ``command.upgrade``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("livesnap migrations run only through livesnap.store.migrate()")
    context.configure(connection=connection, target_metadata=None)
    # Inside the caller's transaction, begin_transaction() does not commit on its own.
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported")
run_migrations_online()
