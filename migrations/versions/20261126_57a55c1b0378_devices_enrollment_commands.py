"""devices enrollment commands

Revision ID: 57a55c1b0378
Revises: f45a3dede52f
Create Date: 2026-11-26 22:25:22.917892+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "57a55c1b0378"
down_revision: str | None = "f45a3dede52f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "enrollment_tokens",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("platforms", postgresql.ARRAY(sa.String(length=16)), nullable=False),
        sa.Column("ownership", sa.String(length=16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=True),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("created_by_id", sa.UUID(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_enrollment_tokens_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_enrollment_tokens_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
    )
    op.create_table(
        "devices",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("serial_number", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("os_version", sa.String(length=64), nullable=True),
        sa.Column("os_build", sa.String(length=128), nullable=True),
        sa.Column("model", sa.String(length=256), nullable=True),
        sa.Column("manufacturer", sa.String(length=256), nullable=True),
        sa.Column("ownership", sa.String(length=16), nullable=False),
        sa.Column("management_state", sa.String(length=16), nullable=False),
        sa.Column("compliance_state", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column("primary_user", sa.String(length=256), nullable=True),
        sa.Column("enrollment_token_id", sa.UUID(), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_checkin_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_checkin_ip", sa.String(length=64), nullable=True),
        sa.Column("agent_version", sa.String(length=64), nullable=True),
        sa.Column("cpu_architecture", sa.String(length=32), nullable=True),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column("storage_total_bytes", sa.BigInteger(), nullable=True),
        sa.Column("storage_free_bytes", sa.BigInteger(), nullable=True),
        sa.Column("hostname", sa.String(length=256), nullable=True),
        sa.Column("disk_encrypted", sa.Boolean(), nullable=True),
        sa.Column("firewall_enabled", sa.Boolean(), nullable=True),
        sa.Column("screen_lock_enabled", sa.Boolean(), nullable=True),
        sa.Column("jailbroken", sa.Boolean(), nullable=True),
        sa.Column("secure_boot", sa.Boolean(), nullable=True),
        sa.Column("inventory", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("inventory_hash", sa.String(length=64), nullable=True),
        sa.Column("inventory_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_devices_enrollment_token_id_enrollment_tokens"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_devices_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
    )
    op.create_index(op.f("ix_devices_compliance_state"), "devices", ["compliance_state"], unique=False)
    op.create_index("ix_devices_last_checkin_at_id", "devices", ["last_checkin_at", "id"], unique=False)
    op.create_index(op.f("ix_devices_management_state"), "devices", ["management_state"], unique=False)
    op.create_index("ix_devices_name_lower", "devices", [sa.literal_column("lower(name)")], unique=False)
    op.create_index(op.f("ix_devices_ownership"), "devices", ["ownership"], unique=False)
    op.create_index(op.f("ix_devices_platform"), "devices", ["platform"], unique=False)
    op.create_index(op.f("ix_devices_serial_number"), "devices", ["serial_number"], unique=False)
    op.create_index(op.f("ix_devices_user_id"), "devices", ["user_id"], unique=False)
    op.create_index(
        "uq_devices_active_serial",
        "devices",
        ["platform", "serial_number"],
        unique=True,
        postgresql_where=sa.text("management_state NOT IN ('retired', 'wiped')"),
    )
    op.create_table(
        "enrollment_token_scope_tags",
        sa.Column("enrollment_token_id", sa.UUID(), nullable=False),
        sa.Column("scope_tag_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_enrollment_token_scope_tags_enrollment_token_id_enrollment_tokens"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scope_tag_id"],
            ["scope_tags.id"],
            name=op.f("fk_enrollment_token_scope_tags_scope_tag_id_scope_tags"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint(
            "enrollment_token_id", "scope_tag_id", name=op.f("pk_enrollment_token_scope_tags")
        ),
    )
    op.create_table(
        "enrollment_token_uses",
        sa.Column("token_id", sa.UUID(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("serial_number", sa.String(length=128), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=512), nullable=True),
        sa.Column("device_id", sa.UUID(), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_enrollment_token_uses_token_id_enrollment_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_token_uses")),
    )
    op.create_index(
        op.f("ix_enrollment_token_uses_token_id"), "enrollment_token_uses", ["token_id"], unique=False
    )
    op.create_table(
        "device_apps",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("identifier", sa.String(length=512), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_apps_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", "identifier", name=op.f("pk_device_apps")),
    )
    op.create_index(op.f("ix_device_apps_name"), "device_apps", ["name"], unique=False)
    op.create_table(
        "device_certificates",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("serial_number", sa.String(length=64), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("issuer_fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=64), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_certificates_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_certificates")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_device_certificates_fingerprint_sha256")),
    )
    op.create_index(
        op.f("ix_device_certificates_device_id"), "device_certificates", ["device_id"], unique=False
    )
    op.create_table(
        "device_commands",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=1024), nullable=True),
        sa.Column("requested_by_id", sa.UUID(), nullable=True),
        sa.Column("requested_by_name", sa.String(length=320), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivery_count", sa.Integer(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.String(length=1024), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_commands_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_commands")),
    )
    op.create_index(
        "ix_device_commands_device_id_created_at",
        "device_commands",
        ["device_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_device_commands_pending",
        "device_commands",
        ["device_id"],
        unique=False,
        postgresql_where=sa.text("status IN ('queued', 'sent', 'not_now')"),
    )
    op.create_index(
        "uq_device_commands_idempotency",
        "device_commands",
        ["requested_by_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "device_inventory_changes",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("field", sa.String(length=128), nullable=False),
        sa.Column("old_value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("new_value", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_inventory_changes_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_device_inventory_changes")),
    )
    op.create_index(
        "ix_device_inventory_changes_device_id_seq",
        "device_inventory_changes",
        ["device_id", "seq"],
        unique=False,
    )
    op.create_table(
        "device_nonces",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_nonces_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", "nonce", name=op.f("pk_device_nonces")),
    )
    op.create_index(op.f("ix_device_nonces_expires_at"), "device_nonces", ["expires_at"], unique=False)
    op.create_table(
        "device_scope_tags",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("scope_tag_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_scope_tags_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scope_tag_id"],
            ["scope_tags.id"],
            name=op.f("fk_device_scope_tags_scope_tag_id_scope_tags"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("device_id", "scope_tag_id", name=op.f("pk_device_scope_tags")),
    )
    op.create_index(
        op.f("ix_device_scope_tags_scope_tag_id"), "device_scope_tags", ["scope_tag_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_device_scope_tags_scope_tag_id"), table_name="device_scope_tags")
    op.drop_table("device_scope_tags")
    op.drop_index(op.f("ix_device_nonces_expires_at"), table_name="device_nonces")
    op.drop_table("device_nonces")
    op.drop_index("ix_device_inventory_changes_device_id_seq", table_name="device_inventory_changes")
    op.drop_table("device_inventory_changes")
    op.drop_index(
        "uq_device_commands_idempotency",
        table_name="device_commands",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "ix_device_commands_pending",
        table_name="device_commands",
        postgresql_where=sa.text("status IN ('queued', 'sent', 'not_now')"),
    )
    op.drop_index("ix_device_commands_device_id_created_at", table_name="device_commands")
    op.drop_table("device_commands")
    op.drop_index(op.f("ix_device_certificates_device_id"), table_name="device_certificates")
    op.drop_table("device_certificates")
    op.drop_index(op.f("ix_device_apps_name"), table_name="device_apps")
    op.drop_table("device_apps")
    op.drop_index(op.f("ix_enrollment_token_uses_token_id"), table_name="enrollment_token_uses")
    op.drop_table("enrollment_token_uses")
    op.drop_table("enrollment_token_scope_tags")
    op.drop_index(
        "uq_devices_active_serial",
        table_name="devices",
        postgresql_where=sa.text("management_state NOT IN ('retired', 'wiped')"),
    )
    op.drop_index(op.f("ix_devices_user_id"), table_name="devices")
    op.drop_index(op.f("ix_devices_serial_number"), table_name="devices")
    op.drop_index(op.f("ix_devices_platform"), table_name="devices")
    op.drop_index(op.f("ix_devices_ownership"), table_name="devices")
    op.drop_index("ix_devices_name_lower", table_name="devices")
    op.drop_index(op.f("ix_devices_management_state"), table_name="devices")
    op.drop_index("ix_devices_last_checkin_at_id", table_name="devices")
    op.drop_index(op.f("ix_devices_compliance_state"), table_name="devices")
    op.drop_table("devices")
    op.drop_table("enrollment_tokens")
