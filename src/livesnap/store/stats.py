"""Cheap read-only queries for monitoring: job counts by status, and a liveness ping.

Both run one statement on their own connection; database errors leave as ``StoreError``.
"""

from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from livesnap.errors import StoreError
from livesnap.store.sql import SqlStore
from livesnap.store.tables import jobs


async def job_counts(store: SqlStore) -> dict[tuple[str, str], int]:
    """``(status, stream_status) -> number of jobs``, all accounts (one GROUP BY)."""
    stmt = select(jobs.c.status, jobs.c.stream_status, func.count()).group_by(
        jobs.c.status, jobs.c.stream_status
    )
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"job_counts: the database failed ({type(exc).__name__})") from exc
    return {(str(status), str(stream)): int(count) for status, stream, count in rows}


async def ping(store: SqlStore) -> None:
    """``SELECT 1``; ``StoreError`` if the database does not answer."""
    try:
        async with store.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"ping: the database failed ({type(exc).__name__})") from exc
