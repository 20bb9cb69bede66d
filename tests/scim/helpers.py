"""Arrangements for the SCIM tests: an identity connection (made with the ORM: its pages live elsewhere) and
its SCIM token, issued by the same service the API uses."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit import context
from corral.models import IdentityConnection
from corral.scim.service import scim_service

SCIM_JSON = "application/scim+json"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@dataclass
class Connection:
    id: uuid.UUID
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": SCIM_JSON}


async def make_connection(
    sessionmaker: async_sessionmaker[AsyncSession], name: str | None = None, *, token: bool = True
) -> Connection:
    name = name or f"Entra {uuid.uuid4().hex[:6]}"
    context.set_current(context.RequestContext(correlation_id="test-arrange", actor=context.SYSTEM))
    async with sessionmaker() as session:
        connection = IdentityConnection(id=uuid.uuid4(), name=name)
        session.add(connection)
        await session.flush()
        secret = ""
        if token:
            secret = (await scim_service.issue_token(session, connection.id)).token
        await session.commit()
    return Connection(connection.id, name, secret)


def patch(*operations: dict[str, object]) -> dict[str, object]:
    return {"schemas": [PATCH_OP], "Operations": list(operations)}
