"""Apple MDM enrollment: service certificates (SCEP RA, profile signer), SCEP challenges, pending identities

Revision ID: d8a3f1c6e2b7
Revises: c4e7a2b9d1f3
Create Date: 2026-12-04 21:40:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d8a3f1c6e2b7"
down_revision: str | None = "c4e7a2b9d1f3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_certificates",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("private_key_encrypted", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("issuer_fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_service_certificates")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_service_certificates_fingerprint_sha256")),
    )
    op.create_index(
        op.f("ix_service_certificates_purpose"), "service_certificates", ["purpose"], unique=False
    )
    op.create_table(
        "apple_scep_challenges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("challenge_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source_ip", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_apple_scep_challenges_token_id_enrollment_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apple_scep_challenges")),
        sa.UniqueConstraint("challenge_hash", name=op.f("uq_apple_scep_challenges_challenge_hash")),
    )
    op.create_index(
        op.f("ix_apple_scep_challenges_expires_at"), "apple_scep_challenges", ["expires_at"], unique=False
    )
    op.create_index(
        op.f("ix_apple_scep_challenges_token_id"), "apple_scep_challenges", ["token_id"], unique=False
    )
    op.create_table(
        "apple_pending_identities",
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("challenge_id", sa.Uuid(), nullable=False),
        sa.Column("certificate_pem", sa.Text(), nullable=False),
        sa.Column("serial_number", sa.String(length=64), nullable=False),
        sa.Column("issuer_fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["challenge_id"],
            ["apple_scep_challenges.id"],
            name=op.f("fk_apple_pending_identities_challenge_id_apple_scep_challenges"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_apple_pending_identities_token_id_enrollment_tokens"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("fingerprint_sha256", name=op.f("pk_apple_pending_identities")),
        sa.UniqueConstraint("challenge_id", name=op.f("uq_apple_pending_identities_challenge_id")),
    )
    op.create_index(
        op.f("ix_apple_pending_identities_expires_at"),
        "apple_pending_identities",
        ["expires_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_apple_pending_identities_token_id"), "apple_pending_identities", ["token_id"], unique=False
    )


def downgrade() -> None:
    op.drop_table("apple_pending_identities")
    op.drop_table("apple_scep_challenges")
    op.drop_index(op.f("ix_service_certificates_purpose"), table_name="service_certificates")
    op.drop_table("service_certificates")
