"""history retention: indexes for deleting old inventory changes and finished commands by time, and an audit
trail that stays append-only except for the retention job deleting events past their retention

Revision ID: e3a9c5d1b7f2
Revises: b7d20e5c1f44
Create Date: 2026-12-04 07:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "e3a9c5d1b7f2"
down_revision: str | None = "b7d20e5c1f44"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_device_inventory_changes_changed_at", "device_inventory_changes", ["changed_at"], unique=False
    )
    op.create_index("ix_device_commands_created_at", "device_commands", ["created_at"], unique=False)
    # UPDATE and TRUNCATE stay refused for every statement; DELETE is judged row by row: only an event older
    # than the cutoff the retention job sets for its transaction (corral.audit_retention_cutoff), and never
    # one younger than 30 days, may go.
    op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    op.execute(
        """
        CREATE FUNCTION audit_events_retention_only() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            cutoff text := current_setting('corral.audit_retention_cutoff', true);
        BEGIN
            IF cutoff IS NULL OR cutoff = ''
               OR OLD.occurred_at >= cutoff::timestamptz
               OR OLD.occurred_at >= now() - interval '30 days' THEN
                RAISE EXCEPTION 'audit events are append-only (only events past their retention are deleted)'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN OLD;
        END;
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER audit_events_retention_only BEFORE DELETE ON audit_events "
        "FOR EACH ROW EXECUTE FUNCTION audit_events_retention_only()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER audit_events_retention_only ON audit_events")
    op.execute("DROP FUNCTION audit_events_retention_only()")
    op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
    op.execute(
        "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
    )
    op.drop_index("ix_device_commands_created_at", table_name="device_commands")
    op.drop_index("ix_device_inventory_changes_changed_at", table_name="device_inventory_changes")
