from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, String, Table, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin, str_enum


class MembershipType(StrEnum):
    assigned = "assigned"
    dynamic = "dynamic"


class DynamicKind(StrEnum):
    """What a dynamic group's rule selects."""

    user = "user"
    device = "device"


class GroupSource(StrEnum):
    local = "local"
    scim = "scim"
    oidc = "oidc"


class Group(IdMixin, TimestampMixin, Model):
    """Users and devices that policies, apps and admin scopes target. Assigned groups hold users, devices
    and other groups (nested, no cycles); dynamic groups hold what their rule selects, kept by Corral."""

    __tablename__ = "groups"
    __table_args__ = (
        Index(
            "uq_groups_connection_external_id",
            "connection_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
        ),
        CheckConstraint(
            "(membership_type = 'dynamic') = (rule IS NOT NULL AND dynamic_kind IS NOT NULL)",
            name="dynamic_has_rule",
        ),
    )

    display_name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    membership_type: Mapped[MembershipType] = mapped_column(
        str_enum(MembershipType), default=MembershipType.assigned
    )
    dynamic_kind: Mapped[DynamicKind | None] = mapped_column(str_enum(DynamicKind), default=None)
    rule: Mapped[str | None] = mapped_column(Text, default=None)
    source: Mapped[GroupSource] = mapped_column(str_enum(GroupSource), default=GroupSource.local)
    external_id: Mapped[str | None] = mapped_column(String(256), default=None)
    connection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("identity_connections.id", ondelete="SET NULL"), index=True, default=None
    )
    # When a dynamic group's membership was last computed in full.
    evaluated_at: Mapped[datetime | None] = mapped_column(default=None)


Index("ix_groups_display_name_lower", func.lower(Group.display_name))

group_users = Table(
    "group_users",
    Model.metadata,
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
)

group_devices = Table(
    "group_devices",
    Model.metadata,
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True),
)

group_children = Table(
    "group_children",
    Model.metadata,
    Column("parent_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    Column("child_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True),
    CheckConstraint("parent_id <> child_id", name="not_self"),
)
