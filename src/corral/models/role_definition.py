from __future__ import annotations

from sqlalchemy import String, Text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin


class RoleDefinition(IdMixin, TimestampMixin, Model):
    """A named permission set. Built-in roles take their permissions from code (corral.rbac.roles)."""

    __tablename__ = "role_definitions"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    is_builtin: Mapped[bool] = mapped_column(default=False)
    permissions: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list)
