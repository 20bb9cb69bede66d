"""Sign-in and sessions for people; bearer tokens for automation; the principal each request acts as."""

from __future__ import annotations

import math
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pyotp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.audit.service import audit_service
from corral.auth import repository
from corral.config import Settings
from corral.errors import NotAuthenticated, TooManyRequests
from corral.kit import context
from corral.kit.security import (
    SecretBox,
    hash_password,
    password_needs_rehash,
    token_digest,
    verify_password,
)
from corral.kit.time import utcnow
from corral.models import RoleAssignment, User, UserSession
from corral.rbac.permissions import P
from corral.rbac.principal import Grant, Principal, Scope, assignment_scope
from corral.rbac.roles import role_permissions

SESSION_TOKEN_PREFIX = "cs"  # noqa: S105 - a prefix, not a secret
API_TOKEN_PREFIX = "corral_pat"  # noqa: S105 - a prefix, not a secret
TOUCH_EVERY = timedelta(seconds=60)
TOTP_ISSUER = "Corral"

INVALID_CREDENTIALS = "The sign-in name or password is incorrect."


@dataclass
class SignInResult:
    user: User
    user_session: UserSession
    token: str
    needs_second_factor: bool


def _actor_for(user: User) -> context.Actor:
    return context.Actor(type="user", id=user.id, name=user.user_principal_name)


def scope_of(assignment: RoleAssignment, nested: Mapping[uuid.UUID, frozenset[uuid.UUID]]) -> Scope:
    """The scope of an assignment loaded with its scope tags and groups (``nested``: see
    ``repository.with_nested``)."""
    return assignment_scope(
        all_tags=assignment.scope_all,
        tag_ids=(t.id for t in assignment.scope_tags),
        scope_group_ids=(g.id for g in assignment.scope_groups),
        nested=nested,
    )


class AuthService:
    # ---------------------------------------------------------------- throttling
    def _throttle_keys(self, account: str, client_ip: str | None) -> list[str]:
        keys = [f"account:{account.strip().lower()}"]
        if client_ip:
            keys.append(f"client:{client_ip}")
        return keys

    async def _check_throttle(self, session: AsyncSession, keys: list[str]) -> None:
        now = utcnow()
        for row in await repository.throttle_rows(session, keys):
            if row.locked_until and row.locked_until > now:
                retry = max(1, math.ceil((row.locked_until - now).total_seconds()))
                raise TooManyRequests(
                    "Too many failed sign-in attempts. Try again later.",
                    headers={"Retry-After": str(retry)},
                )

    async def _count_failure(
        self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, keys: list[str]
    ) -> None:
        now = utcnow()
        window = timedelta(minutes=settings.signin_window_minutes)
        async with sessionmaker() as session:
            for key in keys:
                limit = (
                    settings.signin_max_failures_per_account
                    if key.startswith("account:")
                    else settings.signin_max_failures_per_client
                )
                row = await repository.lock_throttle(session, key, now)
                if row.window_started_at < now - window:
                    row.failures, row.window_started_at, row.locked_until = 0, now, None
                row.failures += 1
                if row.failures >= limit:
                    row.locked_until = now + window
            await session.commit()

    # ---------------------------------------------------------------- sign-in
    async def sign_in(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        username: str,
        password: str,
    ) -> SignInResult:
        """Password sign-in with a user principal name, or a local account's own (unshared) email address.
        Failures count against the account whichever of its names was typed."""
        ctx = context.current()
        user = await repository.user_by_sign_in_name(session, username)
        keys = self._throttle_keys(user.user_principal_name if user else username, ctx.client_ip)
        attempted = username.strip()[:320]
        try:
            await self._check_throttle(session, keys)
        except TooManyRequests:
            await audit_service.record_now(
                sessionmaker,
                activity="signin",
                category="authentication",
                operation="signin",
                result="failure",
                target_type="user",
                target_name=attempted,
                detail="throttled",
                actor=context.Actor(type="anonymous", name=attempted),
            )
            raise
        ok = verify_password(user.password_hash if user else None, password)
        if not ok or user is None or not user.enabled:
            reason = "unknown account" if user is None else ("account disabled" if ok else "wrong password")
            await self._count_failure(sessionmaker, settings, keys)
            await audit_service.record_now(
                sessionmaker,
                activity="signin",
                category="authentication",
                operation="signin",
                result="failure",
                target_type="user",
                target_id=user.id if user else None,
                target_name=attempted,
                detail=reason,
                actor=context.Actor(type="anonymous", name=attempted),
            )
            raise NotAuthenticated(INVALID_CREDENTIALS)
        await repository.clear_throttle(session, keys[0])
        assert user.password_hash is not None
        if password_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        token = f"{SESSION_TOKEN_PREFIX}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        user_session = UserSession(
            id=uuid.uuid4(),
            token_hash=token_digest(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.session_absolute_hours),
            pending_mfa=user.totp_enabled,
            ip_address=ctx.client_ip,
            user_agent=(ctx.user_agent or "")[:512] or None,
        )
        session.add(user_session)
        if not user.totp_enabled:
            user.last_sign_in_at = now
            await audit_service.record(
                session,
                activity="signin",
                category="authentication",
                operation="signin",
                target_type="user",
                target_id=user.id,
                target_name=user.user_principal_name,
                actor=_actor_for(user),
            )
        await session.flush()
        return SignInResult(user, user_session, token, user.totp_enabled)

    async def verify_second_factor(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        user_session: UserSession,
        user: User,
        code: str,
    ) -> tuple[UserSession, str]:
        keys = self._throttle_keys(user.user_principal_name, context.current().client_ip)
        await self._check_throttle(session, keys)
        step = self.totp_step_if_valid(settings, user, code)
        if step is None:
            await self._count_failure(sessionmaker, settings, keys)
            await audit_service.record_now(
                sessionmaker,
                activity="signin",
                category="authentication",
                operation="signin",
                result="failure",
                target_type="user",
                target_id=user.id,
                target_name=user.user_principal_name,
                detail="wrong second factor",
                actor=_actor_for(user),
            )
            raise NotAuthenticated("The verification code is incorrect or was already used.")
        user.totp_last_used_step = step
        # A fresh session id once fully signed in.
        await repository.delete_session(session, user_session.id)
        now = utcnow()
        rotated = UserSession(
            id=uuid.uuid4(),
            token_hash=b"",
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=user_session.expires_at,
            pending_mfa=False,
            ip_address=user_session.ip_address,
            user_agent=user_session.user_agent,
        )
        token = self.issue_session_token(rotated)
        session.add(rotated)
        user.last_sign_in_at = now
        await repository.clear_throttle(session, keys[0])
        await audit_service.record(
            session,
            activity="signin",
            category="authentication",
            operation="signin",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            detail="with second factor",
            actor=_actor_for(user),
        )
        return rotated, token

    async def open_session(
        self,
        session: AsyncSession,
        settings: Settings,
        user: User,
        *,
        detail: str,
        self_service_only: bool = False,
    ) -> tuple[UserSession, str]:
        """A fresh, fully signed-in session after sign-in at an identity provider (which did any second
        factor): a new session id, audited as ``signin`` with the method in ``detail``. An end user's session
        (``self_service_only``) carries no permission, whatever roles the person is given later."""
        ctx = context.current()
        now = utcnow()
        user_session = UserSession(
            id=uuid.uuid4(),
            token_hash=b"",
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(hours=settings.session_absolute_hours),
            pending_mfa=False,
            self_service_only=self_service_only,
            ip_address=ctx.client_ip,
            user_agent=(ctx.user_agent or "")[:512] or None,
        )
        token = self.issue_session_token(user_session)
        session.add(user_session)
        user.last_sign_in_at = now
        await audit_service.record(
            session,
            activity="signin",
            category="authentication",
            operation="signin",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            detail=detail,
            actor=_actor_for(user),
        )
        await session.flush()
        return user_session, token

    def issue_session_token(self, user_session: UserSession) -> str:
        token = f"{SESSION_TOKEN_PREFIX}_{secrets.token_urlsafe(32)}"
        user_session.token_hash = token_digest(token)
        return token

    async def sign_out(self, session: AsyncSession, user_session: UserSession, user: User) -> None:
        await repository.delete_session(session, user_session.id)
        await audit_service.record(
            session,
            activity="signout",
            category="authentication",
            operation="signout",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
        )

    async def end_all_sessions(self, session: AsyncSession, user: User) -> int:
        return await repository.delete_sessions_of(session, user.id)

    # ---------------------------------------------------------------- second factor
    def totp_secret(self, settings: Settings, user: User) -> str | None:
        if not user.totp_secret_encrypted:
            return None
        return SecretBox(settings.resolved_secret_key(), "totp").decrypt(user.totp_secret_encrypted).decode()

    def totp_step_if_valid(self, settings: Settings, user: User, code: str) -> int | None:
        secret = self.totp_secret(settings, user)
        code = code.strip().replace(" ", "")
        if not secret or not code.isdigit() or len(code) != 6:
            return None
        totp = pyotp.TOTP(secret)
        now = utcnow()
        current_step = int(now.timestamp()) // totp.interval
        for offset in (0, -1, 1):
            step = current_step + offset
            if secrets.compare_digest(totp.at(step * totp.interval), code):
                if user.totp_last_used_step is not None and step <= user.totp_last_used_step:
                    return None  # a code is good once
                return step
        return None

    def new_totp_secret(self) -> str:
        return pyotp.random_base32()

    def totp_uri(self, secret: str, user: User, issuer: str) -> str:
        return pyotp.TOTP(secret).provisioning_uri(
            name=user.user_principal_name, issuer_name=issuer or TOTP_ISSUER
        )

    # ---------------------------------------------------------------- resolving a request
    async def session_from_token(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        token: str,
    ) -> tuple[UserSession, User] | None:
        found = await repository.session_with_user(session, token_digest(token))
        if found is None:
            return None
        user_session, user = found
        now = utcnow()
        idle = timedelta(minutes=settings.session_idle_minutes)
        if user_session.expires_at <= now or user_session.last_seen_at + idle <= now or not user.enabled:
            # Deleted in a transaction of its own: the request that found it will fail and roll back.
            async with sessionmaker() as cleanup:
                await repository.delete_session(cleanup, user_session.id)
                await cleanup.commit()
            return None
        if now - user_session.last_seen_at >= TOUCH_EVERY:
            await repository.touch_session(session, user_session.id, now)
        return user_session, user

    async def token_principal(self, session: AsyncSession, token: str) -> Principal | None:
        found = await repository.token_with_user(session, token_digest(token))
        if found is None:
            return None
        api_token, user = found
        now = utcnow()
        if api_token.revoked_at is not None or api_token.expires_at <= now or not user.enabled:
            return None
        if api_token.last_used_at is None or now - api_token.last_used_at >= TOUCH_EVERY:
            await repository.touch_token(session, api_token.id, now)
        narrowed = (
            frozenset(P(p) for p in api_token.permissions) if api_token.permissions is not None else None
        )
        principal = await self.principal_for(session, user, token_id=api_token.id, narrowed_to=narrowed)
        # The first-sign-in password change concerns interactive sign-in, not tokens made for automation.
        return replace(principal, must_change_password=False)

    async def grants_of(self, session: AsyncSession, user_id: uuid.UUID) -> tuple[Grant, ...]:
        assignments = await repository.assignments_of(session, user_id)
        nested = await repository.with_nested(
            session, {g.id for assignment in assignments for g in assignment.scope_groups}
        )
        grants = []
        for assignment in assignments:
            grants.append(
                Grant(
                    role_id=assignment.role_id,
                    role_name=assignment.role.name,
                    assignment_id=assignment.id,
                    assignment_name=assignment.name,
                    permissions=role_permissions(assignment.role),
                    scope=scope_of(assignment, nested),
                )
            )
        return tuple(grants)

    async def principal_for(
        self,
        session: AsyncSession,
        user: User,
        *,
        token_id: uuid.UUID | None = None,
        narrowed_to: frozenset[P] | None = None,
        user_session: UserSession | None = None,
    ) -> Principal:
        return Principal(
            user_id=user.id,
            user_principal_name=user.user_principal_name,
            email=user.email,
            display_name=user.display_name,
            grants=(
                ()
                if user_session is not None and user_session.self_service_only
                else await self.grants_of(session, user.id)
            ),
            token_id=token_id,
            narrowed_to=narrowed_to,
            session_id=user_session.id if user_session else None,
            csrf_token=user_session.csrf_token if user_session else None,
            must_change_password=user.must_change_password,
        )


def session_expiry(settings: Settings, user_session: UserSession) -> datetime:
    return min(
        user_session.expires_at, user_session.last_seen_at + timedelta(minutes=settings.session_idle_minutes)
    )


auth_service = AuthService()
