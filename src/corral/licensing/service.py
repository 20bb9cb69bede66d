"""Licences and who holds them. Seats are a hard limit: a licence cannot be given beyond them, nor shrunk
below what is given. Only holders of licences:read see any of it (Global administrators by default)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service, diff
from corral.errors import Conflict, NotFound
from corral.kit.time import utcnow
from corral.licensing import repository
from corral.licensing.schemas import (
    LicenceCreate,
    LicenceHolderOut,
    LicenceOut,
    LicenceUpdate,
    UserLicenceOut,
)
from corral.models import Licence, User, UserLicence
from corral.rbac.permissions import P
from corral.rbac.principal import SYSTEM_USER_ID, Principal


def licence_out(licence: Licence, assigned: int) -> LicenceOut:
    return LicenceOut(
        id=licence.id,
        name=licence.name,
        sku=licence.sku,
        description=licence.description,
        seats=licence.seats,
        assigned=assigned,
        available=max(0, licence.seats - assigned),
        created_at=licence.created_at,
        updated_at=licence.updated_at,
    )


def _label(licence: Licence) -> str:
    return f"{licence.name} ({licence.sku})"


class LicenceService:
    # ---------------------------------------------------------------- licences
    async def list_all(self, session: AsyncSession) -> list[LicenceOut]:
        return [licence_out(lic, n) for lic, n in await repository.list_with_counts(session)]

    async def get(self, session: AsyncSession, licence_id: uuid.UUID, *, for_update: bool = False) -> Licence:
        licence = await repository.get(session, licence_id, for_update=for_update)
        if licence is None:
            raise NotFound("No such licence.")
        return licence

    async def get_out(self, session: AsyncSession, licence_id: uuid.UUID) -> LicenceOut:
        licence = await self.get(session, licence_id)
        return licence_out(licence, await repository.assigned_count(session, licence.id))

    async def _check_unique(
        self, session: AsyncSession, name: str | None, sku: str | None, own_id: uuid.UUID | None = None
    ) -> None:
        if name is not None:
            other = await repository.by_name(session, name)
            if other is not None and other.id != own_id:
                raise Conflict(f"A licence named {name!r} already exists.")
        if sku is not None:
            other = await repository.by_sku(session, sku)
            if other is not None and other.id != own_id:
                raise Conflict(f"A licence with the SKU {sku!r} already exists.")

    async def create(self, session: AsyncSession, data: LicenceCreate) -> LicenceOut:
        await self._check_unique(session, data.name, data.sku)
        licence = Licence(
            id=uuid.uuid4(), name=data.name, sku=data.sku, description=data.description, seats=data.seats
        )
        session.add(licence)
        await session.flush()
        await session.refresh(licence)
        await audit_service.record(
            session,
            activity="licence.create",
            category="licence",
            operation="create",
            target_type="licence",
            target_id=licence.id,
            target_name=licence.name,
            changes=[
                ("name", None, licence.name),
                ("sku", None, licence.sku),
                ("seats", None, licence.seats),
            ],
        )
        return licence_out(licence, 0)

    async def update(self, session: AsyncSession, licence_id: uuid.UUID, data: LicenceUpdate) -> LicenceOut:
        # Locked: an assignment running at the same time cannot slip under a reduced seat count.
        licence = await self.get(session, licence_id, for_update=True)
        assigned = await repository.assigned_count(session, licence.id)
        fields = ("name", "sku", "description", "seats")
        before = {f: getattr(licence, f) for f in fields}
        await self._check_unique(session, data.name, data.sku, licence.id)
        if data.seats is not None and data.seats < assigned:
            raise Conflict(
                f"{assigned} user(s) hold {licence.name}: seats cannot go below that. "
                "Take the licence from some users first."
            )
        for field, value in data.model_dump(exclude_none=True).items():
            setattr(licence, field, value)
        changes = diff(before, {f: getattr(licence, f) for f in fields})
        if changes:
            await session.flush()
            await session.refresh(licence)
            await audit_service.record(
                session,
                activity="licence.update",
                category="licence",
                operation="update",
                target_type="licence",
                target_id=licence.id,
                target_name=licence.name,
                changes=changes,
            )
        return licence_out(licence, assigned)

    async def delete(self, session: AsyncSession, licence_id: uuid.UUID) -> None:
        licence = await self.get(session, licence_id, for_update=True)
        assigned = await repository.assigned_count(session, licence.id)
        if assigned:
            raise Conflict(
                f"{assigned} user(s) hold {licence.name}; take it from them first (without a licence, "
                "their devices can no longer enroll)."
            )
        await session.delete(licence)
        await session.flush()
        await audit_service.record(
            session,
            activity="licence.delete",
            category="licence",
            operation="delete",
            target_type="licence",
            target_id=licence.id,
            target_name=licence.name,
            changes=[("sku", licence.sku, None), ("seats", licence.seats, None)],
        )

    async def holders(
        self, session: AsyncSession, principal: Principal, licence_id: uuid.UUID
    ) -> list[LicenceHolderOut]:
        """The licence's holders within the caller's users:read scope (its seat counts stay whole: they
        are the licence's)."""
        await self.get(session, licence_id)
        return [
            LicenceHolderOut(
                user_id=user.id,
                user_principal_name=user.user_principal_name,
                display_name=user.display_name,
                enabled=user.enabled,
                assigned_at=held.assigned_at,
            )
            for held, user in await repository.holders(session, licence_id, principal.scope_for(P.users_read))
        ]

    # ---------------------------------------------------------------- assignments
    async def of_user(self, session: AsyncSession, user_id: uuid.UUID) -> list[UserLicenceOut]:
        return [
            UserLicenceOut(licence_id=lic.id, name=lic.name, sku=lic.sku, assigned_at=held.assigned_at)
            for held, lic in await repository.of_user(session, user_id)
        ]

    async def holds_any(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        return await repository.holds_any(session, user_id)

    async def skus_by_user(
        self, session: AsyncSession, user_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[str]]:
        return await repository.names_by_user(session, user_ids)

    async def assign(
        self, session: AsyncSession, principal: Principal, user: User, licence_id: uuid.UUID
    ) -> tuple[UserLicenceOut, bool]:
        """Give ``user`` a seat; returns it and whether it is new (holding it already changes nothing)."""
        licence = await self.get(session, licence_id, for_update=True)
        held = await repository.assignment(session, user.id, licence.id)
        if held is not None:
            return UserLicenceOut(
                licence_id=licence.id, name=licence.name, sku=licence.sku, assigned_at=held.assigned_at
            ), False
        assigned = await repository.assigned_count(session, licence.id)
        if assigned >= licence.seats:
            raise Conflict(
                f"All {licence.seats} seat(s) of {licence.name} are taken: add seats or take it from "
                "someone first."
            )
        held = UserLicence(
            user_id=user.id,
            licence_id=licence.id,
            assigned_at=utcnow(),
            assigned_by_id=None if principal.user_id == SYSTEM_USER_ID else principal.user_id,
        )
        session.add(held)
        await session.flush()
        await audit_service.record(
            session,
            activity="licence.assign",
            category="licence",
            operation="create",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[("licence", None, _label(licence))],
        )
        return UserLicenceOut(
            licence_id=licence.id, name=licence.name, sku=licence.sku, assigned_at=held.assigned_at
        ), True

    async def unassign(self, session: AsyncSession, user: User, licence_id: uuid.UUID) -> None:
        licence = await self.get(session, licence_id)
        held = await repository.assignment(session, user.id, licence.id)
        if held is None:
            raise NotFound(f"{user.user_principal_name} does not hold {licence.name}.")
        await session.delete(held)
        await session.flush()
        await audit_service.record(
            session,
            activity="licence.unassign",
            category="licence",
            operation="delete",
            target_type="user",
            target_id=user.id,
            target_name=user.user_principal_name,
            changes=[("licence", _label(licence), None)],
        )


licence_service = LicenceService()
