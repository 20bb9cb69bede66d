"""Local accounts: create, enable/disable (ending sessions), passwords, second factor, the bootstrap admin."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service, diff
from corral.auth import repository as auth_repository
from corral.auth.service import auth_service
from corral.config import Settings
from corral.errors import Conflict, NotFound, ValidationFailed
from corral.kit.security import SecretBox, generate_password, hash_password, password_problem, verify_password
from corral.kit.time import utcnow
from corral.models import RoleAssignment, User, UserSource
from corral.rbac import repository as rbac_repository
from corral.rbac.principal import EVERYWHERE, Principal
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from corral.rbac.service import rbac_service, role_permissions
from corral.users import repository
from corral.users.schemas import UserCreate, UserUpdate, normalise_email


@dataclass
class CreatedUser:
    user: User
    one_time_password: str | None


def _snapshot(user: User) -> dict[str, object]:
    return {"display_name": user.display_name, "enabled": user.enabled}


class UserService:
    async def get(self, session: AsyncSession, user_id: uuid.UUID) -> User:
        user = await repository.get(session, user_id)
        if user is None:
            raise NotFound("No such user.")
        return user

    async def list_admins(self, session: AsyncSession) -> list[User]:
        return await repository.list_admins(session)

    async def list_admins_with_roles(self, session: AsyncSession) -> list[tuple[User, list[str]]]:
        roles: dict[uuid.UUID, set[str]] = {}
        for assignment in await rbac_repository.list_assignments(session):
            for member in assignment.members:
                roles.setdefault(member.id, set()).add(assignment.role.name)
        return [(user, sorted(roles.get(user.id, ()))) for user in await repository.list_admins(session)]

    async def list_all(self, session: AsyncSession, search: str | None = None) -> list[User]:
        return await repository.list_all(session, search)

    async def create_local(
        self, session: AsyncSession, data: UserCreate, *, principal: Principal | None = None
    ) -> CreatedUser:
        """Create a local account; ``principal`` None means the command line (a machine operator)."""
        if await repository.by_email(session, data.email):
            raise Conflict(f"An account with the email address {data.email} already exists.")
        one_time = None
        if data.password is None:
            one_time = generate_password()
            password = one_time
        else:
            problem = password_problem(data.password)
            if problem:
                raise ValidationFailed(f"Password refused: {problem}")
            password = data.password
        role = None
        if data.role_id is not None:
            role = await rbac_service.get_role(session, data.role_id)
            if principal is not None:
                rbac_service.check_can_grant(principal, role_permissions(role), EVERYWHERE)
        user = User(
            id=uuid.uuid4(),
            email=normalise_email(data.email),
            display_name=data.display_name or data.email.split("@")[0],
            source=UserSource.local,
            password_hash=hash_password(password),
            must_change_password=one_time is not None,
        )
        session.add(user)
        await session.flush()
        await audit_service.record(
            session,
            activity="user.create",
            category="user",
            operation="create",
            target_type="user",
            target_id=user.id,
            target_name=user.email,
            changes=[
                ("email", None, user.email),
                ("display_name", None, user.display_name),
                ("password", None, "set"),
            ],
        )
        if role is not None:
            assignment = RoleAssignment(
                id=uuid.uuid4(),
                name=f"{role.name}: {user.email}",
                description="",
                role_id=role.id,
                scope_all=True,
                members=[user],
                scope_tags=[],
            )
            session.add(assignment)
            await session.flush()
            await audit_service.record(
                session,
                activity="role_assignment.create",
                category="role",
                operation="create",
                target_type="role_assignment",
                target_id=assignment.id,
                target_name=assignment.name,
                changes=[("role", None, role.name), ("members", None, [user.email]), ("scope", None, "all")],
            )
        await session.refresh(user)
        return CreatedUser(user, one_time)

    async def update(
        self, session: AsyncSession, user_id: uuid.UUID, data: UserUpdate, principal: Principal
    ) -> User:
        user = await self.get(session, user_id)
        before = _snapshot(user)
        if data.enabled is False and user.enabled:
            if user.id == principal.user_id:
                raise Conflict("You cannot disable your own account.")
            await rbac_service.guard_manage_user(session, principal, user)
            await rbac_service.guard_disable(session, user)
            user.enabled = False
            ended = await auth_service.end_all_sessions(session, user)
            detail = f"{ended} session(s) ended"
        else:
            detail = None
            if data.enabled is True and not user.enabled:
                # Re-enabling revives the account and its API tokens: it needs every right the account holds.
                await rbac_service.guard_manage_user(session, principal, user)
                user.enabled = True
        if data.display_name is not None:
            user.display_name = data.display_name
        changes = diff(before, _snapshot(user))
        if changes:
            await session.flush()
            await session.refresh(user)
            await audit_service.record(
                session,
                activity="user.update",
                category="user",
                operation="update",
                target_type="user",
                target_id=user.id,
                target_name=user.email,
                changes=changes,
                detail=detail,
            )
        return user

    async def reset_password(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> str:
        user = await self.get(session, user_id)
        if user.id == principal.user_id:
            raise Conflict("Change your own password from your account page.")
        await rbac_service.guard_manage_user(session, principal, user)
        one_time = generate_password()
        user.password_hash = hash_password(one_time)
        user.must_change_password = True
        ended = await auth_service.end_all_sessions(session, user)
        await audit_service.record(
            session,
            activity="user.password_reset",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.email,
            changes=[("password", "set", "reset")],
            detail=f"{ended} session(s) ended",
        )
        return one_time

    async def change_own_password(
        self,
        session: AsyncSession,
        user: User,
        current_password: str,
        new_password: str,
        keep_session_id: uuid.UUID | None,
    ) -> None:
        if not verify_password(user.password_hash, current_password):
            raise ValidationFailed("The current password is incorrect.")
        problem = password_problem(new_password)
        if problem:
            raise ValidationFailed(f"Password refused: {problem}")
        if verify_password(user.password_hash, new_password):
            raise ValidationFailed("Choose a password different from the current one.")
        user.password_hash = hash_password(new_password)
        user.must_change_password = False
        # Every other session of this account ends.
        for other in await auth_repository.sessions_of(session, user.id):
            if other.id != keep_session_id:
                await session.delete(other)
        await audit_service.record(
            session,
            activity="user.password_change",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.email,
            changes=[("password", "set", "changed")],
        )

    # ---------------------------------------------------------------- second factor (TOTP)
    async def enable_totp(
        self, session: AsyncSession, settings: Settings, user: User, secret: str, code: str
    ) -> None:
        if user.totp_enabled:
            raise Conflict("Two-step verification is already on.")
        box = SecretBox(settings.resolved_secret_key(), "totp")
        user.totp_secret_encrypted = box.encrypt(secret.encode())
        step = auth_service.totp_step_if_valid(settings, user, code)
        if step is None:
            user.totp_secret_encrypted = None
            raise ValidationFailed("That code does not match; check the time on your phone and try again.")
        user.totp_last_used_step = step
        user.totp_enabled_at = utcnow()
        await audit_service.record(
            session,
            activity="user.totp_enable",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.email,
            changes=[("totp", None, "enabled")],
        )

    async def disable_totp(self, session: AsyncSession, user: User, password: str) -> None:
        if not verify_password(user.password_hash, password):
            raise ValidationFailed("The password is incorrect.")
        user.totp_secret_encrypted = None
        user.totp_enabled_at = None
        user.totp_last_used_step = None
        await audit_service.record(
            session,
            activity="user.totp_disable",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.email,
            changes=[("totp", "enabled", None)],
        )

    # ---------------------------------------------------------------- bootstrap
    async def ensure_bootstrap_admin(self, session: AsyncSession, email: str) -> CreatedUser | None:
        """On first start (no Global administrator at all), create one with a one-time password."""
        holders = await rbac_repository.enabled_members_of_role(session, GLOBAL_ADMINISTRATOR.id)
        if holders or await repository.by_email(session, email):
            return None
        return await self.create_local(
            session, UserCreate(email=email, display_name="Administrator", role_id=GLOBAL_ADMINISTRATOR.id)
        )


user_service = UserService()
