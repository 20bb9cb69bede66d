from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from corral.kit.db import Model, trigram_index


class AuditEvent(Model):
    """An append-only record of a state change or a security-relevant event (a trigger forbids changes)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_occurred_at_seq", "occurred_at", "seq"),
        Index("ix_audit_events_actor_id", "actor_id"),
        Index("ix_audit_events_target", "target_type", "target_id"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=uuid.uuid4)
    occurred_at: Mapped[datetime] = mapped_column(server_default=func.now())
    category: Mapped[str] = mapped_column(String(64))
    activity: Mapped[str] = mapped_column(String(128))
    operation: Mapped[str] = mapped_column(String(16))
    result: Mapped[str] = mapped_column(String(16))
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    actor_name: Mapped[str | None] = mapped_column(String(320), default=None)
    actor_token_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    target_type: Mapped[str | None] = mapped_column(String(64), default=None)
    target_id: Mapped[str | None] = mapped_column(String(64), default=None)
    target_name: Mapped[str | None] = mapped_column(String(320), default=None)
    # [{"name": ..., "old": ..., "new": ...}] with secrets redacted.
    modified_properties: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    detail: Mapped[str | None] = mapped_column(String(1024), default=None)
    correlation_id: Mapped[str | None] = mapped_column(String(64), default=None)
    ip_address: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(512), default=None)


# The audit log's "actor contains" filter.
trigram_index("ix_audit_events_actor_name_trgm", AuditEvent.actor_name)
