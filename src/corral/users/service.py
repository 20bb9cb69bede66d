"""Users: the people Corral knows (end users, and administrators: users holding role assignments). Local
ones are created here; others come from an identity provider. Disabling or deleting a user ends their sessions
and applies the tenant's policy to their devices. Also local passwords, the second factor and the bootstrap
administrator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.assignments import engine as assignment_engine
from corral.assignments import hooks as assignment_hooks
from corral.audit.service import Change, audit_service, diff
from corral.auth import repository as auth_repository
from corral.auth.service import auth_service
from corral.commands.service import CommandRequest, System, command_service
from corral.config import Settings
from corral.devices.schemas import DeviceFilter
from corral.devices.service import device_out, device_service
from corral.enrollment.service import enrollment_service
from corral.errors import Conflict, CorralError, NotFound, ValidationFailed
from corral.groups import membership as group_membership
from corral.groups.schemas import MemberType
from corral.groups.service import group_service
from corral.kit.csvexport import csv_lines
from corral.kit.pagination import Total
from corral.kit.security import SecretBox, generate_password, hash_password, password_problem, verify_password
from corral.kit.time import utcnow
from corral.licensing.service import licence_service
from corral.models import RoleAssignment, User, UserSource
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope, authorize_object
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, role_permissions
from corral.rbac.service import rbac_service
from corral.tenant.service import tenant_service
from corral.users import repository
from corral.users.schemas import (
    AdminCreate,
    UserCreate,
    UserDetail,
    UserDetailLicensed,
    UserFilter,
    UserOut,
    UserUpdate,
    normalise_email,
)

DEPROVISION_REASON = "User deprovisioned"
# Who asks for the retire of a deprovisioned user's devices: Corral applying the tenant setting (the audit
# events still name the administrator or identity provider who disabled or deleted the user).
DEPROVISIONING = System("Corral (deprovisioned user's devices)")
DETAIL_DEVICES = 100

PROPERTIES = (
    "user_principal_name",
    "email",
    "display_name",
    "given_name",
    "surname",
    "department",
    "job_title",
)
CSV_HEADER = [
    "id",
    "user_principal_name",
    "display_name",
    "email",
    "given_name",
    "surname",
    "department",
    "job_title",
    "source",
    "enabled",
    "last_sign_in_at",
    "created_at",
]
CSV_LICENCES = "licences"


def admin_view_scope(principal: Principal) -> Scope:
    """Where the caller sees administrators and what they may do: the users their users:read grant reaches
    and, since role assignments name their members to whoever may read them, those their roles:read grant
    reaches. Outside it an administrator is "not found", like any user."""
    return principal.scope_for(P.users_read).union(principal.scope_for(P.roles_read))


def user_out(user: User) -> UserOut:
    return UserOut.model_validate(user)


def csv_row(user: User) -> list[object]:
    return [
        user.id,
        user.user_principal_name,
        user.display_name,
        user.email,
        user.given_name,
        user.surname,
        user.department,
        user.job_title,
        user.source.value,
        user.enabled,
        user.last_sign_in_at.isoformat() if user.last_sign_in_at else "",
        user.created_at.isoformat(),
    ]


def _snapshot(user: User) -> dict[str, object]:
    return {**{name: getattr(user, name) for name in PROPERTIES}, "enabled": user.enabled}


@dataclass
class CreatedUser:
    user: User
    one_time_password: str | None


@dataclass
class Deprovisioned:
    """What disabling or deleting a user did beyond the user row."""

    sessions_ended: int = 0
    policy: str = "keep"
    retire_queued: list[str] = field(default_factory=list)
    retire_skipped: list[str] = field(default_factory=list)
    tokens_revoked: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.sessions_ended} session(s) ended"]
        if self.policy == "retire":
            parts.append(f"retire queued for {len(self.retire_queued)} device(s)")
            if self.retire_skipped:
                parts.append("not retired: " + "; ".join(self.retire_skipped))
        else:
            parts.append("devices kept (tenant setting)")
        if self.tokens_revoked:
            parts.append("enrollment token(s) revoked: " + ", ".join(self.tokens_revoked))
        return "; ".join(parts)


class UserService:
    async def _updated(
        self,
        session: AsyncSession,
        user: User,
        changes: list[Change],
        outcome: Deprovisioned | None,
        rule_inputs: Sequence[Hashable],
    ) -> None:
        """After an edit that changed something: audit it, then refresh the user's dynamic groups."""
        await session.flush()
        await session.refresh(user)
        await audit_service.record(
            session,
            activity="user.update",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=changes,
            detail=outcome.summary() if outcome else None,
        )
        await assignment_hooks.user_changed(session, user, unless=rule_inputs)

    # ---------------------------------------------------------------- reads
    async def get(self, session: AsyncSession, user_id: uuid.UUID) -> User:
        """Any user, whatever the caller's scope: for Corral's own needs (see ``get_for``)."""
        user = await repository.get(session, user_id)
        if user is None:
            raise NotFound("No such user.")
        return user

    async def get_for(
        self, session: AsyncSession, principal: Principal, user_id: uuid.UUID, permission: P = P.users_read
    ) -> User:
        """The user, for an administrator: 404 outside their users:read scope (scope groups limit which
        users they reach), 403 without ``permission`` over the user."""
        user = await repository.get_with_groups(session, user_id)
        if user is None:
            raise NotFound("No such user.")
        try:
            authorize_object(
                principal, permission, repository.reaches_user(user), read_permission=P.users_read
            )
        except NotFound:
            raise NotFound("No such user.") from None
        return user

    async def get_admin_view(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> User:
        """The user, for the administrators' pages and their effective permissions: 404 outside the
        caller's ``admin_view_scope``."""
        user = await repository.get_with_groups(session, user_id)
        if user is None or not repository.reaches_user(user)(admin_view_scope(principal)):
            raise NotFound("No such user.")
        return user

    async def page(
        self, session: AsyncSession, principal: Principal, filters: UserFilter
    ) -> tuple[list[User], str | None, Total]:
        return await repository.page(session, filters, principal.scope_for(P.users_read))

    async def export_csv(
        self, maker: async_sessionmaker[AsyncSession], principal: Principal, filters: UserFilter
    ) -> AsyncIterator[str]:
        """The filtered users as CSV, for the API and the admin center, batch by batch, read in a session of
        its own (the request's has ended by the time the body is sent); the licences column only for holders
        of licences:read."""
        scope, licences = principal.scope_for(P.users_read), principal.has(P.licences_read)
        yield csv_lines([[*CSV_HEADER, CSV_LICENCES] if licences else CSV_HEADER])
        async with maker() as session:
            async for users in repository.export(session, filters, scope):
                if not licences:
                    yield csv_lines(csv_row(u) for u in users)
                    continue
                held = await licence_service.skus_by_user(session, [u.id for u in users])
                yield csv_lines([*csv_row(u), " ".join(held.get(u.id, []))] for u in users)

    async def count(self, session: AsyncSession, principal: Principal) -> int:
        """How many users the caller may see (scope groups limit it)."""
        return await repository.count(session, principal.scope_for(P.users_read))

    async def departments(self, session: AsyncSession, principal: Principal) -> list[str]:
        return await repository.departments(session, principal.scope_for(P.users_read))

    async def detail(
        self, session: AsyncSession, settings: Settings, principal: Principal, user: User
    ) -> UserDetail:
        """The user with their devices (those in the caller's devices:read scope), direct groups (with
        groups:read) and, only for holders of licences:read, their licences."""
        devices, _cursor, total = await device_service.page(
            session, settings, principal, DeviceFilter(user_id=user.id, limit=DETAIL_DEVICES)
        )
        groups = (
            await group_service.groups_of(session, MemberType.user, user.id)
            if principal.has(P.groups_read)
            else []
        )
        values: dict[str, Any] = {
            **user_out(user).model_dump(),
            "is_admin": await repository.is_admin(session, user.id),
            "devices": [device_out(d, settings.stale_device_days) for d in devices],
            "devices_total": total.value,
            "groups": groups,
        }
        if principal.has(P.licences_read):
            return UserDetailLicensed(**values, licences=await licence_service.of_user(session, user.id))
        return UserDetail(**values)

    async def list_admins(self, session: AsyncSession, principal: Principal) -> list[User]:
        """The administrators within the caller's ``admin_view_scope``."""
        return await repository.list_admins(session, admin_view_scope(principal))

    async def list_admins_with_roles(
        self, session: AsyncSession, principal: Principal
    ) -> list[tuple[User, list[str]]]:
        """Administrators (within the caller's ``admin_view_scope``) and the names of the roles they hold,
        directly or through groups."""
        roles = await repository.admin_role_names(session)
        admins = await repository.list_admins(session, admin_view_scope(principal))
        return [(user, sorted(roles.get(user.id, ()))) for user in admins]

    async def list_all(self, session: AsyncSession, search: str | None = None) -> list[User]:
        return await repository.list_all(session, search)

    async def is_admin(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        return await repository.is_admin(session, user_id)

    async def admin_ids(self, session: AsyncSession, user_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these users hold a role assignment."""
        return await repository.admin_ids(session, user_ids)

    # ---------------------------------------------------------------- creating
    async def _check_upn_free(self, session: AsyncSession, upn: str, own_id: uuid.UUID | None = None) -> None:
        other = await repository.by_upn(session, upn)
        if other is not None and other.id != own_id:
            raise Conflict(f"A user with the user principal name {upn} already exists.")

    async def create_user(self, session: AsyncSession, principal: Principal, data: UserCreate) -> User:
        """A local end user: no password, so no local sign-in (they sign in through an identity provider
        once one is connected); devices can be enrolled for them."""
        await self._check_upn_free(session, data.user_principal_name)
        user = User(
            id=uuid.uuid4(),
            user_principal_name=data.user_principal_name,
            email=data.email,
            display_name=data.display_name,
            given_name=data.given_name,
            surname=data.surname,
            department=data.department,
            job_title=data.job_title,
            source=UserSource.local,
        )
        session.add(user)
        await session.flush()
        await session.refresh(user)
        await audit_service.record(
            session,
            activity="user.create",
            category="user",
            operation="create",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[(name, None, value) for name, value in _snapshot(user).items() if value is not None],
        )
        await assignment_hooks.user_changed(session, user)
        return user

    async def create_admin(
        self, session: AsyncSession, data: AdminCreate, *, principal: Principal | None = None
    ) -> CreatedUser:
        """A local account that signs in with a password, its email address being its user principal name;
        optionally with a role over everything. ``principal`` None means the command line (a machine
        operator)."""
        await self._check_upn_free(session, data.email)
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
            role = await rbac_service.named_role(session, data.role_id)
            if principal is not None:
                rbac_service.check_can_grant(principal, role_permissions(role), EVERYWHERE)
        email = normalise_email(data.email)
        user = User(
            id=uuid.uuid4(),
            user_principal_name=email,
            email=email,
            display_name=data.display_name or email.split("@")[0],
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
            target_name=user.user_principal_name,
            changes=[
                ("user_principal_name", None, user.user_principal_name),
                ("email", None, user.email),
                ("display_name", None, user.display_name),
                ("password", None, "set"),
            ],
        )
        if role is not None:
            assignment = RoleAssignment(
                id=uuid.uuid4(),
                name=f"{role.name}: {user.user_principal_name}",
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
                changes=[
                    ("role", None, role.name),
                    ("members", None, [user.user_principal_name]),
                    ("scope", None, "all"),
                ],
            )
        await session.refresh(user)
        await assignment_hooks.user_changed(session, user)
        return CreatedUser(user, one_time)

    # ---------------------------------------------------------------- changing
    async def update(
        self, session: AsyncSession, user_id: uuid.UUID, data: UserUpdate, principal: Principal
    ) -> User:
        user, _outcome = await self.update_with_outcome(session, user_id, data, principal)
        return user

    async def update_with_outcome(
        self, session: AsyncSession, user_id: uuid.UUID, data: UserUpdate, principal: Principal
    ) -> tuple[User, Deprovisioned | None]:
        """Returns the user and, when this disabled them, what that did (sessions, devices)."""
        user = await self.get_for(session, principal, user_id, P.users_write)
        before = _snapshot(user)
        rule_inputs = group_membership.user_rule_inputs(user)
        given = {name: getattr(data, name) for name in PROPERTIES if name in data.model_fields_set}
        # A property sent as null clears it; the two that cannot be empty are left alone instead.
        for required in ("user_principal_name", "display_name"):
            if given.get(required, "") is None:
                given.pop(required)
        changing = {name: value for name, value in given.items() if value != getattr(user, name)}
        if changing and user.source != UserSource.local:
            raise Conflict(
                f"{user.user_principal_name} is provisioned by an identity provider ({user.source.value}): "
                "change their properties there. Here they can only be enabled or disabled."
            )
        if "user_principal_name" in changing or "email" in changing:
            # The names an account signs in with: changing them is taking the account over.
            await rbac_service.guard_manage_user(session, principal, user)
        if "user_principal_name" in changing:
            await self._check_upn_free(session, changing["user_principal_name"], user.id)
        outcome = None
        if data.enabled is False and user.enabled:
            outcome = await self._disable(session, principal, user)
        elif data.enabled is True and not user.enabled:
            # Re-enabling revives the account and its API tokens: it needs every right the account holds.
            await rbac_service.guard_manage_user(session, principal, user)
            user.enabled = True
        for name, value in changing.items():
            setattr(user, name, value)
        changes = diff(before, _snapshot(user))
        if changes:
            await self._updated(session, user, changes, outcome, rule_inputs)
        return user, outcome

    async def _disable(self, session: AsyncSession, principal: Principal, user: User) -> Deprovisioned:
        if user.id == principal.user_id:
            raise Conflict("You cannot disable your own account.")
        await rbac_service.guard_manage_user(session, principal, user)
        return await self._deprovision(session, user)

    async def _deprovision(self, session: AsyncSession, user: User) -> Deprovisioned:
        """Disable: never the last Global administrator; ends all sessions, applies the device policy."""
        await rbac_service.guard_disable(session, user)
        user.enabled = False
        outcome = await self._apply_device_policy(session, user)
        outcome.sessions_ended = await auth_service.end_all_sessions(session, user)
        return outcome

    async def _apply_device_policy(self, session: AsyncSession, user: User) -> Deprovisioned:
        """The tenant setting ``deprovisioned_user_devices``: "retire" queues a retire for each of the user's
        managed devices (asked for by Corral itself, whatever the acting administrator's device scope);
        "keep" leaves them managed as they are."""
        tenant = await tenant_service.get(session)
        outcome = Deprovisioned(policy=tenant.deprovisioned_user_devices)
        if outcome.policy != "retire":
            return outcome
        for device_id, name in await device_service.managed_of_user(session, user.id):
            request = CommandRequest(type="retire", params={}, reason=DEPROVISION_REASON)
            try:
                await command_service.queue(session, DEPROVISIONING, device_id, request)
            except CorralError as exc:  # refused before any change: report it, go on with the others
                outcome.retire_skipped.append(f"{name}: {exc.detail}")
            else:
                outcome.retire_queued.append(name)
        return outcome

    async def delete(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> Deprovisioned:
        """Local and OpenID Connect users only (SCIM users are deprovisioned by their identity provider);
        never an administrator (take their roles first). Their devices stay, without a user, or are retired,
        per the tenant setting; enrollment tokens bound to them are revoked."""
        user = await self.get_for(session, principal, user_id, P.users_write)
        if user.id == principal.user_id:
            raise Conflict("You cannot delete your own account.")
        if user.source == UserSource.scim:
            raise Conflict(
                f"{user.user_principal_name} is provisioned by SCIM: remove them at the identity provider, "
                "which deprovisions them here. You can disable them meanwhile."
            )
        if await repository.is_admin(session, user.id):
            raise Conflict(
                f"{user.user_principal_name} is an administrator: remove them from their role assignments "
                "and from the groups that give them a role first."
            )
        await rbac_service.guard_manage_user(session, principal, user)
        return await self._remove(session, user)

    async def _remove(self, session: AsyncSession, user: User) -> Deprovisioned:
        outcome = await self._apply_device_policy(session, user)
        outcome.sessions_ended = await auth_service.end_all_sessions(session, user)
        outcome.tokens_revoked = await enrollment_service.revoke_tokens_bound_to(session, user.id)
        snapshot = _snapshot(user)
        devices = await assignment_engine.devices_of_users(session, [user.id])
        await session.delete(user)
        await session.flush()
        await assignment_engine.refresh_devices(session, devices)  # they no longer come through the user
        await audit_service.record(
            session,
            activity="user.delete",
            category="user",
            operation="delete",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[(name, value, None) for name, value in snapshot.items() if value is not None],
            detail=outcome.summary(),
        )
        return outcome

    # ---------------------------------------------------------------- provisioned by an identity provider
    async def create_provisioned(
        self,
        session: AsyncSession,
        *,
        source: UserSource,
        connection_id: uuid.UUID,
        external_id: str | None,
        values: dict[str, str | None],
        enabled: bool,
    ) -> User:
        """A user pushed by an identity provider (SCIM): its properties belong to the provider."""
        upn = values.get("user_principal_name")
        if not upn or not values.get("display_name"):
            raise ValidationFailed("A user needs a user principal name and a display name.")
        await self._check_upn_free(session, upn)
        user = User(
            id=uuid.uuid4(),
            **{name: values.get(name) for name in PROPERTIES},
            source=source,
            connection_id=connection_id,
            external_id=external_id,
            enabled=enabled,
        )
        session.add(user)
        await session.flush()
        await session.refresh(user)
        snapshot = {**_snapshot(user), "external_id": external_id}
        await audit_service.record(
            session,
            activity="user.create",
            category="user",
            operation="create",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[(name, None, value) for name, value in snapshot.items() if value is not None],
        )
        await assignment_hooks.user_changed(session, user)
        return user

    async def update_provisioned(
        self,
        session: AsyncSession,
        user: User,
        *,
        external_id: str | None,
        values: dict[str, str | None],
        enabled: bool,
    ) -> tuple[User, Deprovisioned | None]:
        """The provider's view of the user replaces Corral's. Disabling them does what disabling does
        anywhere: all sessions end and the tenant's device policy applies (one audited ``user.update``)."""
        before = {**_snapshot(user), "external_id": user.external_id}
        rule_inputs = group_membership.user_rule_inputs(user)
        for required in ("user_principal_name", "display_name"):
            if not values.get(required):
                raise ValidationFailed("A user needs a user principal name and a display name.")
        upn = values["user_principal_name"]
        if upn is not None and upn != user.user_principal_name:
            await self._check_upn_free(session, upn, user.id)
        outcome = None
        if not enabled and user.enabled:
            outcome = await self._deprovision(session, user)
        elif enabled and not user.enabled:
            user.enabled = True
        for name in PROPERTIES:
            setattr(user, name, values.get(name))
        user.external_id = external_id
        changes = diff(before, {**_snapshot(user), "external_id": user.external_id})
        if changes:
            await self._updated(session, user, changes, outcome, rule_inputs)
        return user, outcome

    async def delete_provisioned(self, session: AsyncSession, user: User) -> Deprovisioned:
        """The provider removes the user: as a delete here, but never an administrator (409: take them out
        of their role assignments first) nor the last Global administrator."""
        if await repository.is_admin(session, user.id):
            raise Conflict(
                f"{user.user_principal_name} is a Corral administrator: remove them from their role "
                "assignments, and from the groups that give them a role, in Corral first (they can be "
                "disabled meanwhile)."
            )
        return await self._remove(session, user)

    # ---------------------------------------------------------------- passwords
    async def reset_password(self, session: AsyncSession, principal: Principal, user_id: uuid.UUID) -> str:
        """A one-time password for a local account (also gives one to a local user who had none, e.g. an
        end user made an administrator)."""
        user = await self.get_for(session, principal, user_id, P.users_write)
        if user.id == principal.user_id:
            raise Conflict("Change your own password from your account page.")
        if user.source != UserSource.local:
            raise Conflict(
                f"{user.user_principal_name} signs in through their identity provider: Corral holds no "
                "password for them."
            )
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
            target_name=user.user_principal_name,
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
        # Every other session of this account ends, and no browser is a known client of it any more.
        auth_service.forget_known_clients(user)
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
            target_name=user.user_principal_name,
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
            target_name=user.user_principal_name,
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
            target_name=user.user_principal_name,
            changes=[("totp", "enabled", None)],
        )

    # ---------------------------------------------------------------- bootstrap
    async def ensure_bootstrap_admin(self, session: AsyncSession, email: str) -> CreatedUser | None:
        """On first start (no Global administrator at all), create one with a one-time password."""
        holders = await rbac_repository.enabled_members_of_role(session, GLOBAL_ADMINISTRATOR.id)
        if holders or await repository.by_upn(session, email):
            return None
        return await self.create_admin(
            session, AdminCreate(email=email, display_name="Administrator", role_id=GLOBAL_ADMINISTRATOR.id)
        )


user_service = UserService()
