"""Policy as code: export the tenant's filters, compliance policies and configuration profiles with their
assignments as one document, and apply a document — the difference between it and the tenant, made in one
transaction through the same services (validation, scope, audit) as the API, or only shown (dry run).

Objects are matched by name within their kind, so renaming one in the document deletes the old and creates
the new. Only what the caller may read takes part: an object outside their scope is neither exported nor
deleted (creating one with its name fails as it would through the API).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from corral.assignments.schemas import AssignmentIn, FilterCreate, FilterUpdate
from corral.assignments.service import assignment_service, parse_filter_rule
from corral.audit.service import audit_service
from corral.compliance.schemas import ActionIn, PolicyCreate, PolicyUpdate
from corral.compliance.service import DEFAULT_ACTIONS, compliance_service
from corral.config import Settings
from corral.errors import CorralError, Forbidden, ValidationFailed
from corral.groups.rules import format_rule
from corral.models import (
    Assignment,
    AssignmentFilter,
    AssignmentMode,
    AssignmentTarget,
    CompliancePolicy,
    ConfigurationProfile,
    Group,
    NotificationTemplate,
    ScopeTag,
)
from corral.policy_code.document import (
    ActionDoc,
    ApplyResult,
    AssignmentDoc,
    CompliancePolicyDoc,
    FieldChange,
    FilterDoc,
    ObjectChange,
    ObjectKind,
    PolicyDocument,
    ProfileDoc,
)
from corral.profiles import catalog as profiles_catalog
from corral.profiles.catalog import SECRET_MARK
from corral.profiles.service import ProfileCreate, ProfileUpdate, profile_service, redact, reveal
from corral.rbac.permissions import P
from corral.rbac.principal import Principal

T = TypeVar("T")

#: Document section → (kind in the plan, read permission).
SECTIONS: dict[str, tuple[ObjectKind, P]] = {
    "filters": ("filter", P.filters_read),
    "compliance_policies": ("compliance_policy", P.compliance_read),
    "configuration_profiles": ("configuration_profile", P.profiles_read),
}
#: Document section → the permission its changes need (assignments also need the kind's assign permission).
WRITE: dict[str, P] = {
    "filters": P.filters_write,
    "compliance_policies": P.compliance_write,
    "configuration_profiles": P.profiles_write,
}
#: The sections of assignable objects (they carry assignments).
OBJECT_SECTIONS = ("compliance_policies", "configuration_profiles")


def _where(section: str, name: str) -> str:
    return f'{section}["{name}"]'


async def _located(where: str, call: Awaitable[T]) -> T:
    """Run a service call; its refusal names the object in the document before the field."""
    try:
        return await call
    except CorralError as exc:
        raise type(exc)(f"{where}.{exc.detail}", errors=exc.errors, headers=exc.headers) from exc


# -------------------------------------------------------------------------------------------- state
@dataclass
class Names:
    """What the document names, resolved: groups, scope tags, notification templates."""

    group_names: dict[uuid.UUID, str] = field(default_factory=dict)
    groups_by_name: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    tags_by_name: dict[str, ScopeTag] = field(default_factory=dict)
    templates_by_name: dict[str, uuid.UUID] = field(default_factory=dict)
    template_names: dict[uuid.UUID, str] = field(default_factory=dict)


@dataclass
class Current:
    """An object as it stands, in the document's comparable form."""

    id: uuid.UUID
    form: dict[str, Any]
    row: Any = None


def _assignment_key(item: dict[str, Any]) -> tuple[bool, str, str, str, str]:
    """Inclusions first (as the admin center lists them), then by target, group, filter."""
    return (
        item["mode"] != AssignmentMode.include.value,
        item["target"],
        str(item.get("group_id") or ""),
        (item.get("filter") or "").lower(),
        item.get("filter_mode") or "",
    )


def _assignment_text(item: dict[str, Any], names: Names) -> str:
    if item["target"] == AssignmentTarget.group.value:
        group_id = uuid.UUID(str(item["group_id"]))
        where = f'group "{names.group_names.get(group_id, group_id)}"'
    else:
        where = item["target"].replace("_", " ")
    text = f"{item['mode']} {where}"
    if item.get("filter"):
        text += f' with filter "{item["filter"]}" ({item["filter_mode"]})'
    return text


def _actions_form(actions: Sequence[dict[str, Any]], names: Names) -> list[dict[str, Any]]:
    out = []
    for action in actions:
        item: dict[str, Any] = {"action": action["action"], "delay_hours": action.get("delay_hours", 0)}
        if action.get("recipients"):
            item["recipients"] = list(action["recipients"])
        if action.get("template_id"):
            template_id = uuid.UUID(str(action["template_id"]))
            item["template"] = names.template_names.get(template_id, str(template_id))
        if action.get("message"):
            item["message"] = action["message"]
        out.append(item)
    return out


def _secret_fields(setting_id: str) -> list[str]:
    setting = profiles_catalog.load().by_id.get(setting_id)
    return setting.secret_fields if setting else []


def _with_kept_secrets(desired: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The desired profile settings with each "keep the stored secret" placeholder replaced by the stored
    secret at the same place (for comparing what a device would get)."""
    out = copy.deepcopy(desired)
    for setting_id, value in out.items():
        fields = _secret_fields(setting_id)
        if not fields or not isinstance(value, list):
            continue
        before = stored.get(setting_id) or []
        for index, entry in enumerate(value):
            for name in fields:
                if isinstance(entry, dict) and entry.get(name) == {SECRET_MARK: True}:
                    old = before[index] if index < len(before) and isinstance(before[index], dict) else {}
                    if name in old:
                        entry[name] = old[name]
    return out


def _normalized(values: dict[str, Any]) -> dict[str, Any]:
    """Profile settings in their stored form where the catalog gives one (a custom JSON payload written as
    text is the object it says), so an unchanged payload is not shown as a change. Invalid values stay as
    they are: the service refuses them with their reason."""
    out = {}
    for setting_id, value in values.items():
        setting = profiles_catalog.load().by_id.get(setting_id)
        try:
            out[setting_id] = setting.normalized(value) if setting is not None else value
        except ValueError:
            out[setting_id] = value
    return out


def _masked(setting_id: str, value: Any, other: Any, *, new: bool) -> Any:
    """A profile setting's value for the plan: secrets never shown, only whether the new value changes
    them."""
    fields = _secret_fields(setting_id)
    if not fields or not isinstance(value, list):
        return value
    out = copy.deepcopy(value)
    others = other if isinstance(other, list) else []
    for index, entry in enumerate(out):
        if not isinstance(entry, dict):
            continue
        counterpart = others[index] if index < len(others) and isinstance(others[index], dict) else {}
        for name in fields:
            if name in entry:
                same = counterpart.get(name) == entry[name]
                entry[name] = "<secret>" if same or not new else "<secret, changed>"
    return out


# -------------------------------------------------------------------------------------------- service
class PolicyCodeService:
    # ---------------------------------------------------------------- reading the tenant
    async def _names(self, session: AsyncSession) -> Names:
        names = Names()
        for tag in (await session.scalars(select(ScopeTag))).all():
            names.tags_by_name[tag.name.lower()] = tag
        for template_id, template_name in (
            await session.execute(select(NotificationTemplate.id, NotificationTemplate.name))
        ).all():
            names.templates_by_name[template_name.lower()] = template_id
            names.template_names[template_id] = template_name
        return names

    async def _load_groups(
        self,
        session: AsyncSession,
        names: Names,
        *,
        ids: Sequence[uuid.UUID] = (),
        lowered: Sequence[str] = (),
    ) -> None:
        """Groups by id or by (lower-cased) display name, with every group sharing those names."""
        if ids:
            rows = (
                await session.execute(select(Group.id, Group.display_name).where(Group.id.in_(ids)))
            ).all()
            lowered = [*lowered, *(name.lower() for _, name in rows)]
        if not lowered:
            return
        stmt = select(Group.id, Group.display_name).where(func.lower(Group.display_name).in_(set(lowered)))
        for group_id, display_name in (await session.execute(stmt)).all():
            names.group_names[group_id] = display_name
            bucket = names.groups_by_name.setdefault(display_name.lower(), [])
            if group_id not in bucket:
                bucket.append(group_id)

    def _readable(self, principal: Principal, section: str) -> bool:
        return principal.has(SECTIONS[section][1])

    async def _current(
        self, session: AsyncSession, principal: Principal, settings: Settings, names: Names
    ) -> dict[str, dict[str, Current]]:
        """Every object the caller may read, per section, by lower-cased name."""
        out: dict[str, dict[str, Current]] = {section: {} for section in SECTIONS}
        if self._readable(principal, "filters"):
            # Every filter (the repository's list stops at 1,000: an export must not).
            every = await session.scalars(
                select(AssignmentFilter).options(selectinload(AssignmentFilter.scope_tags))
            )
            for item in every.all():
                if assignment_service._filter_visible(principal, item):
                    out["filters"][item.name.lower()] = Current(item.id, self._filter_form(item), item)
        objects: list[CompliancePolicy | ConfigurationProfile] = []
        for model, section in (
            (CompliancePolicy, "compliance_policies"),
            (ConfigurationProfile, "configuration_profiles"),
        ):
            if self._readable(principal, section):
                found = await session.scalars(select(model).options(selectinload(model.scope_tags)))
                objects += [o for o in found.all() if assignment_service.visible(principal, o)]  # type: ignore[misc]
        assignments: dict[uuid.UUID, list[Assignment]] = {}
        if objects:
            rows = await session.scalars(
                select(Assignment)
                .where(Assignment.assignable_id.in_([o.id for o in objects]))
                .order_by(Assignment.created_at, Assignment.id)
            )
            for row in rows.all():
                assignments.setdefault(row.assignable_id, []).append(row)
        await self._load_groups(
            session,
            names,
            ids=sorted({a.group_id for rows in assignments.values() for a in rows if a.group_id}),
        )
        filter_names = await self._filter_names(session, [a for rows in assignments.values() for a in rows])
        for obj in objects:
            forms = [self._assignment_form(a, filter_names) for a in assignments.get(obj.id, [])]
            if isinstance(obj, CompliancePolicy):
                form = self._common_form(obj, forms)
                form["settings"] = dict(sorted((obj.settings or {}).items()))
                form["actions"] = _actions_form(obj.actions or DEFAULT_ACTIONS, names)
                out["compliance_policies"][obj.name.lower()] = Current(obj.id, form, obj)
            elif isinstance(obj, ConfigurationProfile):
                form = self._common_form(obj, forms)
                form["settings"] = reveal(dict(sorted((obj.settings or {}).items())), settings)
                out["configuration_profiles"][obj.name.lower()] = Current(obj.id, form, obj)
        return out

    async def _filter_names(self, session: AsyncSession, rows: Sequence[Assignment]) -> dict[uuid.UUID, str]:
        ids = {a.filter_id for a in rows if a.filter_id}
        if not ids:
            return {}
        found = await session.execute(
            select(AssignmentFilter.id, AssignmentFilter.name).where(AssignmentFilter.id.in_(ids))
        )
        return {filter_id: name for filter_id, name in found.all()}

    @staticmethod
    def _filter_form(item: AssignmentFilter) -> dict[str, Any]:
        return {
            "name": item.name,
            "platform": str(item.platform),
            "description": item.description,
            "rule": item.rule,
            "scope_tags": sorted(t.name for t in item.scope_tags),
        }

    @staticmethod
    def _assignment_form(row: Assignment, filter_names: dict[uuid.UUID, str]) -> dict[str, Any]:
        return {
            "target": str(row.target),
            "group_id": row.group_id,
            "mode": str(row.mode),
            "filter": filter_names.get(row.filter_id) if row.filter_id else None,
            "filter_mode": str(row.filter_mode) if row.filter_mode else None,
        }

    @staticmethod
    def _common_form(obj: Any, assignments: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": obj.name,
            "platform": str(obj.platform),
            "description": obj.description,
            "scope_tags": sorted(t.name for t in obj.scope_tags),
            "assignments": sorted(assignments, key=_assignment_key),
        }

    # ---------------------------------------------------------------- export
    async def export(self, session: AsyncSession, principal: Principal, settings: Settings) -> PolicyDocument:
        """The tenant as a document: every section the caller may read, objects by name, stable order,
        secrets as placeholders that keep them."""
        names = await self._names(session)
        current = await self._current(session, principal, settings, names)

        def ordered(section: str) -> list[Current]:
            return [current[section][key] for key in sorted(current[section])]

        def assignments(items: list[dict[str, Any]]) -> list[AssignmentDoc]:
            out = []
            for item in items:
                group_name = None
                group_id = None
                if item["group_id"] is not None:
                    group_name = names.group_names.get(item["group_id"])
                    if group_name is None or len(names.groups_by_name.get(group_name.lower(), [])) > 1:
                        group_name, group_id = None, item["group_id"]
                out.append(
                    AssignmentDoc(
                        target=item["target"],
                        group=group_name,
                        group_id=group_id,
                        mode=item["mode"],
                        filter=item["filter"],
                        filter_mode=item["filter_mode"],
                    )
                )
            return out

        document = PolicyDocument(version=1)
        if self._readable(principal, "filters"):
            document.filters = [FilterDoc(**c.form) for c in ordered("filters")]
        if self._readable(principal, "compliance_policies"):
            policies = []
            for c in ordered("compliance_policies"):
                actions = c.form["actions"]
                policies.append(
                    CompliancePolicyDoc(
                        name=c.form["name"],
                        platform=c.form["platform"],
                        description=c.form["description"],
                        settings=c.form["settings"],
                        actions=None
                        if actions == _actions_form(DEFAULT_ACTIONS, names)
                        else [ActionDoc(**a) for a in actions],
                        scope_tags=c.form["scope_tags"],
                        assignments=assignments(c.form["assignments"]),
                    )
                )
            document.compliance_policies = policies
        if self._readable(principal, "configuration_profiles"):
            document.configuration_profiles = [
                ProfileDoc(
                    name=c.form["name"],
                    platform=c.form["platform"],
                    description=c.form["description"],
                    settings=redact(c.row.settings or {}),
                    scope_tags=c.form["scope_tags"],
                    assignments=assignments(c.form["assignments"]),
                )
                for c in ordered("configuration_profiles")
            ]
        return document

    # ---------------------------------------------------------------- the document's wishes
    def _tags(self, where: str, tag_names: Sequence[str], names: Names) -> list[str]:
        out = []
        for index, tag_name in enumerate(tag_names):
            tag = names.tags_by_name.get(tag_name.lower())
            if tag is None:
                raise ValidationFailed(f'{where}.scope_tags[{index}]: no scope tag named "{tag_name}".')
            out.append(tag.name)
        return sorted(set(out))

    def _desired_assignments(
        self, where: str, items: Sequence[AssignmentDoc], names: Names, filter_names: dict[str, str]
    ) -> list[dict[str, Any]]:
        out = []
        for index, item in enumerate(items):
            here = f"{where}.assignments[{index}]"
            group_id = item.group_id
            if item.group is not None:
                found = names.groups_by_name.get(item.group.lower(), [])
                if not found:
                    raise ValidationFailed(f'{here}.group: no group named "{item.group}".')
                if len(found) > 1:
                    raise ValidationFailed(
                        f'{here}.group: {len(found)} groups are named "{item.group}": name it by group_id.'
                    )
                group_id = found[0]
            elif group_id is not None and group_id not in names.group_names:
                raise ValidationFailed(f"{here}.group_id: no such group.")
            filter_name = None
            if item.filter is not None:
                filter_name = filter_names.get(item.filter.lower())
                if filter_name is None:
                    raise ValidationFailed(f'{here}.filter: no filter named "{item.filter}".')
            out.append(
                {
                    "target": item.target.value,
                    "group_id": group_id,
                    "mode": item.mode.value,
                    "filter": filter_name,
                    "filter_mode": (item.filter_mode.value if item.filter_mode else "include")
                    if filter_name
                    else None,
                }
            )
        return sorted(out, key=_assignment_key)

    def _desired_actions(self, where: str, actions: Sequence[ActionDoc] | None, names: Names) -> list[Any]:
        if actions is None:
            return _actions_form(DEFAULT_ACTIONS, names)
        out = []
        for index, action in enumerate(actions):
            item: dict[str, Any] = {"action": action.action.value, "delay_hours": action.delay_hours}
            if action.recipients:
                item["recipients"] = list(action.recipients)
            if action.template is not None:
                if action.template.lower() not in names.templates_by_name:
                    missing = action.template
                    raise ValidationFailed(
                        f'{where}.actions[{index}].template: no notification template named "{missing}".'
                    )
                template_id = names.templates_by_name[action.template.lower()]
                item["template"] = names.template_names[template_id]
            if action.message:
                item["message"] = action.message
            out.append(item)
        return out

    def _filter_rule(self, where: str, rule: str) -> str:
        try:
            return format_rule(parse_filter_rule(rule))
        except CorralError as exc:
            raise type(exc)(f"{where}.rule: {exc.detail}", errors=exc.errors) from exc

    # ---------------------------------------------------------------- the plan
    @staticmethod
    def _changes(
        section: str, old: dict[str, Any] | None, new: dict[str, Any], names: Names
    ) -> list[FieldChange]:
        """Field by field (settings by setting) what turns ``old`` into ``new``; everything for a creation."""
        out: list[FieldChange] = []
        for key, value in new.items():
            before = old.get(key) if old is not None else None
            if key == "name" or (old is not None and before == value):
                continue
            if key == "settings":
                before_settings = before or {}
                for setting_id in sorted(set(before_settings) | set(value)):
                    a, b = before_settings.get(setting_id), value.get(setting_id)
                    if a == b:
                        continue
                    if section == "configuration_profiles":
                        a, b = _masked(setting_id, a, b, new=False), _masked(setting_id, b, a, new=True)
                    out.append(FieldChange(path=f"settings.{setting_id}", old=a, new=b))
            elif key == "assignments":
                out.append(
                    FieldChange(
                        path="assignments",
                        old=[_assignment_text(i, names) for i in before or []] if old is not None else None,
                        new=[_assignment_text(i, names) for i in value],
                    )
                )
            else:
                out.append(FieldChange(path=key, old=before, new=value))
        return out

    # ---------------------------------------------------------------- apply
    async def apply(
        self,
        session: AsyncSession,
        principal: Principal,
        document: PolicyDocument,
        settings: Settings,
        *,
        dry_run: bool,
    ) -> ApplyResult:
        """Make the tenant what the document says, in the caller's transaction (dry: then roll it back, so
        every refusal a real apply would meet is met)."""
        for section, (_, permission) in SECTIONS.items():
            if getattr(document, section) is not None and not principal.has(permission):
                raise Forbidden(f"{section}: applying them needs the permission {permission.value}.")
        names = await self._names(session)
        wanted_groups = [
            a.group
            for section in OBJECT_SECTIONS
            for item in getattr(document, section) or []
            for a in item.assignments
            if a.group is not None
        ]
        wanted_ids = [
            a.group_id
            for section in OBJECT_SECTIONS
            for item in getattr(document, section) or []
            for a in item.assignments
            if a.group_id is not None
        ]
        await self._load_groups(session, names, ids=wanted_ids, lowered=[g.lower() for g in wanted_groups])
        current = await self._current(session, principal, settings, names)

        # Filters the assignments may name: the document's own, else (section left out) the tenant's.
        if document.filters is not None:
            filter_names = {f.name.lower(): f.name for f in document.filters}
        else:
            filter_names = {key: c.form["name"] for key, c in current["filters"].items()}

        desired: dict[str, list[tuple[Any, dict[str, Any]]]] = {section: [] for section in SECTIONS}
        for item in document.filters or []:
            where = _where("filters", item.name)
            desired["filters"].append(
                (
                    item,
                    {
                        "name": item.name,
                        "platform": item.platform.value,
                        "description": item.description,
                        "rule": self._filter_rule(where, item.rule),
                        "scope_tags": self._tags(where, item.scope_tags, names),
                    },
                )
            )
        for section in OBJECT_SECTIONS:
            for obj in getattr(document, section) or []:
                where = _where(section, obj.name)
                form: dict[str, Any] = {
                    "name": obj.name,
                    "platform": obj.platform.value,
                    "description": obj.description,
                    "scope_tags": self._tags(where, obj.scope_tags, names),
                    "assignments": self._desired_assignments(where, obj.assignments, names, filter_names),
                }
                if isinstance(obj, CompliancePolicyDoc):
                    form["settings"] = dict(sorted(obj.settings.items()))
                    form["actions"] = self._desired_actions(where, obj.actions, names)
                else:
                    existing = current[section].get(obj.name.lower())
                    stored = existing.form["settings"] if existing else {}
                    kept = _with_kept_secrets(obj.settings, stored)
                    form["settings"] = dict(sorted(_normalized(kept).items()))
                desired[section].append((obj, form))

        changes: list[ObjectChange] = []
        unchanged = 0
        # Creations and updates: filters first (assignments name them), then the objects.
        filter_ids: dict[str, uuid.UUID] = {}
        for section, (kind, _) in SECTIONS.items():
            if section == OBJECT_SECTIONS[0]:  # the filters are written: their ids, once for every object
                filter_ids = await self._filter_ids(
                    session, [a for s in OBJECT_SECTIONS for _, f in desired[s] for a in f["assignments"]]
                )
            for item, form in desired[section]:
                existing = current[section].get(item.name.lower())
                where = _where(section, item.name)
                if existing is not None and existing.form["platform"] != form["platform"]:
                    raise ValidationFailed(
                        f"{where}.platform: an existing object's platform cannot change (it is "
                        f"{existing.form['platform']}); give it a new name."
                    )
                fields = self._changes(section, existing.form if existing else None, form, names)
                if existing is not None and not fields and existing.form["name"] == form["name"]:
                    unchanged += 1
                    continue
                if existing is not None and existing.form["name"] != form["name"]:
                    fields.insert(0, FieldChange(path="name", old=existing.form["name"], new=form["name"]))
                changes.append(
                    ObjectChange(
                        kind=kind,
                        name=item.name,
                        action="update" if existing else "create",
                        fields=fields,
                    )
                )
                self._may_change(principal, section, where)
                await self._write(
                    session, principal, settings, section, item, form, existing, names, filter_ids
                )
        # Deletions: objects before the filters their assignments may use.
        for section in ("compliance_policies", "configuration_profiles", "filters"):
            if getattr(document, section) is None:
                continue
            named = {item.name.lower() for item, _ in desired[section]}
            for key in sorted(current[section]):
                if key in named:
                    continue
                gone = current[section][key]
                changes.append(
                    ObjectChange(
                        kind=SECTIONS[section][0], name=gone.form["name"], action="delete", fields=[]
                    )
                )
                where = _where(section, gone.form["name"])
                self._may_change(principal, section, where)
                if section == "filters":
                    await _located(where, assignment_service.delete_filter(session, principal, gone.id))
                elif section == "compliance_policies":
                    await _located(where, compliance_service.delete(session, principal, gone.id))
                else:
                    await _located(where, profile_service.delete(session, principal, gone.id))

        result = ApplyResult(dry_run=dry_run, changes=changes, unchanged=unchanged)
        if dry_run:
            await session.rollback()
        elif changes:
            counts = {a: sum(1 for c in changes if c.action == a) for a in ("create", "update", "delete")}
            await audit_service.record(
                session,
                activity="policy_document.apply",
                category="policy",
                operation="update",
                target_type="tenant",
                target_id=None,
                target_name="policy document",
                changes=[("objects", None, counts)],
                detail=", ".join(f"{c.action} {c.kind} {c.name!r}" for c in changes[:50]),
            )
        return result

    @staticmethod
    def _may_change(principal: Principal, section: str, where: str) -> None:
        if not principal.has(WRITE[section]):
            raise Forbidden(f"{where}: changing it needs the permission {WRITE[section].value}.")

    async def _write(
        self,
        session: AsyncSession,
        principal: Principal,
        settings: Settings,
        section: str,
        item: Any,
        form: dict[str, Any],
        existing: Current | None,
        names: Names,
        filter_ids: dict[str, uuid.UUID],
    ) -> None:
        where = _where(section, item.name)
        tag_ids = [names.tags_by_name[t.lower()].id for t in form["scope_tags"]]
        if section == "filters":
            if existing is None:
                await _located(
                    where,
                    assignment_service.create_filter(
                        session,
                        principal,
                        FilterCreate(
                            name=item.name,
                            description=item.description,
                            platform=item.platform,
                            rule=item.rule,
                            scope_tag_ids=tag_ids,
                        ),
                    ),
                )
            else:
                await _located(
                    where,
                    assignment_service.update_filter(
                        session,
                        principal,
                        existing.id,
                        FilterUpdate(
                            name=item.name,
                            description=item.description,
                            rule=item.rule,
                            scope_tag_ids=tag_ids,
                        ),
                    ),
                )
            return
        obj: Any
        if section == "compliance_policies":
            actions = None
            if item.actions is not None:
                actions = [
                    ActionIn(
                        action=a.action,
                        delay_hours=a.delay_hours,
                        recipients=a.recipients,
                        template_id=names.templates_by_name[a.template.lower()] if a.template else None,
                        message=a.message,
                    )
                    for a in item.actions
                ]
            if existing is None:
                obj = await _located(
                    where,
                    compliance_service.create(
                        session,
                        principal,
                        PolicyCreate(
                            name=item.name,
                            description=item.description,
                            platform=item.platform,
                            settings=item.settings,
                            actions=actions,
                            scope_tag_ids=tag_ids,
                        ),
                    ),
                )
            else:
                obj = await _located(
                    where,
                    compliance_service.update(
                        session,
                        principal,
                        existing.id,
                        PolicyUpdate(
                            name=item.name,
                            description=item.description,
                            settings=item.settings,
                            actions=actions if actions is not None else [ActionIn(**DEFAULT_ACTIONS[0])],
                            scope_tag_ids=tag_ids,
                        ),
                    ),
                )
        elif existing is None:
            obj = await _located(
                where,
                profile_service.create(
                    session,
                    principal,
                    ProfileCreate(
                        name=item.name,
                        description=item.description,
                        platform=item.platform,
                        settings=item.settings,
                        scope_tag_ids=tag_ids,
                    ),
                    settings,
                ),
            )
        else:
            obj = await _located(
                where,
                profile_service.update(
                    session,
                    principal,
                    existing.id,
                    ProfileUpdate(
                        name=item.name,
                        description=item.description,
                        settings=item.settings,
                        scope_tag_ids=tag_ids,
                    ),
                    settings,
                ),
            )
        before = existing.form["assignments"] if existing else []
        if form["assignments"] != before:
            await _located(
                where,
                assignment_service.replace(
                    session,
                    principal,
                    obj,
                    [
                        AssignmentIn(
                            target=AssignmentTarget(a["target"]),
                            group_id=a["group_id"],
                            mode=AssignmentMode(a["mode"]),
                            filter_id=filter_ids[a["filter"].lower()] if a["filter"] else None,
                            filter_mode=a["filter_mode"],
                        )
                        for a in form["assignments"]
                    ],
                ),
            )

    async def _filter_ids(
        self, session: AsyncSession, items: Sequence[dict[str, Any]]
    ) -> dict[str, uuid.UUID]:
        wanted = {a["filter"].lower() for a in items if a["filter"]}
        if not wanted:
            return {}
        rows = await session.execute(
            select(AssignmentFilter.id, AssignmentFilter.name).where(
                func.lower(AssignmentFilter.name).in_(wanted)
            )
        )
        return {name.lower(): filter_id for filter_id, name in rows.all()}


policy_code_service = PolicyCodeService()
