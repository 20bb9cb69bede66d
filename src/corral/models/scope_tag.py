from __future__ import annotations

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import IdMixin, Model, TimestampMixin


class ScopeTag(IdMixin, TimestampMixin, Model):
    """A label on managed objects; role assignments limited to tags see only objects carrying them."""

    __tablename__ = "scope_tags"

    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
