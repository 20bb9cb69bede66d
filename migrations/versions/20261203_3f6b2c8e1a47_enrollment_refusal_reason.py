"""enrollment refusal reason

Revision ID: 3f6b2c8e1a47
Revises: 440f912ea831
Create Date: 2026-12-03 09:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f6b2c8e1a47"
down_revision: str | None = "440f912ea831"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("enrollment_token_uses", sa.Column("reason", sa.String(length=32), nullable=True))
    # Refusals logged before the reason was stored: classify the two whose text names the bound user, so
    # the licence one is masked for readers without licences:read like every new one (the texts are the
    # only ones the service ever wrote for these cases).
    op.execute(
        "UPDATE enrollment_token_uses SET reason = 'user_unlicensed' "
        "WHERE result = 'refused' AND detail LIKE '% holds no Corral licence.'"
    )
    op.execute(
        "UPDATE enrollment_token_uses SET reason = 'user_disabled' "
        "WHERE result = 'refused' AND detail LIKE '% is disabled: their devices cannot enroll.'"
    )


def downgrade() -> None:
    op.drop_column("enrollment_token_uses", "reason")
