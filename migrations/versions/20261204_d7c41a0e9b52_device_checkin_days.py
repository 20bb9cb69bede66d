"""device check-in days: the days on which each device checked in (the dashboard's check-in chart)

Revision ID: d7c41a0e9b52
Revises: f2e5a167fe83
Create Date: 2026-12-04 03:05:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d7c41a0e9b52"
down_revision: str | None = "f2e5a167fe83"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_checkin_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("device_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("day", "device_id", name=op.f("pk_device_checkin_days")),
    )


def downgrade() -> None:
    op.drop_table("device_checkin_days")
