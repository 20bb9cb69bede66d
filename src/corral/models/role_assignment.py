from __future__ import annotations

import uuid

from sqlalchemy import Column, ForeignKey, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from corral.kit.db import IdMixin, Model, TimestampMixin
from corral.models.group import Group
from corral.models.role_definition import RoleDefinition
from corral.models.scope_tag import ScopeTag
from corral.models.user import User

role_assignment_members = Table(
    "role_assignment_members",
    Model.metadata,
    Column("role_assignment_id", ForeignKey("role_assignments.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True),
)

role_assignment_scope_tags = Table(
    "role_assignment_scope_tags",
    Model.metadata,
    Column("role_assignment_id", ForeignKey("role_assignments.id", ondelete="CASCADE"), primary_key=True),
    Column("scope_tag_id", ForeignKey("scope_tags.id", ondelete="RESTRICT"), primary_key=True),
)


# Groups as members: their users (including through nested groups) hold the role.
role_assignment_member_groups = Table(
    "role_assignment_member_groups",
    Model.metadata,
    Column("role_assignment_id", ForeignKey("role_assignments.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="RESTRICT"), primary_key=True, index=True),
)

# Scope groups: the users and devices the members may act on.
role_assignment_scope_groups = Table(
    "role_assignment_scope_groups",
    Model.metadata,
    Column("role_assignment_id", ForeignKey("role_assignments.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="RESTRICT"), primary_key=True, index=True),
)


class RoleAssignment(IdMixin, TimestampMixin, Model):
    """Members get a role's permissions over a scope: everything, or the objects carrying some scope tags."""

    __tablename__ = "role_assignments"

    name: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    role_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("role_definitions.id", ondelete="RESTRICT"), index=True
    )
    # True: all objects. False: only objects carrying one of ``scope_tags`` and, for users and devices,
    # belonging to one of ``scope_groups`` when there are any.
    scope_all: Mapped[bool] = mapped_column(default=True)

    role: Mapped[RoleDefinition] = relationship(lazy="raise")
    members: Mapped[list[User]] = relationship(secondary=role_assignment_members, lazy="raise")
    scope_tags: Mapped[list[ScopeTag]] = relationship(secondary=role_assignment_scope_tags, lazy="raise")
    member_groups: Mapped[list[Group]] = relationship(secondary=role_assignment_member_groups, lazy="raise")
    scope_groups: Mapped[list[Group]] = relationship(secondary=role_assignment_scope_groups, lazy="raise")
