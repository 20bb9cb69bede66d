"""foundation

Revision ID: f45a3dede52f
Revises:
Create Date: 2026-11-26 21:59:21.077554+00:00
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "f45a3dede52f"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the built-in roles as of this revision (ids are uuid5 of the name, as in corral.rbac.roles).
_NS = uuid.UUID("8f2d6a9e-61c4-4b7a-9e0f-2b1f6f7c0a11")
BUILTIN_ROLES = [
    ("Global administrator", "Everything, including tenant settings, licences and roles."),
    (
        "Service administrator",
        "Devices, enrollment, policies, profiles, apps, app protection, users, groups and "
        "roles; no licences, billing or tenant settings.",
    ),
    ("Device compliance administrator", "Builds, assigns and monitors compliance policies; reads devices."),
    (
        "Help desk operator",
        "Finds users and devices, sees their state and runs remote tasks (lock, wipe, retire, "
        "sync, passcode reset…); assigns apps. No policy editing, no licences.",
    ),
    (
        "Read-only operator",
        "Sees devices, policies, apps, users, groups, roles and reports; changes nothing.",
    ),
    ("Application manager", "Manages apps and app protection policies; reads devices, users and groups."),
    (
        "Policy and profile manager",
        "Manages compliance policies, configuration profiles and enrollment; reads "
        "devices, users and groups.",
    ),
]


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("activity", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("actor_type", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.UUID(), nullable=True),
        sa.Column("actor_name", sa.String(length=320), nullable=True),
        sa.Column("actor_token_id", sa.UUID(), nullable=True),
        sa.Column("target_type", sa.String(length=64), nullable=True),
        sa.Column("target_id", sa.String(length=64), nullable=True),
        sa.Column("target_name", sa.String(length=320), nullable=True),
        sa.Column("modified_properties", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("detail", sa.String(length=1024), nullable=True),
        sa.Column("correlation_id", sa.String(length=64), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
        sa.UniqueConstraint("id", name=op.f("uq_audit_events_id")),
    )
    op.create_index("ix_audit_events_actor_id", "audit_events", ["actor_id"], unique=False)
    op.create_index("ix_audit_events_occurred_at_seq", "audit_events", ["occurred_at", "seq"], unique=False)
    op.create_index("ix_audit_events_target", "audit_events", ["target_type", "target_id"], unique=False)
    op.create_table(
        "certificate_authorities",
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_certificate_authorities")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_certificate_authorities_fingerprint_sha256")),
    )
    op.create_index(
        op.f("ix_certificate_authorities_purpose"), "certificate_authorities", ["purpose"], unique=False
    )
    op.create_table(
        "role_definitions",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("is_builtin", sa.Boolean(), nullable=False),
        sa.Column("permissions", postgresql.ARRAY(sa.String(length=64)), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role_definitions")),
        sa.UniqueConstraint("name", name=op.f("uq_role_definitions_name")),
    )
    op.create_table(
        "scope_tags",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scope_tags")),
        sa.UniqueConstraint("name", name=op.f("uq_scope_tags_name")),
    )
    op.create_table(
        "signin_throttles",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_signin_throttles")),
    )
    op.create_table(
        "tenant_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_name", sa.String(length=128), nullable=False),
        sa.Column("support_email", sa.String(length=320), nullable=False),
        sa.Column("support_phone", sa.String(length=64), nullable=False),
        sa.Column("support_url", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_tenant_settings_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_settings")),
    )
    op.create_table(
        "users",
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("must_change_password", sa.Boolean(), nullable=False),
        sa.Column("totp_secret_encrypted", sa.String(length=512), nullable=True),
        sa.Column("totp_enabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("totp_last_used_step", sa.Integer(), nullable=True),
        sa.Column("last_sign_in_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index("uq_users_email_lower", "users", [sa.literal_column("lower(email)")], unique=True)
    op.create_table(
        "api_tokens",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("permissions", postgresql.ARRAY(sa.String(length=64)), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"], unique=False)
    op.create_table(
        "role_assignments",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("role_id", sa.UUID(), nullable=False),
        sa.Column("scope_all", sa.Boolean(), nullable=False),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["role_definitions.id"],
            name=op.f("fk_role_assignments_role_id_role_definitions"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role_assignments")),
    )
    op.create_index(op.f("ix_role_assignments_role_id"), "role_assignments", ["role_id"], unique=False)
    op.create_table(
        "user_sessions",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pending_mfa", sa.Boolean(), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=512), nullable=True),
        sa.Column("id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_sessions_token_hash")),
    )
    op.create_index(op.f("ix_user_sessions_user_id"), "user_sessions", ["user_id"], unique=False)
    op.create_table(
        "role_assignment_members",
        sa.Column("role_assignment_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_assignment_id"],
            ["role_assignments.id"],
            name=op.f("fk_role_assignment_members_role_assignment_id_role_assignments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_role_assignment_members_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("role_assignment_id", "user_id", name=op.f("pk_role_assignment_members")),
    )
    op.create_index(
        op.f("ix_role_assignment_members_user_id"), "role_assignment_members", ["user_id"], unique=False
    )
    op.create_table(
        "role_assignment_scope_tags",
        sa.Column("role_assignment_id", sa.UUID(), nullable=False),
        sa.Column("scope_tag_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_assignment_id"],
            ["role_assignments.id"],
            name=op.f("fk_role_assignment_scope_tags_role_assignment_id_role_assignments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scope_tag_id"],
            ["scope_tags.id"],
            name=op.f("fk_role_assignment_scope_tags_scope_tag_id_scope_tags"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint(
            "role_assignment_id", "scope_tag_id", name=op.f("pk_role_assignment_scope_tags")
        ),
    )

    # The audit trail is append-only: the database itself refuses changes to recorded events.
    op.execute(
        """
        CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit events are append-only' USING ERRCODE = 'insufficient_privilege';
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    # Built-in roles: rows with fixed ids; their permissions come from code (corral.rbac.roles).
    roles = sa.table(
        "role_definitions",
        sa.column("id", sa.UUID()),
        sa.column("name", sa.String()),
        sa.column("description", sa.Text()),
        sa.column("is_builtin", sa.Boolean()),
        sa.column("permissions", postgresql.ARRAY(sa.String())),
    )
    op.bulk_insert(
        roles,
        [
            {
                "id": uuid.uuid5(_NS, name),
                "name": name,
                "description": description,
                "is_builtin": True,
                "permissions": [],
            }
            for name, description in BUILTIN_ROLES
        ],
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_table("role_assignment_scope_tags")
    op.drop_index(op.f("ix_role_assignment_members_user_id"), table_name="role_assignment_members")
    op.drop_table("role_assignment_members")
    op.drop_index(op.f("ix_user_sessions_user_id"), table_name="user_sessions")
    op.drop_table("user_sessions")
    op.drop_index(op.f("ix_role_assignments_role_id"), table_name="role_assignments")
    op.drop_table("role_assignments")
    op.drop_index(op.f("ix_api_tokens_user_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("uq_users_email_lower", table_name="users")
    op.drop_table("users")
    op.drop_table("tenant_settings")
    op.drop_table("signin_throttles")
    op.drop_table("scope_tags")
    op.drop_table("role_definitions")
    op.drop_index(op.f("ix_certificate_authorities_purpose"), table_name="certificate_authorities")
    op.drop_table("certificate_authorities")
    op.drop_index("ix_audit_events_target", table_name="audit_events")
    op.drop_index("ix_audit_events_occurred_at_seq", table_name="audit_events")
    op.drop_index("ix_audit_events_actor_id", table_name="audit_events")
    op.drop_table("audit_events")
