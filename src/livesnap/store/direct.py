"""The group commit's transactions on a SQLite file, straight on the ``sqlite3`` driver.

The file records and callback attempts are written several times a second per hundred jobs
(``sql._GroupCommit``). Through SQLAlchemy each of their transactions spent about twice as much
CPU in its Python (pool check-out, execution contexts, result objects) as SQLite took to run
it; ``bench/store_writes.py`` measures both ways in one process. Here the same statements,
compiled once by SQLAlchemy for SQLite, run on one connection of the engine's, kept out of its
pool for these transactions alone. Everything else still goes through SQLAlchemy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

_DIALECT = sqlite_dialect.dialect()


class DirectStatement:
    """A statement compiled once for SQLite: its SQL text, and ``bind`` to turn named values
    into its positional parameters (values the statement holds itself, such as the ``1`` of
    ``attempts + 1``, are filled in)."""

    def __init__(self, stmt: ClauseElement, keys: Sequence[str] | None = None) -> None:
        compiled = stmt.compile(dialect=_DIALECT, column_keys=list(keys) if keys else None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self._names = tuple(compiled.positiontup or ())
        self._own = dict(compiled.params)

    def bind(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        merged = self._own | dict(values)
        return tuple([merged[name] for name in self._names])

    def execute_many(self, cursor: sqlite3.Cursor, rows: Sequence[Mapping[str, Any]]) -> None:
        cursor.executemany(self.sql, [self.bind(row) for row in rows])


class DirectInsert:
    """An INSERT compiled for the columns each row names (once per set of columns)."""

    def __init__(self, stmt: ClauseElement) -> None:
        self._stmt = stmt
        self._compiled: dict[tuple[str, ...], DirectStatement] = {}

    def of(self, values: Mapping[str, Any]) -> DirectStatement:
        keys = tuple(values)
        found = self._compiled.get(keys)
        if found is None:
            found = self._compiled[keys] = DirectStatement(self._stmt, keys)
        return found

    def execute_many(self, cursor: sqlite3.Cursor, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.of(rows[0]).execute_many(cursor, rows)


class DirectWriter:
    """One connection of ``engine`` (its pragmas and functions set by the engine's connect
    hook) taken out of the pool. Its transactions must not overlap: the store runs them under
    its write lock, one at a time, in whichever worker thread is free."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            pooled = self._engine.raw_connection()
            db = pooled.driver_connection
            if not isinstance(db, sqlite3.Connection):
                pooled.close()
                raise TypeError("the direct writer needs the sqlite3 driver")
            pooled.detach()  # the pool forgets it; close() closes it
            db.isolation_level = None  # BEGIN and COMMIT are said here, nothing implicit
            self._db = db
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """A cursor in a write transaction, committed when the block ends, rolled back if it
        raises. ``BEGIN IMMEDIATE`` takes the write lock first, waiting out busy_timeout."""
        db = self._connection()
        cursor = db.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            yield cursor
            cursor.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        finally:
            cursor.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
