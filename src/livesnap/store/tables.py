"""The database schema, as SQLAlchemy Core tables.

Times are epoch milliseconds in ``BigInteger`` columns; enums are stored as their string
values. Migrations in ``migrations/versions`` build exactly this schema (a unit test checks).
Surrogate keys are ``BIGINT`` on PostgreSQL and ``INTEGER`` on SQLite, where only an
``INTEGER PRIMARY KEY`` is an auto-incrementing rowid alias.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()
# an outbox event still to deliver (the partial index ix_outbox_events_pending holds these),
# as SQLAlchemy writes the dispatcher's condition (SQLite's planner matches it word for word)
PENDING_WHERE = {"sqlite": "delivered_ms IS NULL AND failed = 0",
                 "postgresql": "delivered_ms IS NULL AND failed = false"}


def surrogate_key() -> BigInteger:
    """An auto-incrementing key type: BIGINT, but INTEGER (the rowid) on SQLite."""
    return BigInteger().with_variant(Integer(), "sqlite")


templates = Table(
    "templates",
    metadata,
    Column("id", String(), nullable=False),
    Column("account", String(), nullable=True),  # NULL: a system template, seen by all
    Column("name", Text(), nullable=False),
    Column("type", String(), nullable=False),
    Column("interval_s", Integer(), nullable=False),
    Column("overwrite_format", Text(), nullable=True),
    Column("sequence_format", Text(), nullable=True),
    Column("created_ms", BigInteger(), nullable=False),
    Column("modified_ms", BigInteger(), nullable=False),
    Column("image", Text(), nullable=True),  # JSON ImageOptions; NULL = defaults (0002)
    Column("connect_mode", String(), nullable=True),  # ConnectMode; NULL = auto (0005)
    PrimaryKeyConstraint("id", name="pk_templates"),
    Index("ix_templates_account_created", "account", "created_ms"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(), nullable=False),
    Column("account", String(), nullable=False),
    Column("name", Text(), nullable=False),
    Column("template_id", String(), nullable=False),  # no FK: templates may be deleted
    Column("template_name", Text(), nullable=False),
    Column("interval_s", Integer(), nullable=False),
    Column("overwrite_format", Text(), nullable=True),
    Column("sequence_format", Text(), nullable=True),
    Column("stream_url", Text(), nullable=False),
    Column("stream_type", String(), nullable=False),
    Column("storage_type", String(), nullable=False),
    Column("storage_endpoint", Text(), nullable=False),
    Column("storage_bucket", Text(), nullable=False),
    Column("callback_url", Text(), nullable=True),
    Column("status", String(), nullable=False),
    Column("created_ms", BigInteger(), nullable=False),
    Column("modified_ms", BigInteger(), nullable=False),
    Column("stream_status", String(), nullable=False),
    Column("status_reason", Text(), nullable=False),
    Column("last_error", Text(), nullable=False),
    Column("last_snapshot_ms", BigInteger(), nullable=True),
    Column("snapshot_count", BigInteger(), nullable=False),
    # ticks with no capture while started (0003)
    Column("missed_ticks", BigInteger(), nullable=False, server_default="0"),
    Column("last_sequence", BigInteger(), nullable=False),
    Column("effective_interval_ms", BigInteger(), nullable=True),
    Column("image", Text(), nullable=True),  # copied from the template at submit (0002)
    Column("connect_mode", String(), nullable=True),  # ConnectMode; NULL = auto (0005)
    PrimaryKeyConstraint("id", name="pk_jobs"),
    Index("ix_jobs_account_created", "account", "created_ms"),
    Index("ix_jobs_status", "status"),
)

files = Table(
    "files",
    metadata,
    Column("id", surrogate_key(), autoincrement=True, nullable=False),
    Column("job_id", String(), nullable=False),
    Column("account", String(), nullable=False),
    Column("create_ms", BigInteger(), nullable=False),
    Column("endpoint", Text(), nullable=False),
    Column("bucket", Text(), nullable=False),
    Column("object_key", Text(), nullable=False),
    Column("is_overlay", Boolean(), nullable=False),
    Column("overwrite_key", Text(), nullable=True),
    Column("sequence", BigInteger(), nullable=True),
    Column("width", Integer(), nullable=False),
    Column("height", Integer(), nullable=False),
    Column("size", BigInteger(), nullable=False),
    Column("stream_time_ms", BigInteger(), nullable=True),
    Column("lag_ms", BigInteger(), nullable=True),
    Column("quality", String(), nullable=True),  # the gate's verdict (0002)
    Column("skipped_frames", Integer(), nullable=False, server_default="0"),
    # "shard:epoch" of the cluster shard that recorded it (0003); NULL on a single node
    Column("writer", String(), nullable=True),
    PrimaryKeyConstraint("id", name="pk_files"),
    ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_files_job", ondelete="CASCADE"),
    # The idempotency key of record_snapshot; its index also serves list_files.
    UniqueConstraint("job_id", "create_ms", name="uq_files_job_create"),
    # whose records name an object (before deleting it: 0007)
    Index("ix_files_object", "bucket", "object_key"),
    Index("ix_files_overwrite", "bucket", "overwrite_key"),
)

# One row per capture shard name (0003): the epoch of its newest instance. Every write of a
# shard instance checks it, so an instance that a newer one replaced can no longer write.
shard_epochs = Table(
    "shard_epochs",
    metadata,
    Column("shard", String(), nullable=False),
    Column("epoch", BigInteger(), nullable=False),
    Column("taken_ms", BigInteger(), nullable=False),
    PrimaryKeyConstraint("shard", name="pk_shard_epochs"),
)

# Settings every node of a cluster must share (0008): the first node stores its value, the
# others compare theirs (shard count, Ray namespace) or read it (generated callback keys).
cluster_settings = Table(
    "cluster_settings",
    metadata,
    Column("name", String(), nullable=False),
    Column("value", String(), nullable=False),
    Column("set_ms", BigInteger(), nullable=False),
    PrimaryKeyConstraint("name", name="pk_cluster_settings"),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    # seq keeps insertion order among events created in the same millisecond.
    Column("seq", surrogate_key(), autoincrement=True, nullable=False),
    Column("id", String(), nullable=False),
    Column("job_id", String(), nullable=False),  # no FK: events may outlive their job
    Column("account", String(), nullable=False),
    Column("url", Text(), nullable=False),
    Column("type", String(), nullable=False),
    Column("data", Text(), nullable=False),  # JSON
    Column("created_ms", BigInteger(), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("next_attempt_ms", BigInteger(), nullable=False),
    Column("delivered_ms", BigInteger(), nullable=True),
    Column("failed", Boolean(), nullable=False),
    Column("last_error", Text(), nullable=False),
    # a cluster's dispatchers (0009): the one delivering the event now, and until when
    Column("claimed_by", String(), nullable=True),
    Column("claimed_until_ms", BigInteger(), nullable=True),
    PrimaryKeyConstraint("seq", name="pk_outbox_events"),
    UniqueConstraint("id", name="uq_outbox_events_id"),
    Index("ix_outbox_events_due", "delivered_ms", "failed", "next_attempt_ms"),
    Index("ix_outbox_events_job_created", "job_id", "created_ms"),
    # what a job still has to deliver, in order; only pending rows, never a job's history
    Index("ix_outbox_events_pending", "job_id", "created_ms", "seq",
          sqlite_where=text(PENDING_WHERE["sqlite"]),
          postgresql_where=text(PENDING_WHERE["postgresql"])),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", surrogate_key(), autoincrement=True, nullable=False),
    Column("event_id", String(), nullable=False),
    Column("job_id", String(), nullable=False),
    Column("at_ms", BigInteger(), nullable=False),
    Column("status_code", Integer(), nullable=True),
    Column("latency_ms", BigInteger(), nullable=False),
    Column("error", Text(), nullable=False),
    PrimaryKeyConstraint("id", name="pk_delivery_attempts"),
    ForeignKeyConstraint(
        ["event_id"], ["outbox_events.id"], name="fk_delivery_attempts_event", ondelete="CASCADE"
    ),
    Index("ix_delivery_attempts_job_at", "job_id", "at_ms"),
    # deleting events (retention) finds their attempts, and checks the foreign key, by it (0004)
    Index("ix_delivery_attempts_event", "event_id"),
)
