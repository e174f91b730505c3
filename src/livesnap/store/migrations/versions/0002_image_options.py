"""Image options on templates and jobs; the quality verdict on files (issue: beyond ICE).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both databases: nullable, or with a default for the old rows.
    op.add_column("templates", sa.Column("image", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("image", sa.Text(), nullable=True))
    op.add_column("files", sa.Column("quality", sa.String(), nullable=True))
    op.add_column(
        "files", sa.Column("skipped_frames", sa.Integer(), nullable=False, server_default="0")
    )


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:  # SQLite drops columns by copying the table
        batch.drop_column("skipped_frames")
        batch.drop_column("quality")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("image")
    with op.batch_alter_table("templates") as batch:
        batch.drop_column("image")
