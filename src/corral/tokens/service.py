"""API tokens: shown once, stored as digests, expiring, revocable, acting as their owner (or less)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.auth.service import API_TOKEN_PREFIX
from corral.errors import Conflict, NotFound, ValidationFailed
from corral.kit.security import new_token, token_digest
from corral.kit.time import utcnow
from corral.models import ApiToken, User
from corral.rbac.permissions import P
from corral.rbac.principal import Principal
from corral.tokens import repository
from corral.tokens.schemas import ApiTokenCreate


class TokenService:
    async def create(
        self, session: AsyncSession, owner: User, data: ApiTokenCreate, *, owner_permissions: frozenset[P]
    ) -> tuple[ApiToken, str]:
        if data.permissions is not None:
            beyond = sorted(set(data.permissions) - {p.value for p in owner_permissions})
            if beyond:
                raise ValidationFailed(
                    f"The token cannot hold permissions its owner lacks: {', '.join(beyond)}"
                )
        token = new_token(API_TOKEN_PREFIX)
        now = utcnow()
        api_token = ApiToken(
            id=uuid.uuid4(),
            user_id=owner.id,
            name=data.name,
            token_hash=token_digest(token),
            prefix=token[: len(API_TOKEN_PREFIX) + 7],
            permissions=sorted(data.permissions) if data.permissions is not None else None,
            created_at=now,
            expires_at=now + timedelta(days=data.expires_in_days),
        )
        session.add(api_token)
        await session.flush()
        await audit_service.record(
            session,
            activity="api_token.create",
            category="api_token",
            operation="create",
            target_type="api_token",
            target_id=api_token.id,
            target_name=f"{owner.user_principal_name}: {api_token.name}",
            changes=[
                ("name", None, api_token.name),
                ("permissions", None, api_token.permissions or "all"),
                ("expires_at", None, api_token.expires_at.isoformat()),
            ],
        )
        return api_token, token

    async def list_own(self, session: AsyncSession, user_id: uuid.UUID) -> list[ApiToken]:
        return await repository.list_for_user(session, user_id)

    async def list_all(self, session: AsyncSession) -> list[tuple[ApiToken, str]]:
        return await repository.list_all(session)

    async def revoke(
        self, session: AsyncSession, principal: Principal, token_id: uuid.UUID, *, may_manage_others: bool
    ) -> ApiToken:
        api_token = await repository.get(session, token_id)
        if api_token is None or (api_token.user_id != principal.user_id and not may_manage_others):
            raise NotFound("No such API token.")
        if api_token.revoked_at is not None:
            raise Conflict("This token is already revoked.")
        api_token.revoked_at = utcnow()
        await session.flush()
        await audit_service.record(
            session,
            activity="api_token.revoke",
            category="api_token",
            operation="update",
            target_type="api_token",
            target_id=api_token.id,
            target_name=api_token.name,
            changes=[("revoked_at", None, api_token.revoked_at.isoformat())],
        )
        return api_token


token_service = TokenService()
