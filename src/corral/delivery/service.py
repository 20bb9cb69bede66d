"""Delivery of each device's desired state (docs/device-protocol.md §10, docs/policies.md "Delivery").

The desired-state document of a device holds the configuration profiles that reach it (their settings, with
secrets revealed for the device only), the compliance facts its policies read, and the **conflicts**: a
setting two profiles give different values is delivered from neither and listed with both. The document's
``version`` is the device's desired-state version (a sequence number the assignment engine moves whenever
what reaches the device or what it asks changes); the check-in answer carries it, so a device fetches the
document only when it moved. The device reports, per profile and setting, what applying it did; the server
keeps that next to what it intended.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.assignments import engine
from corral.assignments import repository as assignments_repository
from corral.compliance import catalog as compliance_catalog
from corral.config import Settings
from corral.devices.service import device_service
from corral.errors import TooManyRequests, ValidationFailed
from corral.kit.admission import take_place
from corral.kit.time import utcnow
from corral.models import (
    Assignable,
    CompliancePolicy,
    ConfigurationProfile,
    device_targets,
)
from corral.models.delivery import DeviceProfileDelivery, DeviceSettingState
from corral.profiles.service import redact, reveal
from corral.rbac.principal import Principal

_DELIVERIES: Any = DeviceProfileDelivery.__table__

SettingState = Literal["succeeded", "error", "not_applicable", "conflict"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SettingReport(_Strict):
    id: str = Field(max_length=64)
    state: SettingState
    message: str | None = Field(default=None, max_length=512)


class ProfileReport(_Strict):
    id: uuid.UUID
    version: int = Field(ge=1)
    settings: list[SettingReport] = Field(max_length=200)


class DesiredStateReport(_Strict):
    version: int = Field(ge=0, description="The desired-state version the device applied")
    profiles: list[ProfileReport] = Field(max_length=200)


class NotDelivered(ValidationFailed):
    """A report for a profile (or version) the device was never sent."""


_ASSIGNABLES: Any = Assignable.__table__
#: What reaches the device: each object's id and what its content depends on (its version moves with what it
#: asks, ``updated_at`` with its name). One index scan of the device's targets and one primary-key probe each.
_REACHING = (
    select(_ASSIGNABLES.c.id, _ASSIGNABLES.c.version, _ASSIGNABLES.c.updated_at)
    .join(device_targets, device_targets.c.assignable_id == _ASSIGNABLES.c.id)
    .where(device_targets.c.device_id == bindparam("device_id"))
    .order_by(_ASSIGNABLES.c.id)
)

ContentKey = tuple[tuple[uuid.UUID, int, datetime], ...]


@dataclass(frozen=True)
class Content:
    """Everything in a desired-state document but its version: the same for every device the same objects
    (at the same versions) reach. Holds revealed secrets: never logged, never shown to an admin."""

    body: dict[str, Any]  # profiles, conflicts, compliance
    hash: str
    #: The body serialised (``"profiles": …, …, "hash": …``), to follow the document's version.
    tail: bytes
    #: (profile id, version) of each profile delivered.
    delivered: tuple[tuple[uuid.UUID, int], ...]


class ContentCache:
    """The documents' content per set of objects, most recently used first, bounded (per process). A fleet
    woken by one change asks for the same content 100,000 times: built once, not 100,000 times."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._entries: OrderedDict[ContentKey, Content] = OrderedDict()

    def get(self, key: ContentKey) -> Content | None:
        content = self._entries.get(key)
        if content is not None:
            self._entries.move_to_end(key)
        return content

    def put(self, key: ContentKey, content: Content) -> None:
        self._entries[key] = content
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


def _content(
    profiles: Sequence[ConfigurationProfile], policies: Sequence[CompliancePolicy], settings: Settings
) -> Content:
    # Compared as the device would apply them: two equal secrets are stored as different ciphertexts.
    revealed_by_id = {profile.id: reveal(profile.settings or {}, settings) for profile in profiles}
    values: dict[str, dict[uuid.UUID, Any]] = {}
    for profile in profiles:
        for setting_id, value in revealed_by_id[profile.id].items():
            if setting_id.startswith("custom."):
                continue  # each profile's own payload, not one setting several profiles could set
            values.setdefault(setting_id, {})[profile.id] = value
    conflicting = {
        sid: sorted(str(p) for p in by_profile)
        for sid, by_profile in values.items()
        if len({json.dumps(v, sort_keys=True) for v in by_profile.values()}) > 1
    }
    document_profiles = []
    for profile in profiles:
        revealed = revealed_by_id[profile.id]
        document_profiles.append(
            {
                "id": str(profile.id),
                "name": profile.name,
                "version": profile.version,
                "settings": [
                    {"id": sid, "value": value}
                    for sid, value in sorted(revealed.items())
                    if sid not in conflicting
                ],
            }
        )
    facts = sorted(
        {
            compliance_catalog.BY_ID[sid].reads
            for policy in policies
            for sid in (policy.settings or {})
            if sid in compliance_catalog.BY_ID
        }
    )
    body: dict[str, Any] = {
        "profiles": document_profiles,
        "conflicts": [{"setting_id": sid, "profiles": ids} for sid, ids in sorted(conflicting.items())],
        "compliance": {
            "policies": [{"id": str(p.id), "name": p.name, "version": p.version} for p in policies],
            "report": facts,
        },
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    tail = json.dumps({**body, "hash": digest}, separators=(",", ":")).encode()
    return Content(body, digest, tail[1:], tuple((p.id, p.version) for p in profiles))


_Object = TypeVar("_Object", ConfigurationProfile, CompliancePolicy)


async def _objects(session: AsyncSession, model: type[_Object], ids: list[uuid.UUID]) -> Sequence[_Object]:
    """The objects of one kind among ``ids``, by name (the document's order)."""
    stmt = select(model).where(model.id.in_(ids)).order_by(model.name, model.id)
    return (await session.scalars(stmt)).all()


async def document_content(
    session: AsyncSession, settings: Settings, device_id: uuid.UUID, cache: ContentCache | None = None
) -> Content:
    """The content of the device's document: from ``cache`` when the same objects at the same versions were
    built before, else built from the objects (and kept when they were read as the key says)."""
    key: ContentKey = tuple(
        (row.id, row.version, row.updated_at)
        for row in await session.execute(_REACHING, {"device_id": device_id})
    )
    content = cache.get(key) if cache is not None else None
    if content is not None:
        return content
    ids = [object_id for object_id, _version, _updated in key]
    profiles = await _objects(session, ConfigurationProfile, ids)
    policies = await _objects(session, CompliancePolicy, ids)
    content = _content(profiles, policies, settings)
    read: ContentKey = tuple(sorted((o.id, o.version, o.updated_at) for o in (*profiles, *policies)))
    if cache is not None and read == key:  # an object changed in between: built, not kept
        cache.put(key, content)
    return content


async def build_document(session: AsyncSession, settings: Settings, device_id: uuid.UUID) -> dict[str, Any]:
    """The device's desired-state document (secrets revealed: for the device only)."""
    # The version is read before what it covers: a change landing in between moves it again.
    version = await assignments_repository.desired_state_version(session, device_id)
    content = await document_content(session, settings, device_id)
    return {"version": version, **content.body, "hash": content.hash}


class DeliveryService:
    def __init__(self) -> None:
        self._builds: asyncio.Semaphore | None = None
        self._limit = 0
        self.contents = ContentCache()

    def _semaphore(self, settings: Settings) -> asyncio.Semaphore:
        if self._builds is None or self._limit != settings.desired_state_concurrency:
            self._builds, self._limit = (
                asyncio.Semaphore(settings.desired_state_concurrency),
                settings.desired_state_concurrency,
            )
        return self._builds

    async def fetch(
        self, session: AsyncSession, settings: Settings, device_id: uuid.UUID, version: int
    ) -> bytes:
        """The document for the device (serialised JSON), recording what it delivered. ``version`` is the
        device's desired-state version, read before the document's content (the authentication read it).
        Busy (429) when this process already builds as many documents as it may and none finishes within
        the admission wait: the device comes back after Retry-After."""
        semaphore = self._semaphore(settings)
        if not await take_place(semaphore, settings.device_admission_wait_seconds):
            raise TooManyRequests(
                "The server is busy building desired states: retry later.",
                headers={"Retry-After": str(settings.desired_state_retry_after_seconds)},
            )
        try:
            content = await document_content(session, settings, device_id, self.contents)
            if content.delivered:
                now = utcnow()
                stmt = pg_insert(_DELIVERIES).values(
                    [
                        {"device_id": device_id, "profile_id": profile_id, "version": v, "delivered_at": now}
                        for profile_id, v in content.delivered
                    ]
                )
                await session.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[_DELIVERIES.c.device_id, _DELIVERIES.c.profile_id],
                        set_={"version": stmt.excluded.version, "delivered_at": stmt.excluded.delivered_at},
                    )
                )
            return b'{"version":%d,' % version + content.tail
        finally:
            semaphore.release()

    async def report(self, session: AsyncSession, device_id: uuid.UUID, data: DesiredStateReport) -> int:
        """Store what the device says applying did. A profile (or version) never delivered to it is refused
        (the caller audits it); returns the settings stored."""
        delivered = {
            row.profile_id: row.version
            for row in (
                await session.scalars(
                    select(DeviceProfileDelivery).where(DeviceProfileDelivery.device_id == device_id)
                )
            ).all()
        }
        for index, profile in enumerate(data.profiles):
            if delivered.get(profile.id) != profile.version:
                raise NotDelivered(
                    f"profiles.{index}: profile {profile.id} version {profile.version} was never "
                    "delivered to this device."
                )
        now = utcnow()
        stored = 0
        for profile in data.profiles:
            await session.execute(
                delete(DeviceSettingState).where(
                    DeviceSettingState.device_id == device_id, DeviceSettingState.profile_id == profile.id
                )
            )
            rows = [
                {
                    "device_id": device_id,
                    "profile_id": profile.id,
                    "setting_id": s.id,
                    "profile_version": profile.version,
                    "state": s.state,
                    "message": s.message or "",
                    "reported_at": now,
                }
                for s in {s.id: s for s in profile.settings}.values()
            ]
            if rows:
                await session.execute(pg_insert(DeviceSettingState), rows)
                stored += len(rows)
        return stored

    async def device_configuration(
        self, session: AsyncSession, settings: Settings, principal: Principal, device_id: uuid.UUID
    ) -> dict[str, Any]:
        """Applied versus intended, per profile and setting, with conflicts named (API and admin center)."""
        from corral.assignments.service import assignment_service

        device = await device_service.get(session, principal, device_id)
        document = await build_document(session, settings, device.id)
        reports = (
            await session.scalars(select(DeviceSettingState).where(DeviceSettingState.device_id == device.id))
        ).all()
        by_profile: dict[uuid.UUID, dict[str, DeviceSettingState]] = {}
        for r in reports:
            by_profile.setdefault(r.profile_id, {})[r.setting_id] = r
        profiles = {
            p.id: p
            for p in (
                await session.scalars(
                    select(ConfigurationProfile)
                    .where(ConfigurationProfile.id.in_([uuid.UUID(p["id"]) for p in document["profiles"]]))
                    .options(selectinload(ConfigurationProfile.scope_tags))
                )
            ).all()
        }
        conflicts = {c["setting_id"]: c["profiles"] for c in document["conflicts"]}
        names = {p["id"]: p["name"] for p in document["profiles"]}
        out = []
        for entry in document["profiles"]:
            profile = profiles[uuid.UUID(entry["id"])]
            if not assignment_service.visible(principal, profile):
                continue
            reported = by_profile.get(profile.id, {})
            applied = max((r.profile_version for r in reported.values()), default=None)
            rows = []
            for setting_id, value in sorted(redact(profile.settings or {}).items()):
                report = reported.get(setting_id)
                if setting_id in conflicts:
                    state, message = (
                        "conflict",
                        "Also set differently by "
                        + ", ".join(names.get(p, p) for p in conflicts[setting_id] if p != entry["id"]),
                    )
                elif report is None or report.profile_version != profile.version:
                    state, message = "pending", "not reported at this version yet"
                else:
                    state, message = report.state, report.message
                rows.append({"setting_id": setting_id, "intended": value, "state": state, "message": message})
            out.append(
                {
                    "profile_id": str(profile.id),
                    "profile_name": profile.name,
                    "intended_version": profile.version,
                    "applied_version": applied,
                    "settings": rows,
                }
            )
        return {
            "device_id": str(device.id),
            "desired_state_version": document["version"],
            "profiles": out,
            "conflicts": [
                {"setting_id": sid, "profiles": sorted(names.get(p, p) for p in ids)}
                for sid, ids in sorted(conflicts.items())
            ],
        }


delivery_service = DeliveryService()


#: More devices than this whose desired state moved at once are not woken: they fetch it at their next
#: check-in (a wake-up storm would only meet the 429 of the document builder).
MAX_WAKE = 20_000


async def wake_changed(session: AsyncSession, device_ids: set[uuid.UUID]) -> None:
    """The assignment engine's version listener: wake the devices whose desired state moved, through the
    push hub of whichever replica holds their stream, when the transaction commits. PostgreSQL delivers one
    notification per device and transaction, however many changes the transaction made (coalesced)."""
    from corral.push.service import push_service

    if 0 < len(device_ids) <= MAX_WAKE:
        await push_service.wake_many(session, sorted(device_ids), "desired_state")


engine.VERSION_LISTENERS.append(wake_changed)
