"""Arrangements shared by the users and licences tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, DeviceCommand, TenantSettings, User
from tests.conftest import Admin


async def devices_for(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID | None, *states: str
) -> list[uuid.UUID]:
    """One device row per management state given, enrolled for ``user_id``."""
    ids = [uuid.uuid4() for _ in states]
    rows = [
        {
            "id": device_id,
            "name": f"dev-{device_id.hex[:8]}",
            "serial_number": device_id.hex[:12].upper(),
            "platform": "windows",
            "ownership": "company",
            "management_state": state,
            "user_id": user_id,
            "enrolled_at": datetime.now(UTC),
            "inventory": {},
        }
        for device_id, state in zip(ids, states, strict=True)
    ]
    async with sessionmaker() as session:
        await session.execute(insert(Device), rows)
        await session.commit()
    return ids


async def set_policy(sessionmaker: async_sessionmaker[AsyncSession], policy: str) -> None:
    async with sessionmaker() as session:
        await session.execute(postgresql.insert(TenantSettings).values(id=1).on_conflict_do_nothing())
        await session.execute(update(TenantSettings).values(deprovisioned_user_devices=policy))
        await session.commit()


async def set_user(sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID, **values: Any) -> None:
    async with sessionmaker() as session:
        await session.execute(update(User).where(User.id == user_id).values(**values))
        await session.commit()


async def commands_of(
    sessionmaker: async_sessionmaker[AsyncSession], device_id: uuid.UUID
) -> list[DeviceCommand]:
    async with sessionmaker() as session:
        stmt = select(DeviceCommand).where(DeviceCommand.device_id == device_id)
        return list((await session.scalars(stmt)).all())


async def device_row(sessionmaker: async_sessionmaker[AsyncSession], device_id: uuid.UUID) -> Device | None:
    async with sessionmaker() as session:
        return await session.get(Device, device_id)


async def create_user(client: httpx.AsyncClient, admin: Admin, upn: str, **body: Any) -> dict[str, Any]:
    payload = {
        "user_principal_name": upn,
        "display_name": body.pop("display_name", upn.split("@")[0]),
        **body,
    }
    response = await client.post("/api/v1/users", json=payload, headers=admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def create_licence(
    client: httpx.AsyncClient, admin: Admin, name: str = "Corral E3", sku: str | None = None, seats: int = 5
) -> dict[str, Any]:
    body = {"name": name, "sku": sku or name.upper().replace(" ", "-"), "seats": seats}
    response = await client.post("/api/v1/licences", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
