"""Delivery attempts indexed by their event: deleting old events (the callback retention)
deletes their attempts and checks the foreign key once per event, which without this index
scanned the whole table each time (95 events deleted a second instead of ~9 700).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_delivery_attempts_event", "delivery_attempts", ["event_id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_event", table_name="delivery_attempts")
