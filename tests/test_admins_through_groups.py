"""Administrators through groups: a user holding a role through a member group (nested at any depth) is an
administrator everywhere (the Administrators list and its roles, the dashboard count, user details), and the
last Global administrator holding the role only through a group can't be taken out of it."""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.auth.service import auth_service
from corral.errors import Conflict
from corral.models import (
    RoleAssignment,
    User,
    group_children,
    group_users,
    role_assignment_member_groups,
    role_assignment_members,
)
from corral.rbac.permissions import P
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from corral.rbac.service import rbac_service
from corral.users import repository as users_repository
from tests.conftest import Admin, Factory, audit_rows, bearer, issue_token, sign_in
from tests.groups.helpers import add, create_group, remove
from tests.scim.helpers import make_connection, patch
from tests.test_rbac_api import admin_with_assignment, assignments_of, create_role


async def assign_to_group(
    client: httpx.AsyncClient, admin: Admin, role_id: uuid.UUID, group_id: str
) -> dict[str, Any]:
    body = {
        "name": f"Via group {uuid.uuid4().hex[:6]}",
        "role_id": str(role_id),
        "member_group_ids": [group_id],
    }
    response = await client.post("/api/v1/role-assignments", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def nested_holder(
    client: httpx.AsyncClient, factory: Factory, glob: Admin, role_id: uuid.UUID
) -> tuple[uuid.UUID, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A user in an inner group nested in an outer group that is a member of an assignment of ``role_id``:
    (user id, outer, inner, assignment)."""
    user_id = await factory.user(display_name="Nested Holder")
    outer = await create_group(client, glob, f"Outer {uuid.uuid4().hex[:6]}")
    inner = await create_group(client, glob, f"Inner {uuid.uuid4().hex[:6]}")
    assert (await add(client, glob, outer["id"], "group", inner["id"])).status_code in (200, 201)
    assert (await add(client, glob, inner["id"], "user", user_id)).status_code in (200, 201)
    assignment = await assign_to_group(client, glob, role_id, outer["id"])
    return user_id, outer, inner, assignment


async def upn_of(sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID) -> str:
    async with sessionmaker() as session:
        upn = await session.scalar(select(User.user_principal_name).where(User.id == user_id))
    assert upn is not None
    return upn


# ------------------------------------------------------------------------------------ counted as admins
async def test_help_desk_through_a_nested_group_is_an_administrator_everywhere(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    user_id, _outer, inner, _assignment = await nested_holder(client, factory, glob, HELP_DESK_OPERATOR.id)
    bystander = await factory.user()
    upn = await upn_of(sessionmaker, user_id)

    admins = (await client.get("/api/v1/admins", headers=glob.headers)).json()
    assert {a["user_principal_name"]: a["roles"] for a in admins} == {
        glob.email: [GLOBAL_ADMINISTRATOR.name],
        upn: [HELP_DESK_OPERATOR.name],
    }
    detail = (await client.get(f"/api/v1/users/{user_id}", headers=glob.headers)).json()
    assert detail["is_admin"] is True
    async with sessionmaker() as session:
        assert await users_repository.is_admin(session, user_id)
        assert not await users_repository.is_admin(session, bystander)
        assert await users_repository.admin_ids(session, [user_id, bystander]) == {user_id}
        picker = await users_repository.list_all(session)
        assert [u.id for u in picker][:2] in ([glob.id, user_id], [user_id, glob.id])

    assert (await sign_in(client, glob.email)).status_code == 303
    dashboard = (await client.get("/portal")).text
    tile = re.search(r'Administrators</span>\s*<span class="tile-value">([\d,]+)</span>', dashboard)
    assert tile is not None, dashboard[:2000]
    assert tile.group(1) == "2"
    page = (await client.get("/portal/admins")).text
    row = next((r for r in page.split("<tr>") if upn in r), None)
    assert row is not None, "the nested holder is not on the Administrators page"
    assert f'<span class="chip">{HELP_DESK_OPERATOR.name}</span>' in row

    # Leaving the group, they leave the administrators.
    assert (await remove(client, glob, inner["id"], "user", user_id)).status_code == 204
    admins = (await client.get("/api/v1/admins", headers=glob.headers)).json()
    assert [a["id"] for a in admins] == [str(glob.id)]
    async with sessionmaker() as session:
        assert not await users_repository.is_admin(session, user_id)


# ------------------------------------------------------------------------------------ the last Global admin
@dataclass
class OnlyThroughGroup:
    """The only enabled, unscoped Global administrator holds the role through inner ⊂ outer; ``peer``
    (every permission, but not Global administrator) and ``glob`` (no role any more) act."""

    user_id: uuid.UUID
    outer: dict[str, Any]
    inner: dict[str, Any]
    assignment: dict[str, Any]
    peer: Admin


@pytest.fixture
async def only_through_group(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> OnlyThroughGroup:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    everything = await create_role(client, glob, "Everything", [p.value for p in P])
    peer = await admin_with_assignment(client, factory, sessionmaker, glob, everything["id"])
    user_id, outer, inner, assignment = await nested_holder(client, factory, glob, GLOBAL_ADMINISTRATOR.id)
    # The direct Global administrator steps down: someone else holds the role (through the groups).
    (direct,) = await assignments_of(client, glob, glob.id)
    response = await client.delete(f"/api/v1/role-assignments/{direct['id']}", headers=glob.headers)
    assert response.status_code == 204, response.text
    return OnlyThroughGroup(user_id, outer, inner, assignment, peer)


async def _memberships(sessionmaker: async_sessionmaker[AsyncSession]) -> tuple[set[Any], set[Any]]:
    async with sessionmaker() as session:
        users = set((await session.execute(select(group_users))).all())
        nestings = set((await session.execute(select(group_children))).all())
    return users, nestings


ACTIONS = ["remove_user", "un_nest", "delete_inner_group", "disable_user", "delete_user"]


@pytest.mark.parametrize("action", ACTIONS)
async def test_last_global_admin_through_a_group_is_kept(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    only_through_group: OnlyThroughGroup,
    action: str,
) -> None:
    arranged = only_through_group
    peer, inner, outer = arranged.peer, arranged.inner, arranged.outer
    before = await _memberships(sessionmaker)
    events = len(await audit_rows(sessionmaker))
    if action == "remove_user":
        response = await remove(client, peer, inner["id"], "user", arranged.user_id)
    elif action == "un_nest":
        response = await remove(client, peer, outer["id"], "group", inner["id"])
    elif action == "delete_inner_group":
        response = await client.delete(f"/api/v1/groups/{inner['id']}", headers=peer.headers)
    elif action == "disable_user":
        response = await client.patch(
            f"/api/v1/users/{arranged.user_id}", json={"enabled": False}, headers=peer.headers
        )
    else:
        response = await client.delete(f"/api/v1/users/{arranged.user_id}", headers=peer.headers)
    assert response.status_code == 409, response.text
    detail = response.json()["detail"]
    if action == "delete_user":  # an administrator is never deleted, last or not
        assert "is an administrator" in detail
    else:
        assert "last Global administrator" in detail
    assert await _memberships(sessionmaker) == before
    assert len(await audit_rows(sessionmaker)) == events
    async with sessionmaker() as session:
        user = await session.get(User, arranged.user_id)
        assert user is not None and user.enabled


async def test_last_global_admins_group_assignment_cannot_be_deleted(
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    only_through_group: OnlyThroughGroup,
) -> None:
    holder = bearer(await issue_token(sessionmaker, only_through_group.user_id))
    assignment = only_through_group.assignment
    response = await client.delete(f"/api/v1/role-assignments/{assignment['id']}", headers=holder)
    assert response.status_code == 409, response.text
    assert "last Global administrator" in response.json()["detail"]
    assert (
        await client.get(f"/api/v1/role-assignments/{assignment['id']}", headers=holder)
    ).status_code == 200


async def test_group_member_can_leave_while_another_global_admin_remains(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    user_id, outer, inner, _assignment = await nested_holder(client, factory, glob, GLOBAL_ADMINISTRATOR.id)
    assert (await remove(client, glob, outer["id"], "group", inner["id"])).status_code == 204
    assert (await remove(client, glob, inner["id"], "user", user_id)).status_code == 204
    async with sessionmaker() as session:
        assert not await users_repository.is_admin(session, user_id)


async def test_direct_member_who_also_holds_global_admin_through_a_group_can_leave_the_assignment(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    glob = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    other = await factory.admin(None, token=False)
    group = await create_group(client, glob, f"Admins {uuid.uuid4().hex[:6]}")
    assert (await add(client, glob, group["id"], "user", glob.id)).status_code == 201
    await assign_to_group(client, glob, GLOBAL_ADMINISTRATOR.id, group["id"])
    (direct,) = await assignments_of(client, glob, glob.id)
    response = await client.put(
        f"/api/v1/role-assignments/{direct['id']}/members",
        json={"member_ids": [str(other.id)]},
        headers=glob.headers,
    )
    assert response.status_code == 200, response.text  # still Global administrator through the group
    me = (await client.get("/api/v1/me", headers=glob.headers)).json()
    assert set(me["permissions"]) == {p.value for p in GLOBAL_ADMINISTRATOR.permissions}


async def test_scim_cannot_take_the_last_global_admin_out_of_their_group(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    entra = await make_connection(sessionmaker, "Contoso Entra ID")
    body = {
        "userName": "adele@contoso.example",
        "externalId": "ext-adele",
        "displayName": "Adele",
        "active": True,
    }
    adele = (await client.post("/scim/v2/Users", json=body, headers=entra.headers)).json()
    group = {"displayName": "Corral admins", "members": [{"value": adele["id"]}]}
    made = await client.post("/scim/v2/Groups", json=group, headers=entra.headers)
    assert made.status_code == 201, made.text
    group_id = made.json()["id"]
    async with sessionmaker() as session:
        assignment = RoleAssignment(
            id=uuid.uuid4(), name="Admins from Entra", role_id=GLOBAL_ADMINISTRATOR.id
        )
        session.add(assignment)
        await session.flush()
        await session.execute(
            insert(role_assignment_member_groups).values(
                role_assignment_id=assignment.id, group_id=uuid.UUID(group_id)
            )
        )
        await session.commit()
    url = f"/scim/v2/Groups/{group_id}"
    remove_adele = patch({"op": "Remove", "path": f'members[value eq "{adele["id"]}"]'})
    response = await client.patch(url, json=remove_adele, headers=entra.headers)
    assert response.status_code == 409, response.text
    assert "last Global administrator" in response.json()["detail"]
    members = (await client.get(url, headers=entra.headers)).json()["members"]
    assert [m["value"] for m in members] == [adele["id"]]


async def test_two_removals_at_once_cannot_together_leave_no_global_administrator(
    factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Each removal alone leaves the other administrator; run together, the second waits for the first (an
    advisory lock) and is refused once the first has committed."""
    first, second = await factory.admin("Global administrator"), await factory.admin("Global administrator")
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(role_assignment_members.c.user_id, RoleAssignment.id)
                .join(RoleAssignment, RoleAssignment.id == role_assignment_members.c.role_assignment_id)
                .where(RoleAssignment.role_id == GLOBAL_ADMINISTRATOR.id)
            )
        ).all()
    by_member = {user_id: assignment_id for user_id, assignment_id in rows}
    assert set(by_member) == {first.id, second.id}  # the only two Global administrators

    async def principal_of(session: AsyncSession, admin: Admin) -> Any:
        user = await session.get(User, admin.id)
        assert user is not None
        return await auth_service.principal_for(session, user)

    one, two = sessionmaker(), sessionmaker()
    try:
        # The first administrator removes the second one's assignment, not committed yet.
        await rbac_service.delete_assignment(one, await principal_of(one, first), by_member[second.id])
        # Meanwhile the second removes the first one's: it waits for the first transaction.
        racing = asyncio.create_task(
            rbac_service.delete_assignment(two, await principal_of(two, second), by_member[first.id])
        )
        await asyncio.sleep(0.5)
        assert not racing.done(), "the second removal did not wait for the first"
        await one.commit()
        with pytest.raises(Conflict, match="last Global administrator"):
            await racing
        await two.rollback()
    finally:
        await one.close()
        await two.close()
    async with sessionmaker() as session:
        left = (
            await session.scalars(
                select(RoleAssignment).where(RoleAssignment.role_id == GLOBAL_ADMINISTRATOR.id)
            )
        ).all()
    assert [a.id for a in left] == [by_member[first.id]]
