"""The Alembic migrations build exactly the schema declared in ``livesnap.store.tables``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKeyConstraint, Table, UniqueConstraint, inspect, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from livesnap.store import migrate, open_sql_store
from livesnap.store.migrate import MIGRATIONS_DIR, current_revision, head_revision
from livesnap.store.sql import create_store_engine
from livesnap.store.tables import metadata

Schema = dict[str, dict[str, Any]]


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    created = create_store_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    yield created
    await created.dispose()


def declared_schema(dialect: Dialect) -> Schema:
    return {name: _declared_table(table, dialect) for name, table in metadata.tables.items()}


def _declared_table(table: Table, dialect: Dialect) -> dict[str, Any]:
    constraints = table.constraints
    return {
        "columns": {c.name: (c.type.compile(dialect), c.nullable) for c in table.columns},
        "primary_key": (table.primary_key.name, [c.name for c in table.primary_key.columns]),
        "unique": sorted(
            (u.name, tuple(u.columns.keys())) for u in constraints if type(u) is UniqueConstraint
        ),
        "indexes": sorted(
            (str(i.name), tuple(c.name for c in i.columns), bool(i.unique)) for i in table.indexes
        ),
        "foreign_keys": sorted(
            (
                fk.name,
                tuple(fk.column_keys),
                fk.referred_table.name,
                tuple(e.column.name for e in fk.elements),
                fk.ondelete,
            )
            for fk in constraints
            if isinstance(fk, ForeignKeyConstraint)
        ),
    }


def reflected_schema(conn: Connection) -> Schema:
    inspector = inspect(conn)
    names = [n for n in inspector.get_table_names() if n != "alembic_version"]
    return {name: _reflected_table(conn, name) for name in names}


def _reflected_table(conn: Connection, name: str) -> dict[str, Any]:
    inspector = inspect(conn)
    pk = inspector.get_pk_constraint(name)
    return {
        "columns": {
            c["name"]: (c["type"].compile(conn.dialect), c["nullable"])
            for c in inspector.get_columns(name)
        },
        "primary_key": (pk["name"], pk["constrained_columns"]),
        "unique": sorted(
            (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)
        ),
        "indexes": sorted(
            (i["name"], tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(name)
            if not i.get("duplicates_constraint")  # PostgreSQL lists a unique's own index
        ),
        "foreign_keys": sorted(
            (
                fk["name"],
                tuple(fk["constrained_columns"]),
                fk["referred_table"],
                tuple(fk["referred_columns"]),
                fk["options"].get("ondelete"),
            )
            for fk in inspector.get_foreign_keys(name)
        ),
    }


async def schemas(engine: AsyncEngine) -> tuple[Schema, Schema]:
    async with engine.connect() as conn:
        reflected = await conn.run_sync(reflected_schema)
    return declared_schema(engine.dialect), reflected


async def test_upgrading_an_empty_database_gives_the_declared_schema(engine: AsyncEngine) -> None:
    await migrate(engine)
    declared, reflected = await schemas(engine)
    assert sorted(reflected) == sorted(declared)
    for name in declared:
        assert reflected[name] == declared[name], name


async def test_the_declared_schema_has_what_the_store_relies_on(engine: AsyncEngine) -> None:
    declared = declared_schema(engine.dialect)
    assert ("uq_files_job_create", ("job_id", "create_ms")) in declared["files"]["unique"]
    assert declared["jobs"]["columns"]["last_sequence"] == ("BIGINT", False)
    outbox_indexes = {i[1] for i in declared["outbox_events"]["indexes"]}
    assert {("delivered_ms", "failed", "next_attempt_ms"), ("job_id", "created_ms"),
            ("job_id", "created_ms", "seq")} <= outbox_indexes
    # the retention deletes attempts by event, and SQLite checks the foreign key by it
    assert ("event_id",) in {i[1] for i in declared["delivery_attempts"]["indexes"]}


async def test_migrating_twice_changes_nothing(engine: AsyncEngine) -> None:
    await migrate(engine)
    insert = ("INSERT INTO templates VALUES ('t', NULL, 'n', 'system', 5, NULL, NULL, 1, 2, NULL,"
              " NULL)")
    async with engine.begin() as conn:
        await conn.execute(text(insert))
    _, before = await schemas(engine)
    await migrate(engine)
    _, after = await schemas(engine)
    assert after == before
    assert await current_revision(engine) == head_revision()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT id FROM templates"))).scalars().all() == ["t"]


async def test_current_revision(engine: AsyncEngine) -> None:
    assert await current_revision(engine) is None
    await migrate(engine)
    head = head_revision()
    assert head is not None
    assert await current_revision(engine) == head


async def test_open_sql_store_migrates_unless_told_not_to(tmp_path: Path) -> None:
    bare = await open_sql_store(f"sqlite:///{tmp_path / 'bare.db'}", migrate=False)
    assert await current_revision(bare.engine) is None
    await bare.close()
    store = await open_sql_store(f"sqlite:///{tmp_path / 'bare.db'}")
    assert await current_revision(store.engine) == head_revision()
    await store.close()


def test_migration_scripts_are_shipped_with_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py")) == [
        "0001_initial.py", "0002_image_options.py", "0003_shard_epochs.py",
        "0004_attempts_by_event.py", "0005_connect_mode.py", "0006_pending_events.py",
        "0007_files_by_object.py", "0008_cluster_settings.py",
        "0009_event_claims.py"]


async def test_a_jobs_pending_events_are_found_through_the_partial_index(
        engine: AsyncEngine) -> None:
    from livesnap.store.sql import _PENDING_OF_JOB

    await migrate(engine)
    sql = str(_PENDING_OF_JOB.compile(dialect=engine.dialect))
    async with engine.connect() as conn:
        plan = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ("j", 33, 0))).all()
    assert any("ix_outbox_events_pending" in str(row) for row in plan), plan
