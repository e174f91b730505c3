"""How a job holds its stream: ``connect_mode`` on templates and jobs (NULL means ``auto``,
so every template and job written before keeps the default).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("templates", sa.Column("connect_mode", sa.String(), nullable=True))
    op.add_column("jobs", sa.Column("connect_mode", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("connect_mode")
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("connect_mode")
