"""Shared arrangements for the groups tests: groups through the API, devices and users straight into the
database (with the attributes a rule reads), memberships read back from the tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, User, group_devices, group_users
from tests.conftest import Admin


async def create_group(client: httpx.AsyncClient, admin: Admin, name: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/groups", json={"display_name": name, **body}, headers=admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def dynamic_group(
    client: httpx.AsyncClient, admin: Admin, name: str, rule: str, kind: str = "device"
) -> dict[str, Any]:
    return await create_group(client, admin, name, membership_type="dynamic", dynamic_kind=kind, rule=rule)


async def add(
    client: httpx.AsyncClient, admin: Admin, group_id: str, kind: str, member_id: str | uuid.UUID
) -> httpx.Response:
    return await client.post(
        f"/api/v1/groups/{group_id}/members",
        json={"type": kind, "id": str(member_id)},
        headers=admin.headers,
    )


async def remove(
    client: httpx.AsyncClient, admin: Admin, group_id: str, kind: str, member_id: str | uuid.UUID
) -> httpx.Response:
    return await client.request(
        "DELETE",
        f"/api/v1/groups/{group_id}/members",
        json={"type": kind, "id": str(member_id)},
        headers=admin.headers,
    )


async def member_ids(
    client: httpx.AsyncClient, admin: Admin, group_id: str, *, transitive: bool = False, **params: Any
) -> list[str]:
    """Every visible member id, following the cursor to the end."""
    ids: list[str] = []
    cursor = None
    while True:
        query: dict[str, Any] = {"transitive": str(transitive).lower(), "limit": 2, **params}
        if cursor:
            query["cursor"] = cursor
        response = await client.get(f"/api/v1/groups/{group_id}/members", params=query, headers=admin.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        ids.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if not cursor:
            return ids


async def insert_devices(
    sessionmaker: async_sessionmaker[AsyncSession], rows: list[dict[str, Any]]
) -> list[uuid.UUID]:
    """Devices straight into the table (defaults for what a row leaves out)."""
    ids = []
    values = []
    for row in rows:
        device_id = row.get("id", uuid.uuid4())
        ids.append(device_id)
        values.append(
            {
                "id": device_id,
                "name": row.get("name", f"dev-{device_id.hex[:8]}"),
                "serial_number": row.get("serial_number", device_id.hex[:12].upper()),
                "platform": row.get("platform", "windows"),
                "ownership": row.get("ownership", "company"),
                "management_state": row.get("management_state", "managed"),
                "enrolled_at": datetime.now(UTC),
                "inventory": {},
                **{k: v for k, v in row.items() if k not in {"id"}},
            }
        )
    async with sessionmaker() as session:
        await session.execute(insert(Device), values)
        await session.commit()
    return ids


async def set_user(sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID, **values: Any) -> None:
    async with sessionmaker() as session:
        await session.execute(update(User).where(User.id == user_id).values(**values))
        await session.commit()


async def stored_device_members(
    sessionmaker: async_sessionmaker[AsyncSession], group_id: str | uuid.UUID
) -> set[uuid.UUID]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(group_devices.c.device_id).where(group_devices.c.group_id == uuid.UUID(str(group_id)))
        )
        return set(rows.all())


async def stored_user_members(
    sessionmaker: async_sessionmaker[AsyncSession], group_id: str | uuid.UUID
) -> set[uuid.UUID]:
    async with sessionmaker() as session:
        rows = await session.scalars(
            select(group_users.c.user_id).where(group_users.c.group_id == uuid.UUID(str(group_id)))
        )
        return set(rows.all())
