"""The admin lists at a million rows: an index for each sort key in keyset order (the key, then the id), and
trigram indexes (pg_trgm) for their "contains" searches, so a page reads ~50 index entries and a search reads
its matches instead of every row (bench/admin_lists.py, docs/benchmarks.md "S5").

The indexes are built CONCURRENTLY (outside a transaction): writes to devices, users and the audit log go on
while a large installation upgrades. A build interrupted half-way leaves an invalid index behind, which the
next upgrade drops and builds again.

Revision ID: b6d2f8a1c3e5
Revises: a4e8c2f6b9d1
Create Date: 2026-12-04 16:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b6d2f8a1c3e5"
down_revision: str | None = "a4e8c2f6b9d1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EPOCH = "'1970-01-01 00:00:00+00'::timestamptz"

# (name, table, method and columns)
NEW = [
    ("ix_devices_name_lower_id", "devices", "btree (lower(name), id)"),
    ("ix_devices_last_checkin_sort", "devices", f"btree (coalesce(last_checkin_at, {EPOCH}), id)"),
    ("ix_devices_enrolled_at_id", "devices", "btree (enrolled_at, id)"),
    ("ix_devices_name_trgm", "devices", "gin (name gin_trgm_ops)"),
    ("ix_devices_serial_number_trgm", "devices", "gin (serial_number gin_trgm_ops)"),
    ("ix_devices_primary_user_trgm", "devices", "gin (primary_user gin_trgm_ops)"),
    ("ix_users_display_name_lower_id", "users", "btree (lower(display_name), id)"),
    ("ix_users_last_sign_in_sort", "users", f"btree (coalesce(last_sign_in_at, {EPOCH}), id)"),
    ("ix_users_created_at_id", "users", "btree (created_at, id)"),
    ("ix_users_user_principal_name_trgm", "users", "gin (user_principal_name gin_trgm_ops)"),
    ("ix_users_display_name_trgm", "users", "gin (display_name gin_trgm_ops)"),
    ("ix_users_email_trgm", "users", "gin (email gin_trgm_ops)"),
    ("ix_audit_events_actor_name_trgm", "audit_events", "gin (actor_name gin_trgm_ops)"),
]
# Replaced by the (key, id) indexes above.
OLD = [
    ("ix_devices_name_lower", "devices", "btree (lower(name))"),
    ("ix_users_display_name_lower", "users", "btree (lower(display_name))"),
]


def _build(indexes: list[tuple[str, str, str]]) -> None:
    for name, table, definition in indexes:
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        op.execute(f"CREATE INDEX CONCURRENTLY {name} ON {table} USING {definition}")


def _drop(indexes: list[tuple[str, str, str]]) -> None:
    for name, _table, _definition in indexes:
        op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")


def upgrade() -> None:
    # A trusted extension since PostgreSQL 13: the database's owner may create it.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    with op.get_context().autocommit_block():
        _build(NEW)
        _drop(OLD)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        _build(OLD)
        _drop(NEW)
    # The extension stays: other objects may have come to use it.
