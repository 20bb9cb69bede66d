"""Who is asking, and what they may do where. Pure logic: no database, no FastAPI."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral.rbac.permissions import P

if TYPE_CHECKING:
    from corral.errors import Forbidden


@dataclass(frozen=True)
class Scope:
    """Where a permission applies: everywhere, or on objects carrying one of ``tag_ids``."""

    all: bool = False
    tag_ids: frozenset[uuid.UUID] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.all and not self.tag_ids

    def union(self, other: Scope) -> Scope:
        if self.all or other.all:
            return Scope(all=True)
        return Scope(tag_ids=self.tag_ids | other.tag_ids)

    def covers(self, object_tag_ids: Iterable[uuid.UUID]) -> bool:
        """Objects without a tag are in the built-in "Default" scope, visible only to unscoped grants."""
        if self.all:
            return True
        return bool(self.tag_ids.intersection(object_tag_ids))

    def contains(self, other: Scope) -> bool:
        if self.all:
            return True
        return not other.all and other.tag_ids <= self.tag_ids


EVERYWHERE = Scope(all=True)
NOWHERE = Scope()

# Acts for Corral itself (tenant policies applied automatically); never a row in ``users``.
SYSTEM_USER_ID = uuid.UUID(int=0)


@dataclass(frozen=True)
class Grant:
    role_id: uuid.UUID
    role_name: str
    assignment_id: uuid.UUID
    assignment_name: str
    permissions: frozenset[P]
    scope: Scope


@dataclass(frozen=True)
class Principal:
    """An authenticated admin (through a session or an API token) and their effective grants."""

    user_id: uuid.UUID
    # The sign-in name: what audit events and command histories call this admin.
    user_principal_name: str
    display_name: str
    grants: tuple[Grant, ...] = ()
    token_id: uuid.UUID | None = None
    # API tokens may be narrowed to a subset of the owner's permissions.
    narrowed_to: frozenset[P] | None = None
    session_id: uuid.UUID | None = None
    csrf_token: str | None = None
    must_change_password: bool = False
    email: str | None = None
    _scopes: dict[P, Scope] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        scopes: dict[P, Scope] = {}
        for grant in self.grants:
            for permission in grant.permissions:
                if self.narrowed_to is not None and permission not in self.narrowed_to:
                    continue
                scopes[permission] = scopes.get(permission, NOWHERE).union(grant.scope)
        self._scopes.update(scopes)

    @property
    def permissions(self) -> frozenset[P]:
        return frozenset(self._scopes)

    @property
    def is_admin(self) -> bool:
        return bool(self._scopes)

    def has(self, permission: P) -> bool:
        return permission in self._scopes

    def has_any(self, *permissions: P) -> bool:
        return any(p in self._scopes for p in permissions)

    def scope_for(self, permission: P) -> Scope:
        return self._scopes.get(permission, NOWHERE)

    def scopes(self) -> dict[P, Scope]:
        return dict(self._scopes)

    def can_grant(self, permissions: Iterable[P], scope: Scope) -> bool:
        """Nobody hands out more than they hold: every permission, over a scope within their own."""
        return all(self.scope_for(p).contains(scope) for p in permissions)


def authorize_object(
    principal: Principal, permission: P, object_tag_ids: Iterable[uuid.UUID], *, read_permission: P
) -> None:
    """The guard for one scoped object, fetched first: outside the caller's read scope it does not exist for
    them (404, so scope does not leak existence); visible but not actionable is 403."""
    from corral.errors import NotFound

    tags = frozenset(object_tag_ids)
    if not principal.scope_for(read_permission).covers(tags):
        raise NotFound("No such object.")
    if not principal.scope_for(permission).covers(tags):
        raise not_permitted(permission)


def system_principal(name: str, permissions: frozenset[P]) -> Principal:
    """Corral itself, applying a tenant policy (for example retiring a deprovisioned user's devices): holds
    just ``permissions``, everywhere. What it does is still audited under the request's own actor."""
    grant = Grant(
        role_id=SYSTEM_USER_ID,
        role_name="Corral",
        assignment_id=SYSTEM_USER_ID,
        assignment_name=name,
        permissions=permissions,
        scope=EVERYWHERE,
    )
    return Principal(user_id=SYSTEM_USER_ID, user_principal_name=name, display_name=name, grants=(grant,))


def not_permitted(permission: P) -> Forbidden:
    """The refusal for an object the caller can see but not act on with ``permission`` (its scope)."""
    from corral.errors import Forbidden

    return Forbidden(f"This needs the permission {permission.value} over this object's scope.")
