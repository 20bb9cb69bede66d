"""Arranging assignable objects and reading the engine's stored results in tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.assignments.engine import desired_version
from corral.models import CompliancePolicy, ConfigurationProfile, device_targets
from tests.conftest import Admin


async def make_policy(
    sessionmaker: async_sessionmaker[AsyncSession],
    name: str | None = None,
    *,
    platform: str = "windows",
    profile: bool = False,
) -> uuid.UUID:
    """A compliance policy (or configuration profile) straight into its tables, with no settings."""
    model = ConfigurationProfile if profile else CompliancePolicy
    object_id = uuid.uuid4()
    async with sessionmaker() as session:
        session.add(
            model(id=object_id, name=name or f"policy {object_id.hex[:6]}", platform=platform, settings={})
        )
        await session.commit()
    return object_id


def group_target(group_id: Any, mode: str = "include", **extra: Any) -> dict[str, Any]:
    return {"target": "group", "group_id": str(group_id), "mode": mode, **extra}


async def put_assignments(
    client: httpx.AsyncClient,
    admin: Admin,
    object_id: uuid.UUID,
    items: list[dict[str, Any]],
    *,
    kind: str = "compliance-policies",
) -> httpx.Response:
    return await client.put(
        f"/api/v1/{kind}/{object_id}/assignments", json={"assignments": items}, headers=admin.headers
    )


async def targets(sessionmaker: async_sessionmaker[AsyncSession], object_id: uuid.UUID) -> set[uuid.UUID]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(device_targets.c.device_id).where(device_targets.c.assignable_id == object_id)
        )
        return set(rows.all())


async def version(sessionmaker: async_sessionmaker[AsyncSession], device_id: uuid.UUID | str) -> int:
    async with sessionmaker() as session:
        value = await session.scalar(select(desired_version(uuid.UUID(str(device_id)))))
        return int(value or 0)
