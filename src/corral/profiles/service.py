"""Configuration profiles from the settings catalog: their lifecycle (validated against the catalog,
versioned, secrets encrypted at rest and never shown again), for the API and the admin center."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.assignments import engine
from corral.audit.service import audit_service
from corral.config import Settings
from corral.errors import Conflict, Forbidden, NotFound, ValidationFailed
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import AssignableKind, ConfigurationProfile, ConfigurationProfileVersion, Platform
from corral.profiles import catalog
from corral.profiles.catalog import SECRET_MARK
from corral.rbac import repository as rbac_repository
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Principal, Scope

MAX_SETTINGS = 100


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ProfileCreate(_Strict):
    name: str = Field(min_length=1, max_length=256)
    description: str = Field(default="", max_length=2000)
    platform: Platform
    settings: dict[str, Any] = Field(description="Setting id → value (see GET /api/v1/settings-catalog)")
    scope_tag_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)


class ProfileUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = Field(default=None, max_length=2000)
    settings: dict[str, Any] | None = Field(
        default=None, description='Secret fields sent back as {"$secret": true} keep their stored value'
    )
    scope_tag_ids: list[uuid.UUID] | None = Field(default=None, max_length=50)


class ProfileOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    platform: Platform
    version: int
    settings: dict[str, Any] = Field(description='Secret fields show as {"$secret": true}')
    scope_tags: list[str]
    created_at: datetime
    updated_at: datetime


class ProfileVersionOut(BaseModel):
    version: int
    settings: dict[str, Any]
    created_at: datetime
    created_by: str


def _box(settings: Settings) -> SecretBox:
    return SecretBox(settings.resolved_secret_key(), "profile-secrets")


def redact(values: dict[str, Any]) -> dict[str, Any]:
    """Stored settings with every secret replaced by the placeholder (for the API, the portal, the audit)."""
    out = copy.deepcopy(values)
    for setting_id, value in out.items():
        setting = catalog.load().by_id.get(setting_id)
        if setting is None or not setting.secret_fields or not isinstance(value, list):
            continue
        for entry in value:
            for name in setting.secret_fields:
                if isinstance(entry, dict) and entry.get(name) is not None:
                    entry[name] = {SECRET_MARK: True}
    return out


def reveal(values: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Stored settings with their secrets decrypted: only for the device's desired-state document."""
    out = copy.deepcopy(values)
    box = _box(settings)
    for setting_id, value in out.items():
        setting = catalog.load().by_id.get(setting_id)
        if setting is None or not setting.secret_fields or not isinstance(value, list):
            continue
        for entry in value:
            for name in setting.secret_fields:
                stored = entry.get(name) if isinstance(entry, dict) else None
                if isinstance(stored, dict) and isinstance(stored.get(SECRET_MARK), str):
                    entry[name] = box.decrypt(stored[SECRET_MARK]).decode()
    return out


def profile_out(profile: ConfigurationProfile) -> ProfileOut:
    return ProfileOut(
        id=profile.id,
        name=profile.name,
        description=profile.description,
        platform=profile.platform,
        version=profile.version,
        settings=redact(profile.settings or {}),
        scope_tags=sorted(t.name for t in profile.scope_tags),
        created_at=profile.created_at,
        updated_at=profile.updated_at,
    )


def _seal(
    setting_id: str, setting: catalog.Setting, value: list[Any], before: list[Any], box: SecretBox
) -> None:
    """Encrypt the secret fields of a list setting's entries in place; a placeholder keeps the stored one."""
    for index, entry in enumerate(value):
        for name in setting.secret_fields:
            given = entry.get(name)
            if given == {SECRET_MARK: True}:
                old = before[index] if index < len(before) and isinstance(before[index], dict) else {}
                kept = old.get(name)
                if not isinstance(kept, dict):
                    where = f"settings.{setting_id}.{index}.{name}"
                    raise ValidationFailed(f"{where}: there is no stored secret to keep here.")
                entry[name] = kept
            elif isinstance(given, str):
                entry[name] = {SECRET_MARK: box.encrypt(given.encode())}


class ProfileService:
    def catalog(
        self, platform: Platform | None, search: str | None, category: str | None
    ) -> list[catalog.Setting]:
        items = catalog.load().settings
        if platform is not None:
            items = [s for s in items if platform in s.platforms]
        if search:
            needle = search.lower()
            items = [
                s
                for s in items
                if needle in s.name.lower() or needle in s.description.lower() or needle in s.id
            ]
        if category:
            items = [s for s in items if s.category.lower() == category.lower()]
        return items

    def validate(
        self,
        platform: Platform,
        values: dict[str, Any],
        settings: Settings,
        stored: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The values checked against the catalog (a 422 naming the setting), secrets encrypted, kept secrets
        taken from ``stored``."""
        if not values:
            raise ValidationFailed("settings: a profile sets at least one setting.")
        if len(values) > MAX_SETTINGS:
            raise ValidationFailed(f"settings: at most {MAX_SETTINGS} settings per profile.")
        box = _box(settings)
        out: dict[str, Any] = {}
        for setting_id, value in values.items():
            setting = catalog.load().by_id.get(setting_id)
            if setting is None:
                raise ValidationFailed(f"settings.{setting_id}: no such setting in the catalog.")
            if platform not in setting.platforms:
                raise ValidationFailed(
                    f"settings.{setting_id}: {setting.name!r} is not available for {platform.value} devices."
                )
            problem = setting.problem(value, secrets_kept=stored is not None)
            if problem:
                raise ValidationFailed(f"settings.{setting_id}: {problem}.")
            value = setting.normalized(copy.deepcopy(value))
            if setting.secret_fields:
                _seal(setting_id, setting, value, (stored or {}).get(setting_id) or [], box)
            out[setting_id] = value
        if len(json.dumps(out)) > 256 * 1024:
            raise ValidationFailed("settings: the profile is larger than 256 KiB.")
        return dict(sorted(out.items()))

    def _visible(
        self, principal: Principal, profile: ConfigurationProfile, permission: P = P.profiles_read
    ) -> bool:
        return principal.scope_for(permission).covers(t.id for t in profile.scope_tags)

    async def get(
        self,
        session: AsyncSession,
        principal: Principal,
        profile_id: uuid.UUID,
        permission: P = P.profiles_read,
        *,
        for_update: bool = False,
    ) -> ConfigurationProfile:
        stmt = (
            select(ConfigurationProfile)
            .where(ConfigurationProfile.id == profile_id)
            .options(selectinload(ConfigurationProfile.scope_tags))
        )
        if for_update:
            stmt = stmt.with_for_update(of=ConfigurationProfile.__table__)
        profile = await session.scalar(stmt)
        if profile is None or not self._visible(principal, profile):
            raise NotFound("No such configuration profile.")
        if permission is not P.profiles_read and not self._visible(principal, profile, permission):
            raise Forbidden(f"This needs the permission {permission.value} over this configuration profile.")
        return profile

    async def page(
        self, session: AsyncSession, principal: Principal, *, search: str | None, platform: Platform | None
    ) -> list[ConfigurationProfile]:
        stmt = select(ConfigurationProfile).options(selectinload(ConfigurationProfile.scope_tags))
        if search:
            stmt = stmt.where(ConfigurationProfile.name.icontains(search.strip(), autoescape=True))
        if platform:
            stmt = stmt.where(ConfigurationProfile.platform == platform)
        stmt = stmt.order_by(func.lower(ConfigurationProfile.name), ConfigurationProfile.id)
        return [p for p in (await session.scalars(stmt)).all() if self._visible(principal, p)]

    async def _tags(self, session: AsyncSession, principal: Principal, ids: Sequence[uuid.UUID]) -> list[Any]:
        tags = await rbac_repository.tags_by_ids(session, ids)
        if len(tags) != len(set(ids)):
            raise ValidationFailed("scope_tag_ids: one or more scope tags do not exist.")
        new_scope = Scope(tag_ids=frozenset(t.id for t in tags)) if tags else EVERYWHERE
        if not principal.scope_for(P.profiles_write).ignoring_groups().contains(new_scope):
            raise Forbidden("You can only tag a configuration profile into scopes you administer.")
        return tags

    async def _name_taken(self, session: AsyncSession, name: str, but: uuid.UUID | None = None) -> bool:
        stmt = select(ConfigurationProfile.id).where(func.lower(ConfigurationProfile.name) == name.lower())
        if but is not None:
            stmt = stmt.where(ConfigurationProfile.id != but)
        return (await session.scalar(stmt)) is not None

    async def create(
        self, session: AsyncSession, principal: Principal, data: ProfileCreate, settings: Settings
    ) -> ConfigurationProfile:
        values = self.validate(data.platform, data.settings, settings)
        if await self._name_taken(session, data.name):
            raise Conflict(f"A configuration profile named {data.name!r} already exists.")
        tags = await self._tags(session, principal, data.scope_tag_ids)
        profile = ConfigurationProfile(
            id=uuid.uuid4(),
            kind=AssignableKind.configuration_profile,
            name=data.name,
            description=data.description,
            platform=data.platform,
            settings=values,
            scope_tags=tags,
            created_by_id=principal.user_id,
        )
        session.add(profile)
        await session.flush()
        session.add(
            ConfigurationProfileVersion(
                profile_id=profile.id, version=1, settings=values, created_by=principal.display_name or ""
            )
        )
        await audit_service.record(
            session,
            activity="configuration_profile.create",
            category="policy",
            operation="create",
            target_type="configuration_profile",
            target_id=profile.id,
            target_name=profile.name,
            changes=[
                ("name", None, profile.name),
                ("platform", None, profile.platform),
                ("settings", None, redact(values)),
                ("scope_tags", None, sorted(t.name for t in tags) or None),
            ],
        )
        return await self.get(session, principal, profile.id)

    async def update(
        self,
        session: AsyncSession,
        principal: Principal,
        profile_id: uuid.UUID,
        data: ProfileUpdate,
        settings: Settings,
    ) -> ConfigurationProfile:
        profile = await self.get(session, principal, profile_id, P.profiles_write, for_update=True)
        changes: list[tuple[str, Any, Any]] = []
        if data.name is not None and data.name != profile.name:
            if await self._name_taken(session, data.name, profile.id):
                raise Conflict(f"A configuration profile named {data.name!r} already exists.")
            changes.append(("name", profile.name, data.name))
            profile.name = data.name
        if data.description is not None and data.description != profile.description:
            changes.append(("description", profile.description, data.description))
            profile.description = data.description
        new_version = False
        if data.settings is not None:
            values = self.validate(
                Platform(profile.platform), data.settings, settings, stored=profile.settings
            )
            if values != profile.settings:
                changes.append(("settings", redact(profile.settings or {}), redact(values)))
                profile.settings, new_version = values, True
        if data.scope_tag_ids is not None:
            tags = await self._tags(session, principal, data.scope_tag_ids)
            before = sorted(t.name for t in profile.scope_tags)
            profile.scope_tags = tags
            if before != sorted(t.name for t in tags):
                changes.append(("scope_tags", before, sorted(t.name for t in tags)))
        if not changes:
            return profile
        if new_version:
            profile.version += 1
            session.add(
                ConfigurationProfileVersion(
                    profile_id=profile.id,
                    version=profile.version,
                    settings=profile.settings,
                    created_by=principal.display_name or "",
                )
            )
        profile.updated_at = utcnow()
        await session.flush()
        await audit_service.record(
            session,
            activity="configuration_profile.update",
            category="policy",
            operation="update",
            target_type="configuration_profile",
            target_id=profile.id,
            target_name=profile.name,
            changes=changes,
        )
        if new_version:
            await engine.bump_versions(session, [profile.id])  # its devices' desired state changed
        return await self.get(session, principal, profile.id)

    async def delete(self, session: AsyncSession, principal: Principal, profile_id: uuid.UUID) -> None:
        profile = await self.get(session, principal, profile_id, P.profiles_write, for_update=True)
        await engine.release_objects(session, [profile.id])
        await audit_service.record(
            session,
            activity="configuration_profile.delete",
            category="policy",
            operation="delete",
            target_type="configuration_profile",
            target_id=profile.id,
            target_name=profile.name,
            changes=[("name", profile.name, None), ("settings", redact(profile.settings or {}), None)],
        )
        await session.delete(profile)
        await session.flush()

    async def versions(
        self, session: AsyncSession, principal: Principal, profile_id: uuid.UUID
    ) -> list[ProfileVersionOut]:
        profile = await self.get(session, principal, profile_id)
        rows = (
            await session.scalars(
                select(ConfigurationProfileVersion)
                .where(ConfigurationProfileVersion.profile_id == profile.id)
                .order_by(ConfigurationProfileVersion.version.desc())
            )
        ).all()
        return [
            ProfileVersionOut(
                version=r.version,
                settings=redact(r.settings),
                created_at=r.created_at,
                created_by=r.created_by,
            )
            for r in rows
        ]


profile_service = ProfileService()
