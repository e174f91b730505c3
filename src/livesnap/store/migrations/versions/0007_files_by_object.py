"""File records by the object they name: before deleting an object, livesnap checks that no
other account's record names it (its sequence or overwrite key in the same bucket), which
without these indexes reads every file record.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_files_object", "files", ["bucket", "object_key"])
    op.create_index("ix_files_overwrite", "files", ["bucket", "overwrite_key"])


def downgrade() -> None:
    op.drop_index("ix_files_overwrite", table_name="files")
    op.drop_index("ix_files_object", table_name="files")
