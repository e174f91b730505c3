"""Persistence adapters for ``livesnap.jobs.ports.Store``.

``SqlStore`` (SQLite or PostgreSQL, built by ``open_sql_store``) and ``MemoryStore``; the
schema is in ``tables.py`` and its Alembic migrations in ``migrations/`` (``migrate``).
"""

from livesnap.store.memory import MemoryStore
from livesnap.store.migrate import migrate
from livesnap.store.sql import SqlStore, open_sql_store

__all__ = ["MemoryStore", "SqlStore", "migrate", "open_sql_store"]
