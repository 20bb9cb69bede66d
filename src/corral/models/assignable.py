from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Sequence, String, Table, Text, Uuid, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from corral.kit.db import IdMixin, Model, TimestampMixin, str_enum
from corral.models.device import Platform
from corral.models.scope_tag import ScopeTag


class AssignableKind(StrEnum):
    """The kinds of object that are assigned to groups (apps and app protection policies join later)."""

    compliance_policy = "compliance_policy"
    configuration_profile = "configuration_profile"


assignable_scope_tags = Table(
    "assignable_scope_tags",
    Model.metadata,
    Column("assignable_id", ForeignKey("assignables.id", ondelete="CASCADE"), primary_key=True),
    Column("scope_tag_id", ForeignKey("scope_tags.id", ondelete="RESTRICT"), primary_key=True, index=True),
)


class Assignable(IdMixin, TimestampMixin, Model):
    """What every assignable object shares (name, platform, version, scope tags, assignments): the base of
    compliance policies and configuration profiles (joined-table inheritance, ``kind`` says which)."""

    __tablename__ = "assignables"
    __mapper_args__ = {"polymorphic_on": "kind"}

    kind: Mapped[AssignableKind] = mapped_column(str_enum(AssignableKind, 32))
    name: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(Text, default="")
    platform: Mapped[Platform] = mapped_column(str_enum(Platform), index=True)
    # Bumped by every change of what the object asks of devices (its settings): devices report the version
    # they applied.
    version: Mapped[int] = mapped_column(default=1)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )

    scope_tags: Mapped[list[ScopeTag]] = relationship(secondary=assignable_scope_tags, lazy="raise")


# One name per kind, whatever the case.
Index("uq_assignables_kind_name", Assignable.kind, func.lower(Assignable.name), unique=True)


class CompliancePolicy(Assignable):
    """The settings a device must meet (per platform) and the actions taken while it does not."""

    __tablename__ = "compliance_policies"
    __mapper_args__ = {"polymorphic_identity": AssignableKind.compliance_policy.value}

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assignables.id", ondelete="CASCADE"), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # The actions for noncompliance, in order: [{"action", "delay_hours", ...}], the first always
    # mark_noncompliant (its delay is the grace period). See corral.compliance.actions.
    actions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")


class ConfigurationProfile(Assignable):
    """Settings applied to devices: from the settings catalog, or a custom payload."""

    __tablename__ = "configuration_profiles"
    __mapper_args__ = {"polymorphic_identity": AssignableKind.configuration_profile.value}

    id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assignables.id", ondelete="CASCADE"), primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)


# The effective result of every assignment: which active devices an object reaches (included, not excluded,
# filters passed). Kept current by corral.assignments; read by delivery, compliance and reports. Derived data,
# written 100,000 rows at a time: no foreign keys (their per-row checks cost five times the insert itself);
# the engine removes the rows of a deleted device or object (engine.forget_devices, engine.release_objects).
device_targets = Table(
    "device_targets",
    Model.metadata,
    Column("assignable_id", Uuid(), primary_key=True),
    Column("device_id", Uuid(), primary_key=True),
    # The desired-state version at which an object-wide recompute added the target (0: added for this device
    # alone, which wrote the device's own version instead).
    Column("added_version", BigInteger, nullable=False, server_default="0"),
)
# A device's targets, and the greatest of their added_version in one index probe (the check-in reads it).
Index("ix_device_targets_device_id_added_version", device_targets.c.device_id, device_targets.c.added_version)

DESIRED_STATE_VERSIONS = Sequence("desired_state_versions", metadata=Model.metadata)


class DeviceDesiredState(Model):
    """The version of a device's desired state (its targets and what they ask) is the greater of two values
    of the ``desired_state_versions`` sequence: this row's ``version`` (written when the device lost a
    target, when its targets changed through a change of the device itself, when what an object it gets asks
    changed) and the greatest ``added_version`` of its targets (written with the targets when an object
    reaches many devices at once: assigning an object to 100,000 devices writes no per-device version).
    ``corral.assignments.engine.desired_version`` is the one expression that reads it; no row and no target:
    version 0 (nothing assigned yet).

    Every value is taken under the assignments lock, ``added_version`` only under the exclusive one: such a
    value is greater than every value committed before it and none is taken meanwhile, so the greater of the
    two can only move forward."""

    __tablename__ = "device_desired_states"

    # No foreign key, as for device_targets (written with them, as many rows at once).
    device_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    changed_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ConfigurationProfileVersion(Model):
    """A configuration profile's settings as of one version (secrets still encrypted): what devices that
    report this version applied."""

    __tablename__ = "configuration_profile_versions"

    profile_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("configuration_profiles.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(320), default="")
