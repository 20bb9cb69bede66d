"""The SCIM 2.0 service provider (RFC 7643/7644): users and groups pushed by one identity connection, through
the users and groups services (so disabling a user ends their sessions and applies the tenant's device
policy, and every change is audited with the connection as the actor). Also the connection's bearer token.

Input rules, explicitly:
* attribute names are case-insensitive; PATCH ``op`` too (Entra sends ``"Replace"``, ``"Add"``);
* ``active`` accepts booleans and the strings ``"true"``/``"false"`` in any case (Entra sends ``"False"``);
* attributes of the SCIM core and enterprise schemas that Corral does not store (phone numbers, addresses,
  manager, …) and unknown extension schemas are **ignored** on create, replace and PATCH (RFC 7644 §3.3);
  a PATCH path naming an attribute of no schema at all is a 400 ``invalidPath``; a value of the wrong type
  or too long is a 400 ``invalidValue``; ``id`` and ``meta`` cannot be changed (400 ``mutability``);
* identifiers (``userName``, ``emails.value``, ``externalId``) holding a control, format or separator
  character (U+202E, U+0017…) are a 400 ``invalidValue``; names (``displayName``, ``name.*``, ``title``,
  ``department``) lose such characters (kit.text: the rule of the admin API and OpenID Connect too);
* a malformed filter is a 400 ``invalidFilter``; nothing is changed by a refused request.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from corral.audit.service import audit_service
from corral.errors import NotFound
from corral.groups.service import group_service
from corral.kit.security import token_digest
from corral.kit.text import clean_name, identifier_problem
from corral.kit.time import utcnow
from corral.models import Group, GroupSource, IdentityConnection, User, UserSource
from corral.scim import repository
from corral.scim.auth import TOKEN_PREFIX
from corral.scim.errors import ScimError
from corral.scim.filters import (
    ENTERPRISE,
    Compare,
    PatchPath,
    compile_filter,
    matches,
    normalise_path,
    parse_filter,
    parse_patch_path,
)
from corral.scim.resources import DEFAULT_COUNT, MAX_RESULTS, PATCH_OP, user_resource
from corral.users.service import user_service

ENT = ENTERPRISE.lower()
USER_TOP = {"username", "name", "displayname", "title", "emails", "active", "externalid", ENT}
USER_SUBS = {
    "name": {"givenname", "familyname", "formatted"},
    "emails": {"value", "type", "primary", "display"},
}
# In the core and enterprise schemas, not stored by Corral: accepted and ignored.
USER_IGNORED = {
    "nickname",
    "profileurl",
    "usertype",
    "preferredlanguage",
    "locale",
    "timezone",
    "password",
    "phonenumbers",
    "ims",
    "photos",
    "addresses",
    "groups",
    "entitlements",
    "roles",
    "x509certificates",
    "schemas",
}
ENT_IGNORED = {"employeenumber", "costcenter", "organization", "division", "manager"}
GROUP_TOP = {"displayname", "externalid", "members"}
READ_ONLY = {"id", "meta"}
LIMITS = {
    "username": 320,
    "displayname": 256,
    "givenname": 128,
    "familyname": 128,
    "title": 128,
    "department": 128,
    "email": 320,
    "externalid": 256,
}
# Compared and looked up, so refused when they hold an invisible or control character (kit.text).
IDENTIFIERS = {"username", "email", "externalid"}


def _lower(value: Any) -> Any:
    """Attribute names in lower case (SCIM names are case-insensitive); core schema URN prefixes dropped."""
    if isinstance(value, dict):
        return {normalise_path(str(k)): _lower(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower(v) for v in value]
    return value


def _text(value: Any, name: str, limit_key: str | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ScimError(400, f"{name} must be a string.", "invalidValue")
    key = limit_key or name.lower()
    if key in IDENTIFIERS:
        text = value.strip()
        problem = identifier_problem(text)
        if problem:
            raise ScimError(400, f"{name} {problem}.", "invalidValue")
    else:
        text = clean_name(value)
    limit = LIMITS.get(key)
    if limit is not None and len(text) > limit:
        raise ScimError(400, f"{name} is longer than {limit} characters.", "invalidValue")
    return text or None


def _boolean(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "false"}:
        return value.strip().lower() == "true"
    raise ScimError(400, f"{name} must be true or false.", "invalidValue")


def _object(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScimError(400, f"{name} must be an object.", "invalidValue")
    return value


@dataclass
class UserInput:
    values: dict[str, str | None]
    external_id: str | None
    enabled: bool


def user_input(doc: dict[str, Any]) -> UserInput:
    """A SCIM User (attribute names lower-cased) as Corral's user properties."""
    user_name = _text(doc.get("username"), "userName")
    if not user_name:
        raise ScimError(400, "userName is required.", "invalidValue")
    name = doc.get("name") or {}
    name = _object(name, "name")
    given = _text(name.get("givenname"), "name.givenName", "givenname")
    family = _text(name.get("familyname"), "name.familyName", "familyname")
    emails = doc.get("emails") or []
    if isinstance(emails, dict):
        emails = [emails]
    if not isinstance(emails, list) or not all(isinstance(e, dict) for e in emails):
        raise ScimError(400, "emails must be a list of objects.", "invalidValue")
    chosen = next((e for e in emails if e.get("primary") in (True, "true", "True")), None)
    chosen = chosen or next((e for e in emails if e.get("value")), None)
    email = _text(chosen.get("value"), "emails.value", "email") if chosen else None
    extension = _object(doc.get(ENT) or {}, ENTERPRISE)
    department = _text(extension.get("department"), "department")
    display = (
        _text(doc.get("displayname"), "displayName") or " ".join(p for p in (given, family) if p) or user_name
    )
    active = doc.get("active")
    return UserInput(
        values={
            "user_principal_name": user_name,
            "display_name": display,
            "given_name": given,
            "surname": family,
            "email": email,
            "department": department,
            "job_title": _text(doc.get("title"), "title"),
        },
        external_id=_text(doc.get("externalid"), "externalId"),
        enabled=True if active is None else _boolean(active, "active"),
    )


def user_document(user: User) -> dict[str, Any]:
    """The user as a lower-cased SCIM document, for PATCH to work on."""
    doc: dict[str, Any] = _lower(user_resource("", user))
    return doc


def _check_user_path(path: PatchPath) -> bool:
    """Whether the path names a stored attribute (True), an ignored one (False); else invalidPath."""
    attribute = path.attribute
    if attribute in READ_ONLY:
        raise ScimError(400, f"{attribute} cannot be changed.", "mutability")
    if attribute.startswith(ENT + ":"):
        leaf = attribute[len(ENT) + 1 :]
        if leaf == "department":
            return True
        if leaf in ENT_IGNORED:
            return False
        raise ScimError(400, f"The enterprise extension has no attribute {leaf!r}.", "invalidPath")
    if attribute == ENT:
        return True
    if attribute.startswith("urn:"):
        return False  # another extension schema: not Corral's
    if attribute in USER_IGNORED:
        return False
    if attribute not in USER_TOP:
        raise ScimError(400, f"Users have no attribute {attribute!r}.", "invalidPath")
    if path.sub_attribute is not None:
        allowed = USER_SUBS.get(attribute)
        if allowed is None or path.sub_attribute not in allowed:
            raise ScimError(400, f"{attribute} has no sub-attribute {path.sub_attribute!r}.", "invalidPath")
    return True


def _merge(target: dict[str, Any], value: dict[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, dict) and isinstance(target.get(key), dict):
            _merge(target[key], item)
        else:
            target[key] = item


def apply_user_operation(doc: dict[str, Any], op: str, path_text: str | None, value: Any) -> None:
    """One PATCH operation on a lower-cased User document (RFC 7644 §3.5.2)."""
    if path_text is None or path_text == "":
        if op == "remove":
            raise ScimError(400, "remove needs a path.", "noTarget")
        for key, item in _object(value, "value").items():
            key_text = str(key)
            if normalise_path(key_text) in READ_ONLY or normalise_path(key_text) == "schemas":
                continue  # Entra and others echo id and schemas: nothing to change
            apply_user_operation(doc, op, key_text, _lower(item))
        return
    path = parse_patch_path(path_text)
    if not _check_user_path(path):
        return
    attribute = path.attribute
    container = doc
    if attribute.startswith(ENT + ":"):
        container = doc.setdefault(ENT, {})
        attribute = attribute[len(ENT) + 1 :]
    value = _lower(value)
    if path.value_filter is not None:
        items = container.get(attribute)
        items = items if isinstance(items, list) else []
        targets = [item for item in items if isinstance(item, dict) and matches(path.value_filter, item)]
        if op == "remove":
            if path.sub_attribute:
                for item in targets:
                    item.pop(path.sub_attribute, None)
            else:
                container[attribute] = [item for item in items if item not in targets]
            return
        if not targets:
            if not isinstance(path.value_filter, Compare) or path.value_filter.op != "eq":
                raise ScimError(400, f"Nothing matches {path_text!r}.", "noTarget")
            created: dict[str, Any] = {path.value_filter.path: path.value_filter.value}
            items.append(created)
            container[attribute] = items
            targets = [created]
        for item in targets:
            if path.sub_attribute:
                item[path.sub_attribute] = value
            else:
                _merge(item, _object(value, "value"))
        return
    if path.sub_attribute:
        parent = container.get(attribute)
        if not isinstance(parent, dict):
            parent = {}
            container[attribute] = parent
        if op == "remove":
            parent.pop(path.sub_attribute, None)
        else:
            parent[path.sub_attribute] = value
        return
    if op == "remove":
        container.pop(attribute, None)
        return
    current = container.get(attribute)
    if isinstance(current, dict) and isinstance(value, dict):
        _merge(current, value)
    elif op == "add" and isinstance(current, list):
        additions = value if isinstance(value, list) else [value]
        container[attribute] = [*current, *[a for a in additions if a not in current]]
    else:
        container[attribute] = value


def operations(body: Any) -> list[tuple[str, str | None, Any]]:
    """The operations of a PatchOp message, ops in lower case."""
    if not isinstance(body, dict):
        raise ScimError(400, "The body must be a PatchOp object.", "invalidSyntax")
    lowered = {str(k).lower(): v for k, v in body.items()}
    schemas = lowered.get("schemas")
    if not isinstance(schemas, list) or PATCH_OP not in schemas:
        raise ScimError(400, f"A PATCH body has the schema {PATCH_OP}.", "invalidSyntax")
    ops = lowered.get("operations")
    if not isinstance(ops, list) or not ops:
        raise ScimError(400, "A PATCH body has a non-empty Operations list.", "invalidSyntax")
    out: list[tuple[str, str | None, Any]] = []
    for raw in ops:
        if not isinstance(raw, dict):
            raise ScimError(400, "Each operation is an object.", "invalidSyntax")
        item = {str(k).lower(): v for k, v in raw.items()}
        op = item.get("op")
        if not isinstance(op, str) or op.lower() not in {"add", "replace", "remove"}:
            raise ScimError(
                400, f"Unknown PATCH operation {op!r}: use add, replace or remove.", "invalidValue"
            )
        path = item.get("path")
        if path is not None and not isinstance(path, str):
            raise ScimError(400, "path must be a string.", "invalidPath")
        if op.lower() != "remove" and "value" not in item:
            raise ScimError(400, f"{op} needs a value.", "invalidValue")
        out.append((op.lower(), path, item.get("value")))
    return out


def paging(start_index: int | None, count: int | None) -> tuple[int, int]:
    start = max(1, start_index or 1)
    limit = DEFAULT_COUNT if count is None else max(0, min(count, MAX_RESULTS))
    return start, limit


def _member_ids(value: Any) -> list[uuid.UUID]:
    items = value if isinstance(value, list) else [value]
    out: list[uuid.UUID] = []
    for item in items:
        if not isinstance(item, dict):
            raise ScimError(400, "members are objects with a value (the member's id).", "invalidValue")
        lowered = {str(k).lower(): v for k, v in item.items()}
        raw = lowered.get("value")
        try:
            out.append(uuid.UUID(str(raw)))
        except ValueError:
            raise ScimError(400, f"{raw!r} is not the id of a user or group here.", "invalidValue") from None
    return out


@dataclass
class GroupInput:
    display_name: str
    external_id: str | None
    members: list[uuid.UUID] | None


def group_input(doc: dict[str, Any]) -> GroupInput:
    display = _text(doc.get("displayname"), "displayName")
    if not display:
        raise ScimError(400, "displayName is required.", "invalidValue")
    members = doc.get("members")
    return GroupInput(
        display_name=display,
        external_id=_text(doc.get("externalid"), "externalId"),
        members=None if members is None else _member_ids(members),
    )


@dataclass
class IssuedToken:
    connection: IdentityConnection
    token: str


class ScimService:
    # ---------------------------------------------------------------- users
    async def get_user(self, session: AsyncSession, connection: IdentityConnection, user_id: str) -> User:
        user = await repository.user(session, connection, user_id)
        if user is None:
            raise ScimError(404, f"No user {user_id} provisioned by this connection.")
        return user

    async def list_users(
        self,
        session: AsyncSession,
        connection: IdentityConnection,
        filter_text: str | None,
        start: int,
        limit: int,
    ) -> tuple[list[User], int]:
        condition = (
            compile_filter(parse_filter(filter_text), repository.USER_ATTRIBUTES) if filter_text else None
        )
        return await repository.user_page(session, connection, condition, start - 1, limit)

    async def _check_user_external_id(
        self, session: AsyncSession, connection: IdentityConnection, external_id: str | None, own: User | None
    ) -> None:
        if external_id is None:
            return
        other = await repository.user_with_external_id(session, connection, external_id)
        if other is not None and (own is None or other.id != own.id):
            raise ScimError(409, f"A user with externalId {external_id} already exists.", "uniqueness")

    async def create_user(self, session: AsyncSession, connection: IdentityConnection, body: Any) -> User:
        data = user_input(_lower(_object(body, "body")))
        await self._check_user_external_id(session, connection, data.external_id, None)
        return await user_service.create_provisioned(
            session,
            source=UserSource.scim,
            connection_id=connection.id,
            external_id=data.external_id,
            values=data.values,
            enabled=data.enabled,
        )

    async def _save_user(
        self, session: AsyncSession, connection: IdentityConnection, user: User, data: UserInput
    ) -> User:
        await self._check_user_external_id(session, connection, data.external_id, user)
        saved, _outcome = await user_service.update_provisioned(
            session, user, external_id=data.external_id, values=data.values, enabled=data.enabled
        )
        return saved

    async def replace_user(
        self, session: AsyncSession, connection: IdentityConnection, user_id: str, body: Any
    ) -> User:
        user = await self.get_user(session, connection, user_id)
        return await self._save_user(session, connection, user, user_input(_lower(_object(body, "body"))))

    async def patch_user(
        self, session: AsyncSession, connection: IdentityConnection, user_id: str, body: Any
    ) -> User:
        ops = operations(body)
        user = await self.get_user(session, connection, user_id)
        doc = user_document(user)
        for op, path, value in ops:
            apply_user_operation(doc, op, path, value)
        return await self._save_user(session, connection, user, user_input(doc))

    async def delete_user(self, session: AsyncSession, connection: IdentityConnection, user_id: str) -> None:
        user = await self.get_user(session, connection, user_id)
        await user_service.delete_provisioned(session, user)

    # ---------------------------------------------------------------- groups
    async def get_group(
        self,
        session: AsyncSession,
        connection: IdentityConnection,
        group_id: str,
        *,
        for_update: bool = False,
    ) -> Group:
        group = await repository.group(session, connection, group_id, for_update=for_update)
        if group is None:
            raise ScimError(404, f"No group {group_id} provisioned by this connection.")
        return group

    async def list_groups(
        self,
        session: AsyncSession,
        connection: IdentityConnection,
        filter_text: str | None,
        start: int,
        limit: int,
    ) -> tuple[list[Group], int]:
        condition = (
            compile_filter(parse_filter(filter_text), repository.GROUP_ATTRIBUTES) if filter_text else None
        )
        return await repository.group_page(session, connection, condition, start - 1, limit)

    async def members(
        self, session: AsyncSession, groups: list[Group]
    ) -> dict[uuid.UUID, list[tuple[str, str, str]]]:
        return await repository.members_of(session, [g.id for g in groups])

    async def _resolve(
        self, session: AsyncSession, connection: IdentityConnection, ids: list[uuid.UUID], *, strict: bool
    ) -> list[User | Group]:
        """Members must be users or groups this connection provisioned (a SCIM client cannot put Corral's
        own administrators in a group)."""
        unique = list(dict.fromkeys(ids))
        users = await repository.users_by_ids(session, connection, unique)
        groups = await repository.groups_by_ids(session, connection, unique)
        found: dict[uuid.UUID, User | Group] = {u.id: u for u in users}
        found.update({g.id: g for g in groups})
        missing = [str(i) for i in unique if i not in found]
        if missing and strict:
            raise ScimError(
                400,
                f"No user or group provisioned by this connection has the id {missing[0]}.",
                "invalidValue",
            )
        return [found[i] for i in unique if i in found]

    async def _check_group_external_id(
        self,
        session: AsyncSession,
        connection: IdentityConnection,
        external_id: str | None,
        own: Group | None,
    ) -> None:
        if external_id is None:
            return
        other = await repository.group_with_external_id(session, connection, external_id)
        if other is not None and (own is None or other.id != own.id):
            raise ScimError(409, f"A group with externalId {external_id} already exists.", "uniqueness")

    async def create_group(self, session: AsyncSession, connection: IdentityConnection, body: Any) -> Group:
        data = group_input(_lower(_object(body, "body")))
        await self._check_group_external_id(session, connection, data.external_id, None)
        members = await self._resolve(session, connection, data.members or [], strict=True)
        group = await group_service.create_provisioned(
            session,
            source=GroupSource.scim,
            connection_id=connection.id,
            display_name=data.display_name,
            external_id=data.external_id,
        )
        if members:
            await group_service.change_provisioned_members(session, group, add=members)
        return group

    async def _set_members(
        self, session: AsyncSession, connection: IdentityConnection, group: Group, wanted: list[User | Group]
    ) -> None:
        current = (await repository.members_of(session, [group.id]))[group.id]
        current_ids = {uuid.UUID(ident) for _, ident, _ in current}
        wanted_ids = {m.id for m in wanted}
        remove = await self._resolve(session, connection, list(current_ids - wanted_ids), strict=False)
        add = [m for m in wanted if m.id not in current_ids]
        await group_service.change_provisioned_members(session, group, add=add, remove=remove)

    async def replace_group(
        self, session: AsyncSession, connection: IdentityConnection, group_id: str, body: Any
    ) -> Group:
        data = group_input(_lower(_object(body, "body")))
        group = await self.get_group(session, connection, group_id, for_update=True)
        await self._check_group_external_id(session, connection, data.external_id, group)
        members = await self._resolve(session, connection, data.members or [], strict=True)
        await group_service.update_provisioned(
            session, group, display_name=data.display_name, external_id=data.external_id
        )
        await self._set_members(session, connection, group, members)
        return group

    async def patch_group(
        self, session: AsyncSession, connection: IdentityConnection, group_id: str, body: Any
    ) -> Group:
        ops = operations(body)
        group = await self.get_group(session, connection, group_id, for_update=True)
        display, external_id = group.display_name, group.external_id
        current = (await repository.members_of(session, [group.id]))[group.id]
        members = [uuid.UUID(ident) for _, ident, _ in current]
        for op, path_text, value in ops:
            changes: list[tuple[PatchPath | None, Any]] = []
            if not path_text:
                if op == "remove":
                    raise ScimError(400, "remove needs a path.", "noTarget")
                for key, item in _object(value, "value").items():
                    if normalise_path(str(key)) in READ_ONLY | {"schemas"}:
                        continue
                    changes.append((parse_patch_path(str(key)), item))
            else:
                changes.append((parse_patch_path(path_text), value))
            for path, item in changes:
                assert path is not None
                attribute = path.attribute
                if attribute in READ_ONLY:
                    raise ScimError(400, f"{attribute} cannot be changed.", "mutability")
                if attribute not in GROUP_TOP:
                    if attribute.startswith("urn:"):
                        continue
                    raise ScimError(400, f"Groups have no attribute {attribute!r}.", "invalidPath")
                if attribute == "members":
                    members = self._patch_members(members, op, path, item)
                elif attribute == "displayname":
                    if op == "remove":
                        raise ScimError(400, "displayName is required.", "mutability")
                    display = _text(item, "displayName") or display
                else:
                    external_id = None if op == "remove" else _text(item, "externalId")
        await self._check_group_external_id(session, connection, external_id, group)
        wanted = await self._resolve(session, connection, members, strict=True)
        await group_service.update_provisioned(session, group, display_name=display, external_id=external_id)
        await self._set_members(session, connection, group, wanted)
        return group

    @staticmethod
    def _patch_members(members: list[uuid.UUID], op: str, path: PatchPath, value: Any) -> list[uuid.UUID]:
        if path.value_filter is not None:
            # members[value eq "…"]: the member the filter names
            targets = {m for m in members if matches(path.value_filter, {"value": str(m)})}
            if op == "remove":
                return [m for m in members if m not in targets]
            node = path.value_filter
            if isinstance(node, Compare) and node.path == "value" and node.op == "eq":
                return list(dict.fromkeys([*members, *_member_ids({"value": node.value})]))
            raise ScimError(400, 'Name the member as members[value eq "<id>"].', "invalidPath")
        if op == "remove":
            if value is None:
                return []
            gone = set(_member_ids(value))
            return [m for m in members if m not in gone]
        given = _member_ids(value) if value is not None else []
        if op == "replace":
            return list(dict.fromkeys(given))
        return list(dict.fromkeys([*members, *given]))

    async def delete_group(
        self, session: AsyncSession, connection: IdentityConnection, group_id: str
    ) -> None:
        group = await self.get_group(session, connection, group_id, for_update=True)
        await group_service.delete_provisioned(session, group)

    # ---------------------------------------------------------------- the connection's token
    async def connection(self, session: AsyncSession, connection_id: uuid.UUID) -> IdentityConnection:
        found = await repository.connection(session, connection_id)
        if found is None:
            raise NotFound("No such identity connection.")
        return found

    async def issue_token(self, session: AsyncSession, connection_id: uuid.UUID) -> IssuedToken:
        """A new SCIM bearer token for the connection (shown once; the previous one stops working at once)
        and SCIM provisioning turned on."""
        connection = await self.connection(session, connection_id)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        previous = connection.scim_token_prefix
        connection.scim_token_hash = token_digest(token)
        connection.scim_token_prefix = token[: len(TOKEN_PREFIX) + 6]
        connection.scim_token_created_at = utcnow()
        was_enabled = connection.scim_enabled
        connection.scim_enabled = True
        await session.flush()
        await audit_service.record(
            session,
            activity="identity_connection.scim_token",
            category="identity",
            operation="update",
            target_type="identity_connection",
            target_id=connection.id,
            target_name=connection.name,
            changes=[("scim_enabled", was_enabled, True)],
            detail=(
                f"SCIM token issued ({connection.scim_token_prefix}…)"
                + (f"; the previous one ({previous}…) no longer works" if previous else "")
            ),
        )
        return IssuedToken(connection, token)

    async def revoke_token(self, session: AsyncSession, connection_id: uuid.UUID) -> IdentityConnection:
        """SCIM provisioning off: the token stops working; users and groups already provisioned stay."""
        connection = await self.connection(session, connection_id)
        previous = connection.scim_token_prefix
        was_enabled = connection.scim_enabled
        connection.scim_token_hash = None
        connection.scim_token_prefix = None
        connection.scim_token_created_at = None
        connection.scim_enabled = False
        await session.flush()
        await audit_service.record(
            session,
            activity="identity_connection.scim_token_revoke",
            category="identity",
            operation="update",
            target_type="identity_connection",
            target_id=connection.id,
            target_name=connection.name,
            changes=[("scim_enabled", was_enabled, False)],
            detail=f"SCIM token revoked ({previous}…)" if previous else "SCIM turned off",
        )
        return connection


def last_modified(resource: User | Group) -> datetime:
    return resource.updated_at


scim_service = ScimService()
