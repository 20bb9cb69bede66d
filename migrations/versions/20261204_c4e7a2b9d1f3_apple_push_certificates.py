"""Apple MDM push certificates: the request's key and CSR, then the certificate Apple issued for it

Revision ID: c4e7a2b9d1f3
Revises: b6d2f8a1c3e5
Create Date: 2026-12-04 20:30:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e7a2b9d1f3"
down_revision: str | None = "b6d2f8a1c3e5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "apple_push_certificates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("csr_pem", sa.Text(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=True),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column("serial_number", sa.String(length=64), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("apple_account", sa.String(length=320), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("requested_by", sa.String(length=320), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("uploaded_by", sa.String(length=320), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apple_push_certificates")),
    )
    op.create_index(
        op.f("ix_apple_push_certificates_topic"), "apple_push_certificates", ["topic"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_apple_push_certificates_topic"), table_name="apple_push_certificates")
    op.drop_table("apple_push_certificates")
