"""Apple MDM commands: each step a device receives (CommandUUID), its status, result and ErrorChain

Revision ID: e1319e8c27b7
Revises: 550f9f42ac6d
Create Date: 2026-12-04 21:41:51.800969+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "e1319e8c27b7"
down_revision: str | None = "550f9f42ac6d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apple_commands",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("device_command_id", sa.UUID(), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("request_type", sa.String(length=64), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_now_count", sa.Integer(), nullable=False),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error_chain", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_command_id"],
            ["device_commands.id"],
            name=op.f("fk_apple_commands_device_command_id_device_commands"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_apple_commands_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apple_commands")),
    )
    op.create_index(
        op.f("ix_apple_commands_device_command_id"), "apple_commands", ["device_command_id"], unique=False
    )
    op.create_index(op.f("ix_apple_commands_device_id"), "apple_commands", ["device_id"], unique=False)
    op.create_index(
        "ix_apple_commands_open",
        "apple_commands",
        ["device_id", "created_at", "step"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'sent', 'not_now')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_apple_commands_open",
        table_name="apple_commands",
        postgresql_where=sa.text("status IN ('queued', 'sent', 'not_now')"),
    )
    op.drop_index(op.f("ix_apple_commands_device_id"), table_name="apple_commands")
    op.drop_index(op.f("ix_apple_commands_device_command_id"), table_name="apple_commands")
    op.drop_table("apple_commands")
