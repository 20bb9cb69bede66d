"""desired-state versions from targets: a target carries the version at which an object-wide recompute added
it, so assigning an object to a whole fleet writes no per-device version row; the device index gains that
column (a device's greatest added_version is one index probe)

Revision ID: f7c3a9e2d1b4
Revises: d5b8e1f0a3c7
Create Date: 2026-12-04 09:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f7c3a9e2d1b4"
down_revision: str | None = "d5b8e1f0a3c7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 0 for what exists: every device keeps the version it has (its own row's).
    op.add_column(
        "device_targets", sa.Column("added_version", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.drop_index(op.f("ix_device_targets_device_id"), table_name="device_targets")
    op.create_index(
        "ix_device_targets_device_id_added_version",
        "device_targets",
        ["device_id", "added_version"],
        unique=False,
    )


def downgrade() -> None:
    # Each device's own row takes the greater of the two, so no device's version goes back.
    op.execute(
        """
        INSERT INTO device_desired_states (device_id, version)
        SELECT device_id, max(added_version) FROM device_targets GROUP BY device_id
        ON CONFLICT (device_id) DO UPDATE
        SET version = greatest(device_desired_states.version, excluded.version)
        """
    )
    op.drop_index("ix_device_targets_device_id_added_version", table_name="device_targets")
    op.create_index(op.f("ix_device_targets_device_id"), "device_targets", ["device_id"], unique=False)
    op.drop_column("device_targets", "added_version")
