from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Column, ForeignKey, Index, String, Table, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from corral.kit.db import IdMixin, Model, TimestampMixin, str_enum
from corral.models.device import Platform
from corral.models.scope_tag import ScopeTag


class AssignmentTarget(StrEnum):
    group = "group"
    all_devices = "all_devices"
    all_users = "all_users"


class AssignmentMode(StrEnum):
    include = "include"
    exclude = "exclude"


class FilterMode(StrEnum):
    include = "include"
    exclude = "exclude"


assignment_filter_scope_tags = Table(
    "assignment_filter_scope_tags",
    Model.metadata,
    Column("filter_id", ForeignKey("assignment_filters.id", ondelete="CASCADE"), primary_key=True),
    Column("scope_tag_id", ForeignKey("scope_tags.id", ondelete="RESTRICT"), primary_key=True, index=True),
)


class AssignmentFilter(IdMixin, TimestampMixin, Model):
    """A rule over device properties (the dynamic-group rule language) that narrows an assignment: only
    the devices it matches (include mode) or does not match (exclude mode)."""

    __tablename__ = "assignment_filters"

    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    platform: Mapped[Platform] = mapped_column(str_enum(Platform))
    rule: Mapped[str] = mapped_column(Text)

    scope_tags: Mapped[list[ScopeTag]] = relationship(secondary=assignment_filter_scope_tags, lazy="raise")


Index("uq_assignment_filters_name", func.lower(AssignmentFilter.name), unique=True)


class Assignment(IdMixin, TimestampMixin, Model):
    """One target of an assignable object: a group (included or excluded), all devices or all users, with
    an optional filter on inclusions. Exclusion wins over inclusion."""

    __tablename__ = "assignments"
    __table_args__ = (
        CheckConstraint("(target = 'group') = (group_id IS NOT NULL)", name="group_target_has_group"),
        CheckConstraint("mode = 'include' OR target = 'group'", name="exclusions_are_groups"),
        CheckConstraint("mode = 'include' OR filter_id IS NULL", name="no_filter_on_exclusions"),
        CheckConstraint("(filter_id IS NULL) = (filter_mode IS NULL)", name="filter_has_mode"),
        # An object names a group, or all devices / all users, at most once.
        Index(
            "uq_assignments_target",
            "assignable_id",
            "target",
            "group_id",
            unique=True,
            postgresql_nulls_not_distinct=True,
        ),
    )

    assignable_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assignables.id", ondelete="CASCADE"))
    target: Mapped[AssignmentTarget] = mapped_column(str_enum(AssignmentTarget))
    group_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("groups.id", ondelete="RESTRICT"), index=True, default=None
    )
    mode: Mapped[AssignmentMode] = mapped_column(str_enum(AssignmentMode), default=AssignmentMode.include)
    filter_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("assignment_filters.id", ondelete="RESTRICT"), index=True, default=None
    )
    filter_mode: Mapped[FilterMode | None] = mapped_column(str_enum(FilterMode), default=None)
    # What apps will need (install intent, per-assignment settings); unused by policies and profiles.
    intent: Mapped[str | None] = mapped_column(String(32), default=None)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)

    filter: Mapped[AssignmentFilter | None] = relationship(lazy="raise")
