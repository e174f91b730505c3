"""The initial schema: templates, jobs, files, outbox events, delivery attempts.

Written by hand (not generated from ``tables.py``, which moves on with later revisions);
``tests/unit/test_migrations.py`` checks that the result equals ``tables.py``.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _surrogate_key() -> sa.BigInteger:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _create_templates() -> None:
    op.create_table(
        "templates",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("overwrite_format", sa.Text(), nullable=True),
        sa.Column("sequence_format", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("modified_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_templates"),
    )
    op.create_index("ix_templates_account_created", "templates", ["account", "created_ms"])


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("template_id", sa.String(), nullable=False),
        sa.Column("template_name", sa.Text(), nullable=False),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("overwrite_format", sa.Text(), nullable=True),
        sa.Column("sequence_format", sa.Text(), nullable=True),
        sa.Column("stream_url", sa.Text(), nullable=False),
        sa.Column("stream_type", sa.String(), nullable=False),
        sa.Column("storage_type", sa.String(), nullable=False),
        sa.Column("storage_endpoint", sa.Text(), nullable=False),
        sa.Column("storage_bucket", sa.Text(), nullable=False),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("modified_ms", sa.BigInteger(), nullable=False),
        sa.Column("stream_status", sa.String(), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_snapshot_ms", sa.BigInteger(), nullable=True),
        sa.Column("snapshot_count", sa.BigInteger(), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("effective_interval_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_account_created", "jobs", ["account", "created_ms"])
    op.create_index("ix_jobs_status", "jobs", ["status"])


def _create_files() -> None:
    op.create_table(
        "files",
        sa.Column("id", _surrogate_key(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("create_ms", sa.BigInteger(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("bucket", sa.Text(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("is_overlay", sa.Boolean(), nullable=False),
        sa.Column("overwrite_key", sa.Text(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stream_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("lag_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_files"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_files_job", ondelete="CASCADE"),
        sa.UniqueConstraint("job_id", "create_ms", name="uq_files_job_create"),
    )


def _create_outbox_events() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("seq", _surrogate_key(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_ms", sa.BigInteger(), nullable=True),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox_events"),
        sa.UniqueConstraint("id", name="uq_outbox_events_id"),
    )
    op.create_index(
        "ix_outbox_events_due", "outbox_events", ["delivered_ms", "failed", "next_attempt_ms"]
    )
    op.create_index("ix_outbox_events_job_created", "outbox_events", ["job_id", "created_ms"])


def _create_delivery_attempts() -> None:
    op.create_table(
        "delivery_attempts",
        sa.Column("id", _surrogate_key(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("job_id", sa.String(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_attempts"),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["outbox_events.id"],
            name="fk_delivery_attempts_event",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_delivery_attempts_job_at", "delivery_attempts", ["job_id", "at_ms"])


def upgrade() -> None:
    _create_templates()
    _create_jobs()
    _create_files()
    _create_outbox_events()
    _create_delivery_attempts()


def downgrade() -> None:
    for table in ("delivery_attempts", "outbox_events", "files", "jobs", "templates"):
        op.drop_table(table)
