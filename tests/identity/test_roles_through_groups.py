"""Role assignments whose members are groups give their roles to the groups' users, through nested groups
too; leaving the group takes the role away."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.auth.service import auth_service
from corral.models import Group, RoleAssignment, User, group_children, group_users
from corral.models import role_assignment_member_groups as member_groups
from corral.rbac.permissions import P
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Factory


async def _principal(sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID) -> set[P]:
    async with sessionmaker() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return set((await auth_service.principal_for(session, user)).permissions)


async def test_roles_come_through_nested_member_groups_and_go_with_membership(
    sessionmaker: async_sessionmaker[AsyncSession], factory: Factory
) -> None:
    user_id = await factory.user()
    outer, inner, assignment = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with sessionmaker() as session:
        session.add_all([Group(id=outer, display_name="Support"), Group(id=inner, display_name="Tier 1")])
        session.add(RoleAssignment(id=assignment, name="Support desk", role_id=HELP_DESK_OPERATOR.id))
        await session.flush()
        await session.execute(insert(group_children).values(parent_id=outer, child_id=inner))
        await session.execute(insert(group_users).values(group_id=inner, user_id=user_id))
        await session.execute(insert(member_groups).values(role_assignment_id=assignment, group_id=outer))
        await session.commit()
    assert await _principal(sessionmaker, user_id) == set(HELP_DESK_OPERATOR.permissions)

    async with sessionmaker() as session:
        await session.execute(delete(group_users).where(group_users.c.user_id == user_id))
        await session.commit()
    assert await _principal(sessionmaker, user_id) == set()


async def test_role_assignment_api_takes_member_groups(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], factory: Factory
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    user_id = await factory.user()
    group = uuid.uuid4()
    async with sessionmaker() as session:
        session.add(Group(id=group, display_name="Help desk team"))
        await session.flush()
        await session.execute(insert(group_users).values(group_id=group, user_id=user_id))
        await session.commit()
    body = {"name": "Desk via group", "role_id": str(HELP_DESK_OPERATOR.id), "member_group_ids": [str(group)]}
    response = await client.post("/api/v1/role-assignments", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    assert response.json()["members"] == []
    assert [g["display_name"] for g in response.json()["member_groups"]] == ["Help desk team"]
    assert await _principal(sessionmaker, user_id) == set(HELP_DESK_OPERATOR.permissions)

    nobody = {"name": "Nobody", "role_id": str(HELP_DESK_OPERATOR.id)}
    response = await client.post("/api/v1/role-assignments", json=nobody, headers=admin.headers)
    assert response.status_code == 422
    unknown = {**body, "name": "Unknown group", "member_group_ids": [str(uuid.uuid4())]}
    response = await client.post("/api/v1/role-assignments", json=unknown, headers=admin.headers)
    assert response.status_code == 422
