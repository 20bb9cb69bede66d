"""Apple push queue: one row per device waiting for an APNs wake-up, so that wake-ups coalesce.

Revision ID: f55bd985b397
Revises: e1319e8c27b7
Create Date: 2026-12-04 21:49:12.777231+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f55bd985b397"
down_revision: str | None = "e1319e8c27b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apple_push_queue",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.SmallInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_apple_push_queue_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_apple_push_queue")),
    )
    op.create_index(op.f("ix_apple_push_queue_due_at"), "apple_push_queue", ["due_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_apple_push_queue_due_at"), table_name="apple_push_queue")
    op.drop_table("apple_push_queue")
