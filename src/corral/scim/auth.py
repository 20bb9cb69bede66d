"""The SCIM route guard: ``Authorization: Bearer <token>`` naming one identity connection, enabled, with SCIM
provisioning on. The connection is the actor of every audit event the request records."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import select

from corral.errors import NotAuthenticated
from corral.kit import context
from corral.kit.db import SessionDep
from corral.kit.routing import HeaderGuard
from corral.kit.security import token_digest
from corral.kit.time import utcnow
from corral.models import IdentityConnection

TOKEN_PREFIX = "cscim_"  # noqa: S105 - a prefix, not a secret
ACTOR_TYPE = "scim"


def actor_name(connection: IdentityConnection) -> str:
    return f"SCIM: {connection.name}"


class ScimBearer(HeaderGuard):
    """The guard of every ``/scim/v2`` route (tests/test_route_guards.py accepts it as a guard)."""

    def __repr__(self) -> str:
        return "ScimBearer()"

    async def __call__(self, request: Request, session: SessionDep) -> IdentityConnection:
        cached: IdentityConnection | None = getattr(request.state, "scim_connection", None)
        if cached is not None:  # run before the body was read (kit/routing.py), and now again
            return cached
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise NotAuthenticated(
                "Use 'Authorization: Bearer <SCIM token>' (the connection's secret token)."
            )
        connection = await session.scalar(
            select(IdentityConnection).where(IdentityConnection.scim_token_hash == token_digest(token))
        )
        if connection is None or not connection.enabled or not connection.scim_enabled:
            raise NotAuthenticated("The SCIM token is invalid, rotated, or its connection is disabled.")
        context.set_actor(context.Actor(type=ACTOR_TYPE, id=connection.id, name=actor_name(connection)))
        connection.scim_last_request_at = utcnow()
        request.state.scim_connection = connection
        return connection


ScimToken = Annotated[IdentityConnection, Depends(ScimBearer())]
