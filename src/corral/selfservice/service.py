from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from corral.rbac.principal import Principal
from corral.selfservice import repository
from corral.selfservice.schemas import MyDevice


class SelfServiceService:
    async def my_devices(self, session: AsyncSession, principal: Principal) -> list[MyDevice]:
        """The caller's own devices (primary user), whatever their permissions: nobody else's, ever."""
        return [MyDevice.model_validate(d) for d in await repository.devices_of(session, principal.user_id)]


selfservice_service = SelfServiceService()
