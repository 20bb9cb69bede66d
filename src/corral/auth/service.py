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

from corral.audit.refusals import Refusal, RefusalLog
from corral.audit.service import audit_service
from corral.auth import repository
from corral.config import Settings
from corral.errors import NotAuthenticated, TooManyRequests
from corral.kit import context
from corral.kit.security import (
    SecretBox,
    constant_time_equals,
    hash_password,
    hmac_sign,
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

KNOWN_CLIENT_VERSION = "k1"
KNOWN_CLIENT_MAX_LENGTH = 200
KNOWN_CLIENT_CLOCK_SKEW = 300  # seconds a cookie's issue time may lie ahead (replicas' clocks differ)


@dataclass
class SignInResult:
    user: User
    user_session: UserSession
    token: str
    needs_second_factor: bool
    # A new known-client cookie for the browser, once the sign-in is complete (None while a second factor is
    # awaited).
    known_client_cookie: str | None = None


@dataclass(frozen=True)
class ThrottleKey:
    key: str
    limit: int  # failures after which every further failure delays the next attempt


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


SIGN_IN_ENDPOINT = "/portal/sign-in"
SECOND_FACTOR_ENDPOINT = "/portal/sign-in/verify"
# Refused sign-ins: reason codes (metric labels, aggregation keys) and the audit log's words for them.
SIGN_IN_REFUSALS = {
    "unknown_account": "no account has this sign-in name",
    "wrong_password": "wrong password",
    "account_disabled": "the account is disabled",
    "throttled": "too many failed attempts: wait",
    "wrong_second_factor": "wrong or reused verification code",
}


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
    # ---------------------------------------------------------------- known clients
    # OWASP's "device cookie": a browser that completed a sign-in to an account (password, and second factor
    # where enrolled) gets a long-lived cookie naming the account and a random client id, signed with the
    # secret key and the account's ``known_clients_generation``. Failures from that browser for that account
    # count against it alone, so nobody elsewhere can stop the owner signing in on it.
    def known_client_cookie(self, settings: Settings, user: User) -> str:
        """A fresh known-client cookie value for ``user``, issued after a completed sign-in."""
        issued = int(utcnow().timestamp())
        client_id = secrets.token_urlsafe(12)
        mac = self._known_client_mac(settings, user, issued, client_id)
        return f"{KNOWN_CLIENT_VERSION}.{user.id.hex}.{issued}.{client_id}.{mac}"

    def known_client_id(self, settings: Settings, user: User, cookie: str | None) -> str | None:
        """The client id a known-client cookie proves for ``user``; None for no cookie, a malformed, forged or
        expired one, one of another account, or one signed before the account's password changed or its
        sessions were all ended (disable, password reset)."""
        if not cookie or len(cookie) > KNOWN_CLIENT_MAX_LENGTH:
            return None
        parts = cookie.split(".")
        if len(parts) != 5 or parts[0] != KNOWN_CLIENT_VERSION or parts[1] != user.id.hex:
            return None
        issued_text, client_id, mac = parts[2], parts[3], parts[4]
        if not (issued_text.isascii() and issued_text.isdigit()) or not client_id:
            return None
        issued, now = int(issued_text), utcnow().timestamp()
        lifetime = timedelta(days=settings.signin_known_client_days).total_seconds()
        if not now - lifetime < issued <= now + KNOWN_CLIENT_CLOCK_SKEW:
            return None
        if not constant_time_equals(mac, self._known_client_mac(settings, user, issued, client_id)):
            return None
        return client_id

    def forget_known_clients(self, user: User) -> None:
        """Every known-client cookie of the account stops counting (flushed with the caller's transaction)."""
        user.known_clients_generation += 1

    def _known_client_mac(self, settings: Settings, user: User, issued: int, client_id: str) -> str:
        message = f"{KNOWN_CLIENT_VERSION}|{user.id.hex}|{user.known_clients_generation}|{issued}|{client_id}"
        return hmac_sign(settings.resolved_secret_key(), "known-client", message)

    # ---------------------------------------------------------------- throttling
    def _throttle_keys(
        self,
        settings: Settings,
        *,
        account: str,
        user: User | None,
        client_ip: str | None,
        known_client: str | None,
    ) -> list[ThrottleKey]:
        """What a failed attempt counts against. From a known client of the account: that client only. From
        any other client: the account (all such clients together), the account and address, the address.
        ``account`` is the user principal name of an existing account (whichever of its names was typed),
        else the typed name, so unknown accounts are throttled exactly like real ones."""
        if user is not None:
            client_id = self.known_client_id(settings, user, known_client)
            if client_id is not None:
                return [
                    ThrottleKey(
                        f"known:{user.id.hex}:{client_id}", settings.signin_max_failures_per_known_client
                    )
                ]
        name = account.strip().lower()[:320]
        keys = [ThrottleKey(f"account:{name}", settings.signin_max_failures_per_account)]
        if client_ip:
            address = client_ip[:64]
            keys.append(
                ThrottleKey(
                    f"account-client:{name}|{address}", settings.signin_max_failures_per_account_and_client
                )
            )
            keys.append(ThrottleKey(f"client:{address}", settings.signin_max_failures_per_client))
        return keys

    def delay_after(self, settings: Settings, failures: int, limit: int) -> timedelta | None:
        """How long a key makes the next attempt wait after its ``failures``-th failure: not at all below its
        ``limit``; then the first delay, doubled for each failure beyond, capped."""
        excess = failures - limit
        if excess < 0:
            return None
        cap = settings.signin_max_delay_minutes * 60
        return timedelta(seconds=min(cap, settings.signin_first_delay_seconds * 2 ** min(excess, 32)))

    def _refusal(self, waits: list[timedelta]) -> TooManyRequests:
        retry = max(1, math.ceil(max(waits).total_seconds()))
        return TooManyRequests(
            f"Too many failed sign-in attempts. Try again in {_duration(retry)}.",
            headers={"Retry-After": str(retry)},
        )

    async def _admit(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        keys: list[ThrottleKey],
    ) -> None:
        """Refuses the attempt (429, nothing counted) while any of its keys makes attempts wait; otherwise
        counts it as a failure against every key before the password or code is checked, taken back if it
        succeeds. Counted in a transaction of its own, the rows locked in key order, so that concurrent
        attempts are admitted one at a time and see each other's counts: a burst of parallel guesses gets no
        more through than the same guesses one after another."""
        now = utcnow()
        ends = await repository.throttle_delays(session, [k.key for k in keys], now)
        if ends:  # the common refusal during an attack, without taking any lock
            raise self._refusal([end - now for end in ends])
        window = timedelta(minutes=settings.signin_window_minutes)
        async with sessionmaker() as counting:
            rows = [
                (key, await repository.lock_throttle(counting, key.key, now))
                for key in sorted(keys, key=lambda k: k.key)
            ]
            now = utcnow()
            waits = [
                row.locked_until - now
                for _, row in rows
                if row.locked_until is not None and row.locked_until > now
            ]
            if waits:
                await counting.rollback()
                raise self._refusal(waits)
            for key, row in rows:
                if (row.locked_until or row.window_started_at) + window <= now:
                    row.failures, row.window_started_at, row.locked_until = 0, now, None
                row.failures += 1
                delay = self.delay_after(settings, row.failures, key.limit)
                if delay is not None:
                    row.locked_until = now + delay
            await counting.commit()

    async def _take_back(self, session: AsyncSession, keys: list[ThrottleKey]) -> None:
        """The admitted attempt succeeded: it no longer counts as a failure (others' failures still do)."""
        await repository.uncount_throttles(
            session, [(k.key, k.limit) for k in sorted(keys, key=lambda k: k.key)]
        )

    async def _signed_in(
        self, session: AsyncSession, settings: Settings, user: User, keys: list[ThrottleKey]
    ) -> str:
        """After a completed sign-in: this client's own counters (known client, account and address) start
        afresh, the attempt is taken back from the account's and the address's, and the browser gets a new
        known-client cookie."""
        own = [k for k in keys if k.key.startswith(("known:", "account-client:"))]
        await repository.clear_throttles(session, [k.key for k in own])
        await self._take_back(session, [k for k in keys if k not in own])
        return self.known_client_cookie(settings, user)

    async def _refused(
        self, refusals: RefusalLog, reason: str, *, user: User | None, second_factor: bool = False
    ) -> None:
        """Audit a refused sign-in through the refusal log: anyone can cause these, so they are aggregated
        (the first of a kind at once, then a summary per window) and carry only what the server knows — the
        account when there is one, never the name that was typed."""
        client = context.current().client_ip
        await refusals.record(
            Refusal(
                activity="signin",
                category="authentication",
                operation="signin",
                endpoint=SECOND_FACTOR_ENDPOINT if second_factor else SIGN_IN_ENDPOINT,
                reason=reason,
                text=SIGN_IN_REFUSALS[reason],
                source=client,
                actor=_actor_for(user) if second_factor and user else context.Actor(type="anonymous"),
                # About an account even when none has the typed name: a reader whose scope limits users
                # does not see refusals naming no user (docs/api.md, "Audit log").
                target_type="user",
                target_id=user.id if user else None,
                target_name=user.user_principal_name if user else None,
                subject=f"user:{user.id}" if user else None,
            )
        )

    # ---------------------------------------------------------------- sign-in
    async def sign_in(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        username: str,
        password: str,
        refusals: RefusalLog,
        known_client: str | None = None,
    ) -> SignInResult:
        """Password sign-in with a user principal name, or a local account's own (unshared) email address.
        Failures count against the account whichever of its names was typed, and are audited through
        ``refusals``; ``known_client`` is the browser's known-client cookie, if any. Without a second factor
        the result carries a new one."""
        ctx = context.current()
        user = await repository.user_by_sign_in_name(session, username)
        keys = self._throttle_keys(
            settings,
            account=user.user_principal_name if user else username,
            user=user,
            client_ip=ctx.client_ip,
            known_client=known_client,
        )
        try:
            await self._admit(session, sessionmaker, settings, keys)
        except TooManyRequests:
            # Before the password is checked, and the same answer for unknown accounts: says nothing about
            # either (the audit log, which only administrators read, names the account when there is one).
            await self._refused(refusals, "throttled", user=user)
            raise
        ok = verify_password(user.password_hash if user else None, password)
        if not ok or user is None or not user.enabled:
            reason = "unknown_account" if user is None else ("account_disabled" if ok else "wrong_password")
            await self._refused(refusals, reason, user=user)
            raise NotAuthenticated(INVALID_CREDENTIALS)
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
        cookie = None
        if user.totp_enabled:
            # The password was right; the code, still to come, counts on its own. Nothing is cleared or
            # remembered until it is given too.
            await self._take_back(session, keys)
        else:
            cookie = await self._signed_in(session, settings, user, keys)
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
        return SignInResult(user, user_session, token, user.totp_enabled, cookie)

    async def verify_second_factor(
        self,
        session: AsyncSession,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        user_session: UserSession,
        user: User,
        code: str,
        refusals: RefusalLog,
        known_client: str | None = None,
    ) -> SignInResult:
        """The second step of a sign-in with a second factor, throttled like the first (wrong codes count
        against the same keys as wrong passwords) and audited alike."""
        keys = self._throttle_keys(
            settings,
            account=user.user_principal_name,
            user=user,
            client_ip=context.current().client_ip,
            known_client=known_client,
        )
        try:
            await self._admit(session, sessionmaker, settings, keys)
        except TooManyRequests:
            await self._refused(refusals, "throttled", user=user, second_factor=True)
            raise
        step = self.totp_step_if_valid(settings, user, code)
        if step is None:
            await self._refused(refusals, "wrong_second_factor", user=user, second_factor=True)
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
        cookie = await self._signed_in(session, settings, user, keys)
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
        return SignInResult(user, rotated, token, False, cookie)

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
        """Signs the account out everywhere (disable, delete, password reset): its sessions end and the
        browsers it signed in on are no longer known clients."""
        self.forget_known_clients(user)
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
