"""Roles, role assignments and scope tags. Nobody grants more than they hold; the last Global administrator
cannot be removed."""

from __future__ import annotations

import uuid

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service, diff
from corral.auth import repository as auth_repository
from corral.auth.service import auth_service, scope_of
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
from corral.models import Group, RoleAssignment, RoleDefinition, ScopeTag, User
from corral.rbac import repository
from corral.rbac.permissions import DESCRIPTIONS, P
from corral.rbac.principal import EVERYWHERE, Principal, Scope
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, role_permissions
from corral.rbac.schemas import (
    EffectiveAccess,
    EffectivePermission,
    MemberGroupOut,
    MemberOut,
    ReachOut,
    RoleAssignmentCreate,
    RoleAssignmentOut,
    RoleCreate,
    RoleOut,
    RoleUpdate,
    ScopeTagCreate,
    ScopeTagOut,
)


def role_out(role: RoleDefinition) -> RoleOut:
    return RoleOut(
        id=role.id,
        name=role.name,
        description=role.description,
        is_builtin=role.is_builtin,
        permissions=sorted(p.value for p in role_permissions(role)),
        created_at=role.created_at,
        updated_at=role.updated_at,
    )


def assignment_out(assignment: RoleAssignment) -> RoleAssignmentOut:
    return RoleAssignmentOut(
        id=assignment.id,
        name=assignment.name,
        description=assignment.description,
        role_id=assignment.role_id,
        role_name=assignment.role.name,
        scope_all=assignment.scope_all,
        scope_tags=[
            ScopeTagOut.model_validate(tag) for tag in sorted(assignment.scope_tags, key=lambda t: t.name)
        ],
        members=[
            MemberOut(
                id=m.id, user_principal_name=m.user_principal_name, email=m.email, display_name=m.display_name
            )
            for m in sorted(assignment.members, key=lambda m: m.user_principal_name.lower())
        ],
        member_groups=_groups_out(assignment.member_groups),
        scope_groups=_groups_out(assignment.scope_groups),
    )


def _groups_out(groups: list[Group]) -> list[MemberGroupOut]:
    return [
        MemberGroupOut(id=g.id, display_name=g.display_name, source=g.source.value)
        for g in sorted(groups, key=lambda g: g.display_name.lower())
    ]


def unscoped(assignment: RoleAssignment) -> bool:
    """Everywhere: whatever the tags, and no scope groups (loaded)."""
    return assignment.scope_all and not assignment.scope_groups


async def stored_scope(session: AsyncSession, assignment: RoleAssignment) -> Scope:
    """The scope an assignment (loaded with its tags and groups) gives, nested groups included."""
    nested = await auth_repository.with_nested(session, {g.id for g in assignment.scope_groups})
    return scope_of(assignment, nested)


class RbacService:
    # ---------------------------------------------------------------- roles
    async def list_roles(self, session: AsyncSession) -> list[RoleDefinition]:
        return await repository.list_roles(session)

    async def get_role(self, session: AsyncSession, role_id: uuid.UUID) -> RoleDefinition:
        role = await repository.get_role(session, role_id)
        if role is None:
            raise NotFound("No such role.")
        return role

    async def named_role(self, session: AsyncSession, role_id: uuid.UUID) -> RoleDefinition:
        """The role a request body names: a 422 naming the field when there is none (the address exists)."""
        role = await repository.get_role(session, role_id)
        if role is None:
            raise ValidationFailed(
                "role_id: no such role.",
                errors=[{"location": "role_id", "message": "No such role.", "type": "not_found"}],
            )
        return role

    async def role_by_name(self, session: AsyncSession, name: str) -> RoleDefinition:
        role = await repository.role_by_name(session, name)
        if role is None:
            raise NotFound(f"No role is named {name!r}.")
        return role

    def check_can_grant(
        self, principal: Principal, permissions: frozenset[P], scope: Scope = EVERYWHERE
    ) -> None:
        if not principal.can_grant(permissions, scope):
            missing = sorted(p.value for p in permissions if not principal.scope_for(p).contains(scope))
            raise Forbidden(
                "You cannot grant permissions you do not hold yourself over that scope: " + ", ".join(missing)
            )

    async def create_role(
        self, session: AsyncSession, principal: Principal, data: RoleCreate
    ) -> RoleDefinition:
        permissions = frozenset(P(p) for p in data.permissions)
        self.check_can_grant(principal, permissions)
        if await repository.role_by_name(session, data.name):
            raise Conflict(f"A role named {data.name!r} already exists.")
        role = RoleDefinition(
            id=uuid.uuid4(),
            name=data.name,
            description=data.description,
            is_builtin=False,
            permissions=sorted(data.permissions),
        )
        session.add(role)
        await session.flush()
        await session.refresh(role)
        await audit_service.record(
            session,
            activity="role.create",
            category="role",
            operation="create",
            target_type="role",
            target_id=role.id,
            target_name=role.name,
            changes=[
                ("name", None, role.name),
                ("description", None, role.description),
                ("permissions", None, role.permissions),
            ],
        )
        return role

    async def update_role(
        self, session: AsyncSession, principal: Principal, role_id: uuid.UUID, data: RoleUpdate
    ) -> RoleDefinition:
        role = await self.get_role(session, role_id)
        if role.is_builtin:
            raise Forbidden("Built-in roles cannot be changed; copy it into a custom role instead.")
        before = {"name": role.name, "description": role.description, "permissions": list(role.permissions)}
        # Editing a role changes what its holders may do: only someone holding all of it may touch it.
        self.check_can_grant(principal, role_permissions(role))
        if data.permissions is not None:
            self.check_can_grant(principal, frozenset(P(p) for p in data.permissions))
            role.permissions = sorted(data.permissions)
        if data.name is not None and data.name.lower() != role.name.lower():
            if await repository.role_by_name(session, data.name):
                raise Conflict(f"A role named {data.name!r} already exists.")
            role.name = data.name
        elif data.name is not None:
            role.name = data.name
        if data.description is not None:
            role.description = data.description
        after = {"name": role.name, "description": role.description, "permissions": list(role.permissions)}
        changes = diff(before, after)
        if changes:
            await session.flush()
            await session.refresh(role)
            await audit_service.record(
                session,
                activity="role.update",
                category="role",
                operation="update",
                target_type="role",
                target_id=role.id,
                target_name=role.name,
                changes=changes,
            )
        return role

    async def delete_role(self, session: AsyncSession, principal: Principal, role_id: uuid.UUID) -> None:
        role = await self.get_role(session, role_id)
        if role.is_builtin:
            raise Forbidden("Built-in roles cannot be deleted.")
        self.check_can_grant(principal, role_permissions(role))
        if await repository.assignment_count_for_role(session, role.id):
            raise Conflict("This role is still assigned; remove its role assignments first.")
        await session.delete(role)
        await audit_service.record(
            session,
            activity="role.delete",
            category="role",
            operation="delete",
            target_type="role",
            target_id=role.id,
            target_name=role.name,
            changes=[("permissions", list(role.permissions), None)],
        )

    # ---------------------------------------------------------------- scope tags
    async def list_scope_tags(self, session: AsyncSession) -> list[ScopeTag]:
        return await repository.list_scope_tags(session)

    async def create_scope_tag(self, session: AsyncSession, data: ScopeTagCreate) -> ScopeTag:
        if await repository.scope_tag_by_name(session, data.name):
            raise Conflict(f"A scope tag named {data.name!r} already exists.")
        tag = ScopeTag(id=uuid.uuid4(), name=data.name, description=data.description)
        session.add(tag)
        await session.flush()
        await audit_service.record(
            session,
            activity="scope_tag.create",
            category="role",
            operation="create",
            target_type="scope_tag",
            target_id=tag.id,
            target_name=tag.name,
            changes=[("name", None, tag.name)],
        )
        return tag

    async def delete_scope_tag(self, session: AsyncSession, tag_id: uuid.UUID) -> None:
        tags = await repository.tags_by_ids(session, [tag_id])
        if not tags:
            raise NotFound("No such scope tag.")
        tag = tags[0]
        await session.delete(tag)
        try:
            await session.flush()
        except IntegrityError as exc:
            raise Conflict("This scope tag is still in use.") from exc
        await audit_service.record(
            session,
            activity="scope_tag.delete",
            category="role",
            operation="delete",
            target_type="scope_tag",
            target_id=tag.id,
            target_name=tag.name,
        )

    # ---------------------------------------------------------------- assignments
    async def list_assignments(
        self, session: AsyncSession, role_id: uuid.UUID | None = None
    ) -> list[RoleAssignment]:
        return await repository.list_assignments(session, role_id)

    async def list_groups(self, session: AsyncSession) -> list[Group]:
        """Groups to pick as members or scope groups (the first 200 by name)."""
        return await repository.list_groups(session)

    async def get_assignment(self, session: AsyncSession, assignment_id: uuid.UUID) -> RoleAssignment:
        assignment = await repository.get_assignment(session, assignment_id)
        if assignment is None:
            raise NotFound("No such role assignment.")
        return assignment

    async def create_assignment(
        self, session: AsyncSession, principal: Principal, data: RoleAssignmentCreate
    ) -> RoleAssignment:
        role = await self.named_role(session, data.role_id)
        members = await repository.users_by_ids(session, data.member_ids)
        if len(members) != len(set(data.member_ids)):
            raise ValidationFailed("One or more members do not exist.")
        groups = await repository.groups_by_ids(session, data.member_group_ids)
        if len(groups) != len(set(data.member_group_ids)):
            raise ValidationFailed("One or more member groups do not exist.")
        tags: list[ScopeTag] = []
        if not data.scope_all:
            if not data.scope_tag_ids:
                raise ValidationFailed(
                    "Choose at least one scope tag, or scope the assignment to everything."
                )
            tags = await repository.tags_by_ids(session, data.scope_tag_ids)
            if len(tags) != len(set(data.scope_tag_ids)):
                raise ValidationFailed("One or more scope tags do not exist.")
        scope_groups = await repository.groups_by_ids(session, data.scope_group_ids)
        if len(scope_groups) != len(set(data.scope_group_ids)):
            raise ValidationFailed("One or more scope groups do not exist.")
        assignment = RoleAssignment(
            id=uuid.uuid4(),
            name=data.name,
            description=data.description,
            role_id=role.id,
            scope_all=data.scope_all,
            members=members,
            member_groups=groups,
            scope_tags=tags,
            scope_groups=scope_groups,
        )
        self.check_can_grant(principal, role_permissions(role), await stored_scope(session, assignment))
        session.add(assignment)
        await session.flush()
        created = await self.get_assignment(session, assignment.id)
        await audit_service.record(
            session,
            activity="role_assignment.create",
            category="role",
            operation="create",
            target_type="role_assignment",
            target_id=created.id,
            target_name=created.name,
            changes=[
                ("role", None, role.name),
                ("members", None, sorted(m.user_principal_name for m in members)),
                ("member_groups", None, sorted(g.display_name for g in groups)),
                ("scope", None, "all" if data.scope_all else sorted(t.name for t in tags)),
                ("scope_groups", None, sorted(g.display_name for g in scope_groups)),
            ],
        )
        return created

    async def _guard_last_global_admin(self, session: AsyncSession, without: repository.Without) -> None:
        """Refuse a change that would leave no enabled, unscoped Global administrator (holding the role
        directly or through a member group). A change that takes the role from someone is checked again
        under a transaction-wide advisory lock, so two such changes at once (each leaving the other's
        administrator) cannot together leave none: the second waits for the first and sees its outcome."""
        role = GLOBAL_ADMINISTRATOR.id
        if set(await repository.enabled_members_of_role(session, role, without)) == set(
            await repository.enabled_members_of_role(session, role)
        ):
            return  # nobody loses the role
        await repository.lock_global_administrators(session)
        if await repository.enabled_members_of_role(session, role, without):
            return
        if await repository.enabled_members_of_role(session, role):
            raise Conflict(
                "This would remove the last Global administrator; assign the role to someone else first."
            )

    async def guard_group_change(self, session: AsyncSession, without: repository.Without) -> None:
        """Before a user leaves a group, a group is un-nested or deleted: refuse it if it would leave no
        Global administrator."""
        await self._guard_last_global_admin(session, without)

    async def set_members(
        self,
        session: AsyncSession,
        principal: Principal,
        assignment_id: uuid.UUID,
        member_ids: list[uuid.UUID],
    ) -> RoleAssignment:
        assignment = await self.get_assignment(session, assignment_id)
        scope = await stored_scope(session, assignment)
        self.check_can_grant(principal, role_permissions(assignment.role), scope)
        members = await repository.users_by_ids(session, member_ids)
        if len(members) != len(set(member_ids)):
            raise ValidationFailed("One or more members do not exist.")
        before = sorted(m.user_principal_name for m in assignment.members)
        removed = {m.id for m in assignment.members} - {m.id for m in members}
        if assignment.role_id == GLOBAL_ADMINISTRATOR.id and unscoped(assignment) and removed:
            await self._guard_last_global_admin(
                session, repository.Without(assignment_users=(assignment.id, frozenset(removed)))
            )
        assignment.members = members
        await session.flush()
        await audit_service.record(
            session,
            activity="role_assignment.update",
            category="role",
            operation="update",
            target_type="role_assignment",
            target_id=assignment.id,
            target_name=assignment.name,
            changes=[("members", before, sorted(m.user_principal_name for m in members))],
        )
        return assignment

    async def delete_assignment(
        self, session: AsyncSession, principal: Principal, assignment_id: uuid.UUID
    ) -> None:
        assignment = await self.get_assignment(session, assignment_id)
        scope = await stored_scope(session, assignment)
        self.check_can_grant(principal, role_permissions(assignment.role), scope)
        if assignment.role_id == GLOBAL_ADMINISTRATOR.id and unscoped(assignment):
            await self._guard_last_global_admin(session, repository.Without(assignment=assignment.id))
        await session.delete(assignment)
        await audit_service.record(
            session,
            activity="role_assignment.delete",
            category="role",
            operation="delete",
            target_type="role_assignment",
            target_id=assignment.id,
            target_name=assignment.name,
            changes=[
                ("role", assignment.role.name, None),
                ("members", sorted(m.user_principal_name for m in assignment.members), None),
            ],
        )

    async def guard_disable(self, session: AsyncSession, user: User) -> None:
        await self._guard_last_global_admin(session, repository.Without(users=frozenset({user.id})))

    async def guard_manage_user(self, session: AsyncSession, principal: Principal, user: User) -> None:
        """Taking over an account (password reset, disabling) needs every right that account holds."""
        for grant in await auth_service.grants_of(session, user.id):
            if not principal.can_grant(grant.permissions, grant.scope):
                raise Forbidden(
                    f"{user.user_principal_name} holds rights you do not ({grant.role_name}); "
                    "only an administrator holding them can do this."
                )

    # ---------------------------------------------------------------- what can this admin do, and where?
    async def effective_access(self, session: AsyncSession, user: User) -> EffectiveAccess:
        grants = await auth_service.grants_of(session, user.id)
        principal = Principal(
            user_id=user.id,
            user_principal_name=user.user_principal_name,
            email=user.email,
            display_name=user.display_name,
            grants=grants,
        )
        tag_names = {t.id: t.name for t in await repository.list_scope_tags(session)}
        group_ids = {g for grant in grants for r in grant.scope.reaches for g in r.group_ids or ()}
        group_names = {g.id: g.display_name for g in await repository.groups_by_ids(session, list(group_ids))}

        def names(ids: frozenset[uuid.UUID] | None, known: dict[uuid.UUID, str]) -> list[str] | None:
            return None if ids is None else sorted(known.get(i, str(i)) for i in ids)

        rows = []
        for permission in sorted(principal.permissions):
            scope = principal.scope_for(permission)
            rows.append(
                EffectivePermission(
                    permission=permission.value,
                    description=DESCRIPTIONS[permission],
                    scope_all=scope.all,
                    scope_tags=sorted(tag_names.get(t, str(t)) for t in scope.tag_ids),
                    reaches=sorted(
                        (
                            ReachOut(
                                scope_tags=names(r.tag_ids, tag_names),
                                scope_groups=names(r.group_ids, group_names),
                            )
                            for r in scope.reaches
                        ),
                        key=lambda r: (r.scope_tags or [], r.scope_groups or []),
                    ),
                    granted_by=sorted(
                        {
                            f"{g.role_name} ({g.assignment_name})"
                            for g in grants
                            if permission in g.permissions
                        }
                    ),
                )
            )
        return EffectiveAccess(
            user_id=user.id,
            user_principal_name=user.user_principal_name,
            email=user.email,
            display_name=user.display_name,
            is_admin=principal.is_admin,
            permissions=rows,
        )


rbac_service = RbacService()
