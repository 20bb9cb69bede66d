"""compliance results in one row per device and policy: each setting's result moves into a JSONB column of
device_compliance_policies (device_compliance_settings goes), and the results lose their foreign keys (derived
data written for a whole fleet at once; the services delete the rows of a deleted device or policy)

Revision ID: d5b8e1f0a3c7
Revises: e3a9c5d1b7f2
Create Date: 2026-12-04 08:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "d5b8e1f0a3c7"
down_revision: str | None = "e3a9c5d1b7f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "device_compliance_policies",
        sa.Column("settings", postgresql.JSONB(astext_type=sa.Text()), server_default="{}", nullable=False),
    )
    op.execute(
        """
        UPDATE device_compliance_policies p SET settings = s.settings
        FROM (
            SELECT device_id, policy_id,
                   jsonb_object_agg(
                       setting_id,
                       jsonb_strip_nulls(jsonb_build_object(
                           'state', state, 'expected', expected, 'observed', observed,
                           'message', NULLIF(message, '')
                       )) || jsonb_build_object('observed', observed)
                   ) AS settings
            FROM device_compliance_settings GROUP BY device_id, policy_id
        ) s
        WHERE p.device_id = s.device_id AND p.policy_id = s.policy_id
        """
    )
    op.drop_constraint(
        op.f("fk_device_compliance_policies_device_id_devices"),
        "device_compliance_policies",
        type_="foreignkey",
    )
    op.drop_constraint(
        op.f("fk_device_compliance_policies_policy_id_compliance_policies"),
        "device_compliance_policies",
        type_="foreignkey",
    )
    # Rows whose device or policy is already gone would have cascaded.
    op.execute(
        "DELETE FROM device_compliance_policies p WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = p.device_id)"
        " OR NOT EXISTS (SELECT 1 FROM compliance_policies c WHERE c.id = p.policy_id)"
    )
    op.drop_index("ix_device_compliance_settings_policy_setting", table_name="device_compliance_settings")
    op.drop_table("device_compliance_settings")


def downgrade() -> None:
    op.create_table(
        "device_compliance_settings",
        sa.Column("device_id", sa.UUID(), nullable=False),
        sa.Column("policy_id", sa.UUID(), nullable=False),
        sa.Column("setting_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("expected", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("observed", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"],
            ["devices.id"],
            name=op.f("fk_device_compliance_settings_device_id_devices"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["compliance_policies.id"],
            name=op.f("fk_device_compliance_settings_policy_id_compliance_policies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "device_id", "policy_id", "setting_id", name=op.f("pk_device_compliance_settings")
        ),
    )
    op.create_index(
        "ix_device_compliance_settings_policy_setting",
        "device_compliance_settings",
        ["policy_id", "setting_id", "state"],
        unique=False,
    )
    op.execute(
        """
        INSERT INTO device_compliance_settings (device_id, policy_id, setting_id, state, expected, observed, message)
        SELECT p.device_id, p.policy_id, s.key, s.value->>'state', s.value->'expected',
               NULLIF(s.value->'observed', 'null'::jsonb), coalesce(s.value->>'message', '')
        FROM device_compliance_policies p, jsonb_each(p.settings) s
        """
    )
    op.create_foreign_key(
        op.f("fk_device_compliance_policies_device_id_devices"),
        "device_compliance_policies",
        "devices",
        ["device_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        op.f("fk_device_compliance_policies_policy_id_compliance_policies"),
        "device_compliance_policies",
        "compliance_policies",
        ["policy_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.drop_column("device_compliance_policies", "settings")
