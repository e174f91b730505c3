"""Each job's events still to deliver, found without reading its delivered history: after
every callback attempt the dispatcher asks which events its job still has pending, and the
job index would scan every event the job ever had (a week of them at 5 s: 120 000).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# as SQLAlchemy writes the dispatcher's condition (SQLite's planner matches it word for word)
PENDING_WHERE = {"sqlite": "delivered_ms IS NULL AND failed = 0",
                 "postgresql": "delivered_ms IS NULL AND failed = false"}


def upgrade() -> None:
    op.create_index("ix_outbox_events_pending", "outbox_events", ["job_id", "created_ms", "seq"],
                    sqlite_where=sa.text(PENDING_WHERE["sqlite"]),
                    postgresql_where=sa.text(PENDING_WHERE["postgresql"]))


def downgrade() -> None:
    op.drop_index("ix_outbox_events_pending", table_name="outbox_events")
