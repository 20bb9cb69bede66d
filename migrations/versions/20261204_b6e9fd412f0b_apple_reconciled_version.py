"""Apple enrollments remember the desired-state version their configuration profiles were compared at

Revision ID: b6e9fd412f0b
Revises: f55bd985b397
Create Date: 2026-12-04 22:06:46.353015+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b6e9fd412f0b"
down_revision: str | None = "f55bd985b397"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "apple_enrollments", sa.Column("reconciled_version", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("apple_enrollments", "reconciled_version")
