"""Fencing for capture shards on Ray: one epoch per shard name, and the writer of each file;
the ticks each job missed while started.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shard_epochs",
        sa.Column("shard", sa.String(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("taken_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("shard", name="pk_shard_epochs"),
    )
    op.add_column("files", sa.Column("writer", sa.String(), nullable=True))
    op.add_column(
        "jobs", sa.Column("missed_ticks", sa.BigInteger(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("missed_ticks")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("writer")
    op.drop_table("shard_epochs")
