"""Identity connections (OpenID Connect providers) and single sign-on through them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.assignments import hooks as assignment_hooks
from corral.audit.refusals import Refusal, RefusalLog
from corral.audit.service import audit_service, diff
from corral.auth.service import auth_service
from corral.config import Settings
from corral.errors import Conflict, CorralError, NotFound, ValidationFailed
from corral.groups import membership as group_membership
from corral.identity import oidc, repository
from corral.identity.schemas import IdentityConnectionCreate, IdentityConnectionOut, IdentityConnectionUpdate
from corral.kit import context
from corral.kit.security import SecretBox
from corral.kit.text import clean_name, identifier_problem
from corral.kit.time import utcnow
from corral.models import IdentityConnection, User, UserIdentity, UserSession, UserSource

CALLBACK_PATH = "/auth/oidc/callback"
AUDITED = (
    "name",
    "enabled",
    "issuer",
    "client_id",
    "scopes",
    "groups_claim",
    "admin_sign_in",
    "user_sign_in",
)
# The claims a first sign-in takes the user principal name from, first present wins.
UPN_CLAIMS = ("preferred_username", "upn", "email")
# The properties the provider's claims set at first sign-in and refresh at each later one.
PROFILE = ("display_name", "email")


# Single sign-ons refused before the ID token is validated: reason codes and the audit log's words for them.
OIDC_REFUSALS = {
    "state_invalid": "single sign-on: the sign-in state is missing, expired or not this browser's",
    "connection_unavailable": "single sign-on: the identity connection is not available for sign-in",
    "provider_unavailable": "single sign-on: the identity provider could not be reached",
    "provider_error": "single sign-on: the provider's answer was refused",
}


class SignInRefused(CorralError):
    """A sign-in at the provider that Corral does not accept (shown as a page, audited)."""

    status_code = 403
    title = "Sign-in refused"


def redirect_uri(settings: Settings) -> str:
    return settings.base_url.rstrip("/") + CALLBACK_PATH


def _box(settings: Settings) -> SecretBox:
    return SecretBox(settings.resolved_secret_key(), "identity-connection-secret")


@dataclass
class OidcSignIn:
    """A user known (or just provisioned) and, unless ``refused`` says why not, a new session."""

    user: User
    user_session: UserSession | None = None
    token: str | None = None
    refused: str | None = None


class IdentityService:
    # ---------------------------------------------------------------- connections
    def out(self, settings: Settings, connection: IdentityConnection) -> IdentityConnectionOut:
        return IdentityConnectionOut(
            id=connection.id,
            name=connection.name,
            enabled=connection.enabled,
            issuer=connection.issuer,
            client_id=connection.client_id,
            client_secret_set=bool(connection.client_secret_encrypted),
            scopes=connection.scopes,
            groups_claim=connection.groups_claim,
            admin_sign_in=connection.admin_sign_in,
            user_sign_in=connection.user_sign_in,
            redirect_uri=redirect_uri(settings),
            created_at=connection.created_at,
            updated_at=connection.updated_at,
        )

    async def all(self, session: AsyncSession) -> list[IdentityConnection]:
        return await repository.connections(session)

    async def sign_in_options(self, session: AsyncSession) -> list[IdentityConnection]:
        return await repository.sign_in_connections(session)

    async def get(self, session: AsyncSession, connection_id: uuid.UUID) -> IdentityConnection:
        connection = await session.get(IdentityConnection, connection_id)
        if connection is None:
            raise NotFound("No such identity connection.")
        return connection

    async def _check_provider(self, settings: Settings, issuer: str) -> None:
        """The issuer's discovery document, fetched now. Every way the fetch can fail gets the same answer
        (kit.outbound: the reason is logged), so saving a connection cannot probe what answers where."""
        try:
            await oidc.discover(issuer, allow_private=settings.oidc_allow_private_issuers, fresh=True)
        except oidc.FetchFailed as exc:
            raise ValidationFailed(
                f"The identity provider at {issuer} cannot be used: its discovery document could not be "
                "fetched. It must answer at <issuer>/.well-known/openid-configuration over HTTP(S), without "
                "redirects, at a public address (a provider on a private, loopback or link-local address "
                "needs CORRAL_OIDC_ALLOW_PRIVATE_ISSUERS=true)."
            ) from exc
        except oidc.OidcError as exc:
            raise ValidationFailed(f"The identity provider at {issuer} cannot be used: {exc}") from exc

    async def _check_name(self, session: AsyncSession, name: str, own: uuid.UUID | None = None) -> None:
        other = await repository.connection_named(session, name)
        if other is not None and other.id != own:
            raise Conflict(f"An identity connection named {name!r} already exists.")

    async def create(
        self, session: AsyncSession, settings: Settings, data: IdentityConnectionCreate
    ) -> IdentityConnection:
        await self._check_name(session, data.name)
        await self._check_provider(settings, data.issuer)
        actor = context.current().actor
        creator = actor.id if actor is not None and actor.type in {"user", "token"} else None
        connection = IdentityConnection(
            id=uuid.uuid4(),
            name=data.name,
            enabled=data.enabled,
            oidc_enabled=True,
            issuer=data.issuer,
            client_id=data.client_id,
            client_secret_encrypted=_box(settings).encrypt(data.client_secret.encode()),
            scopes=data.scopes,
            groups_claim=data.groups_claim,
            admin_sign_in=data.admin_sign_in,
            user_sign_in=data.user_sign_in,
            created_by_id=creator,
        )
        session.add(connection)
        await self._flush(session, data.name)
        await audit_service.record(
            session,
            activity="identity_connection.create",
            category="identity",
            operation="create",
            target_type="identity_connection",
            target_id=connection.id,
            target_name=connection.name,
            changes=[*diff({}, {f: getattr(connection, f) for f in AUDITED}), ("client_secret", None, "***")],
        )
        await session.refresh(connection)
        return connection

    async def _flush(self, session: AsyncSession, name: str) -> None:
        try:
            async with session.begin_nested():
                await session.flush()
        except IntegrityError as exc:
            raise Conflict(f"An identity connection named {name!r} already exists.") from exc

    async def update(
        self,
        session: AsyncSession,
        settings: Settings,
        connection_id: uuid.UUID,
        data: IdentityConnectionUpdate,
    ) -> IdentityConnection:
        connection = await self.get(session, connection_id)
        before = {f: getattr(connection, f) for f in AUDITED}
        values = data.model_dump(exclude_unset=True, exclude_none=True)
        secret = values.pop("client_secret", None)
        if "name" in values:
            await self._check_name(session, values["name"], connection.id)
        if "issuer" in values:
            await self._check_provider(settings, values["issuer"])
        for field, value in values.items():
            setattr(connection, field, value)
        changes = diff(before, {f: getattr(connection, f) for f in AUDITED})
        if secret is not None:
            connection.client_secret_encrypted = _box(settings).encrypt(secret.encode())
            changes.append(("client_secret", "***", "*** (replaced)"))
        if changes:
            await self._flush(session, connection.name)
            await audit_service.record(
                session,
                activity="identity_connection.update",
                category="identity",
                operation="update",
                target_type="identity_connection",
                target_id=connection.id,
                target_name=connection.name,
                changes=changes,
            )
            await session.refresh(connection)
        return connection

    async def delete(self, session: AsyncSession, connection_id: uuid.UUID) -> None:
        connection = await self.get(session, connection_id)
        await session.delete(connection)
        await session.flush()
        await audit_service.record(
            session,
            activity="identity_connection.delete",
            category="identity",
            operation="delete",
            target_type="identity_connection",
            target_id=connection.id,
            target_name=connection.name,
            changes=diff({f: getattr(connection, f) for f in AUDITED}, {}),
        )

    def client_secret(self, settings: Settings, connection: IdentityConnection) -> str:
        assert connection.client_secret_encrypted is not None
        return _box(settings).decrypt(connection.client_secret_encrypted).decode()

    async def usable(self, session: AsyncSession, connection_id: uuid.UUID) -> IdentityConnection:
        connection = await session.get(IdentityConnection, connection_id)
        if (
            connection is None
            or not connection.enabled
            or not connection.oidc_enabled
            or not connection.issuer
            or not connection.client_id
            or not connection.client_secret_encrypted
        ):
            raise SignInRefused("This identity connection is not available for sign-in.")
        return connection

    # ---------------------------------------------------------------- single sign-on
    async def refuse(
        self,
        refusals: RefusalLog,
        connection: IdentityConnection | None,
        reason: str,
        *,
        endpoint: str,
    ) -> None:
        """Audit a single sign-on refused before the provider's ID token was validated (anyone can cause
        these): through the refusal log, aggregated per connection (or per client address when no connection
        is known), with the server's fixed words for ``reason`` — never text from the request."""
        await refusals.record(
            Refusal(
                activity="signin",
                category="authentication",
                operation="signin",
                endpoint=endpoint,
                reason=reason,
                text=OIDC_REFUSALS[reason] + (f" ({connection.name})" if connection else ""),
                source=context.current().client_ip,
                actor=context.Actor(type="anonymous"),
                target_type="identity_connection" if connection else None,
                target_id=connection.id if connection else None,
                target_name=connection.name if connection else None,
                subject=f"identity_connection:{connection.id}" if connection else None,
            )
        )

    async def refuse_account(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        connection: IdentityConnection,
        detail: str,
        *,
        name: str | None = None,
        user_id: uuid.UUID | None = None,
    ) -> None:
        """Audit a single sign-on refused after the provider's ID token was validated (the account it names is
        not admitted): one row each, since only a real account at the provider can cause one."""
        await audit_service.record_now(
            sessionmaker,
            activity="signin",
            category="authentication",
            operation="signin",
            result="failure",
            target_type="user",
            target_id=user_id,
            target_name=(name or "unknown")[:320],
            detail=f"oidc {connection.name}: {detail}"[:500],
            actor=context.Actor(type="anonymous", name=(name or "unknown")[:320]),
        )

    @staticmethod
    def upn_from(claims: dict[str, Any]) -> str | None:
        """The account's name from the first claim present; refused (SignInRefused) when it holds a control,
        format or separator character (kit.text: an identifier, as for local and SCIM users)."""
        for claim in UPN_CLAIMS:
            value = claims.get(claim)
            if isinstance(value, str) and value.strip() and len(value.strip()) <= 320:
                problem = identifier_problem(value.strip())
                if problem:
                    raise SignInRefused(
                        f"The identity provider's {claim} claim cannot name a Corral account: it {problem}. "
                        "Ask an administrator to correct it at the identity provider."
                    )
                return value.strip()
        return None

    @staticmethod
    def groups_from(claims: dict[str, Any], claim: str) -> list[str]:
        """The claimed groups; a value holding a control, format or separator character is no group (it
        would name a group by an identifier Corral refuses everywhere else), so it is left out."""
        value = claims.get(claim)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            return []
        return sorted(
            {v for v in value if isinstance(v, str) and 0 < len(v) <= 256 and identifier_problem(v) is None}
        )

    async def complete_sign_in(
        self,
        session: AsyncSession,
        settings: Settings,
        connection: IdentityConnection,
        claims: dict[str, Any],
    ) -> OidcSignIn:
        """After the ID token is validated: the user by (issuer, subject) — never by email — created at
        first sign-in, their display name and email refreshed from the claims at later ones; the
        connection's groups set to exactly the claimed ones; a session when the user may sign in here.
        A user holding a role signs in where the connection admits administrators; one holding none, as an
        end user (self-service only), where it admits end users. Refusals before the account exists raise
        SignInRefused; later ones (disabled, not admitted here) come back in ``refused`` so the account and
        its groups are kept (an administrator can then give the group a role). The caller audits refusals."""
        assert connection.issuer is not None
        subject = str(claims["sub"])
        if identifier_problem(subject):
            raise SignInRefused(
                "The identity provider sent a subject (sub) Corral cannot store as an identifier."
            )
        now = utcnow()
        found = await repository.identity(session, connection.issuer, subject)
        if found is not None:
            user = await session.get(User, found.user_id)
            assert user is not None
            found.last_sign_in_at = now
            # What follows (profile, groups, the session) is done by the person signing in.
            context.set_actor(context.Actor(type="user", id=user.id, name=user.user_principal_name))
        else:
            user = await self._first_sign_in(session, connection, subject, claims)
        if not user.enabled:
            return OidcSignIn(user, refused="Your Corral account is disabled.")
        if found is not None:
            await self._refresh_profile(session, connection, user, claims)
        added, removed = await self._sync_groups(session, connection, user, claims)
        await session.flush()
        end_user = not await auth_service.grants_of(session, user.id)
        if not end_user:
            # An administrator: a session carries every permission they hold, so only where admins may.
            if not connection.admin_sign_in:
                return OidcSignIn(
                    user, refused=f"{connection.name} is not enabled for administrator sign-in."
                )
            detail = f"oidc {connection.name}"
        else:
            # An end user (no role): a session that reaches only self-service (their own devices).
            if not connection.user_sign_in:
                return OidcSignIn(
                    user,
                    refused=f"You signed in at the identity provider, but you hold no Corral administrator "
                    f"role, and {connection.name} is not enabled for end-user sign-in.",
                )
            detail = f"oidc {connection.name} (end user)"
        if added or removed:
            detail += f"; groups added: {', '.join(added) or '-'}; removed: {', '.join(removed) or '-'}"
        user_session, token = await auth_service.open_session(
            session, settings, user, detail=detail[:500], self_service_only=end_user
        )
        return OidcSignIn(user, user_session, token)

    @staticmethod
    def profile_from(claims: dict[str, Any]) -> dict[str, str]:
        """The profile properties the claims carry (a claim left out or empty is no value). The name is
        cleaned like every name (kit.text); an email address holding a control, format or separator
        character is no value (it is not the account's name: the sign-in goes on without it)."""
        profile: dict[str, str] = {}
        name, email = claims.get("name"), claims.get("email")
        if isinstance(name, str) and clean_name(name):
            profile["display_name"] = clean_name(name)[:256]
        if isinstance(email, str) and email and identifier_problem(email) is None:
            profile["email"] = email[:320]
        return profile

    async def _first_sign_in(
        self, session: AsyncSession, connection: IdentityConnection, subject: str, claims: dict[str, Any]
    ) -> User:
        """The account for a first sign-in, linked to (issuer, subject); audited as created by the person
        signing in, through the connection."""
        assert connection.issuer is not None
        upn = self.upn_from(claims)
        if upn is None:
            raise SignInRefused(
                "The identity provider sent no preferred_username, upn or email claim to name the account."
            )
        if await repository.user_by_upn(session, upn) is not None:
            raise SignInRefused(
                f"An account named {upn} already exists in Corral and is not linked to this identity "
                "provider; it is not merged automatically. Ask an administrator."
            )
        profile = self.profile_from(claims)
        user = User(
            id=uuid.uuid4(),
            user_principal_name=upn,
            display_name=profile.get("display_name", upn[:256]),
            email=profile.get("email"),
            source=UserSource.oidc,
            connection_id=connection.id,
        )
        session.add(user)
        await session.flush()
        now = utcnow()
        session.add(
            UserIdentity(
                id=uuid.uuid4(),
                user_id=user.id,
                connection_id=connection.id,
                issuer=connection.issuer,
                subject=subject,
                created_at=now,
                last_sign_in_at=now,
            )
        )
        context.set_actor(context.Actor(type="user", id=user.id, name=user.user_principal_name))
        await audit_service.record(
            session,
            activity="user.create",
            category="user",
            operation="create",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[
                (name, None, value)
                for name, value in (
                    ("user_principal_name", user.user_principal_name),
                    ("display_name", user.display_name),
                    ("email", user.email),
                    ("source", user.source.value),
                )
                if value is not None
            ],
            detail=f"first single sign-on through {connection.name}",
        )
        await assignment_hooks.user_changed(session, user)
        return user

    async def _refresh_profile(
        self, session: AsyncSession, connection: IdentityConnection, user: User, claims: dict[str, Any]
    ) -> None:
        """A returning user's display name and email address as the provider now sends them (a claim left
        out changes nothing); a change is audited as a ``user.update`` and refreshes their dynamic groups.
        Email addresses are not unique in Corral: a changed one is taken as it is."""
        profile = self.profile_from(claims)
        before = {name: getattr(user, name) for name in PROFILE}
        changing = {name: value for name, value in profile.items() if value != before[name]}
        if not changing:
            return
        rule_inputs = group_membership.user_rule_inputs(user)
        for name, value in changing.items():
            setattr(user, name, value)
        await session.flush()
        await audit_service.record(
            session,
            activity="user.update",
            category="user",
            operation="update",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=diff(before, {name: getattr(user, name) for name in PROFILE}),
            detail=f"single sign-on through {connection.name}: profile from the identity provider",
        )
        await assignment_hooks.user_changed(session, user, unless=rule_inputs)

    async def _sync_groups(
        self, session: AsyncSession, connection: IdentityConnection, user: User, claims: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        claimed = self.groups_from(claims, connection.groups_claim)
        wanted = await repository.oidc_groups(session, connection.id, claimed)
        current = await repository.user_oidc_groups(session, connection.id, user.id)
        to_add = [g for g in wanted.values() if g not in current]
        to_remove = [g for g in current if g not in set(wanted.values())]
        await repository.add_memberships(session, user.id, to_add)
        await repository.remove_memberships(session, user.id, to_remove)
        if to_add or to_remove:
            await assignment_hooks.users_regrouped(session, [user.id])
        by_id = {g: name for name, g in wanted.items()}
        return sorted(by_id[g] for g in to_add), sorted(current[g] for g in to_remove)


identity_service = IdentityService()
