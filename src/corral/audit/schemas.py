from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class AuditFilter(BaseModel):
    actor: str | None = Field(
        default=None, max_length=320, description="Actor name contains (case-insensitive)"
    )
    activity: str | None = Field(default=None, max_length=128)
    category: str | None = Field(default=None, max_length=64)
    result: str | None = Field(default=None, pattern="^(success|failure)$")
    target_type: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=64)
    correlation_id: str | None = Field(default=None, max_length=64)
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = Field(default=None, max_length=200)
    limit: int = Field(default=50, ge=1, le=500)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        """ISO 8601 only: a bare number would otherwise be read as seconds since 1970."""
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            raise ValueError("give a date and time in ISO 8601 form, e.g. 2026-12-03T10:00:00Z")
        return value

    @field_validator("since", "until")
    @classmethod
    def _utc_when_naive(cls, value: datetime | None) -> datetime | None:
        """A time without a zone (e.g. from a datetime-local field) is UTC, whatever the database's zone."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class ModifiedProperty(BaseModel):
    name: str
    old: Any = None
    new: Any = None


class AuditEventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    occurred_at: datetime
    category: str
    activity: str
    operation: str
    result: str
    actor_type: str
    actor_id: uuid.UUID | None
    actor_name: str | None
    actor_token_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    target_name: str | None
    modified_properties: list[ModifiedProperty]
    detail: str | None
    correlation_id: str | None
    ip_address: str | None


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None
