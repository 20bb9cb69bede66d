"""Apple enrollments (UDID, push token and magic, UnlockToken encrypted) and the devices' management channel

Revision ID: 550f9f42ac6d
Revises: d8a3f1c6e2b7
Create Date: 2026-12-04 21:33:08.015961+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "550f9f42ac6d"
down_revision: str | None = "d8a3f1c6e2b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apple_enrollments",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("udid", sa.String(length=64), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("profile_identifier", sa.String(length=255), nullable=False),
        sa.Column("push_token", sa.LargeBinary(length=100), nullable=True),
        sa.Column("push_magic", sa.String(length=64), nullable=True),
        sa.Column("unlock_token_encrypted", sa.Text(), nullable=True),
        sa.Column("awaiting_configuration", sa.Boolean(), nullable=False),
        sa.Column("authenticated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_token_update_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_token_update_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("push_state", sa.String(length=16), nullable=False),
        sa.Column("push_failed_reason", sa.String(length=64), nullable=True),
        sa.Column("last_push_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lost_mode_enabled", sa.Boolean(), nullable=True),
        sa.Column("facts", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_apple_enrollments_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_apple_enrollments")),
    )
    op.create_index(
        "uq_apple_enrollments_live_udid",
        "apple_enrollments",
        ["udid"],
        unique=True,
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.add_column(
        "devices",
        sa.Column(
            "management_channel",
            sa.Enum("agent", "apple_mdm", name="managementchannel", native_enum=False, length=16),
            server_default="agent",
            nullable=False,
        ),
    )
    op.add_column("devices", sa.Column("supervised", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "supervised")
    op.drop_column("devices", "management_channel")
    op.drop_index(
        "uq_apple_enrollments_live_udid",
        table_name="apple_enrollments",
        postgresql_where=sa.text("ended_at IS NULL"),
    )
    op.drop_table("apple_enrollments")
