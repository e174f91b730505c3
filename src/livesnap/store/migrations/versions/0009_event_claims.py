"""Claims on callback events: in a cluster every API node's dispatcher polls the same
outbox, and an event is POSTed by the node that claimed it (until its claim runs out).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("claimed_by", sa.String(), nullable=True))
    op.add_column("outbox_events", sa.Column("claimed_until_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("claimed_until_ms")
        batch.drop_column("claimed_by")
