"""Who is asking, and what they may do where. Pure logic: no database, no FastAPI."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral.rbac.permissions import P

if TYPE_CHECKING:
    from corral.errors import Forbidden


@dataclass(frozen=True)
class Reach:
    """What one role assignment reaches.

    ``tag_ids``: ``None`` reaches objects whatever their scope tags (untagged ones too); a set reaches only
    objects carrying one of those tags. ``group_ids``: ``None`` reaches every user and device; a set (the
    assignment's scope groups and every group nested in them) reaches only users that are members of one
    of them and devices that are, or whose primary user is. Scope groups concern users and devices only:
    other objects (enrollment tokens, policies…) are reached by their tags alone.
    """

    tag_ids: frozenset[uuid.UUID] | None = None
    group_ids: frozenset[uuid.UUID] | None = None

    @property
    def void(self) -> bool:
        return self.tag_ids is not None and not self.tag_ids

    def groups_within(self, other: Reach) -> bool:
        return other.group_ids is None or (self.group_ids is not None and self.group_ids <= other.group_ids)

    def within(self, other: Reach) -> bool:
        tags = other.tag_ids is None or (self.tag_ids is not None and self.tag_ids <= other.tag_ids)
        return tags and self.groups_within(other)

    def tags_match(self, object_tag_ids: frozenset[uuid.UUID]) -> bool:
        return self.tag_ids is None or bool(self.tag_ids & object_tag_ids)

    def groups_match(self, member_of: frozenset[uuid.UUID]) -> bool:
        return self.group_ids is None or bool(self.group_ids & member_of)


def _normal(reaches: Iterable[Reach]) -> frozenset[Reach]:
    """Drop reaches that reach nothing or lie within another one."""
    kept = {r for r in reaches if not r.void}
    return frozenset(r for r in kept if not any(r != o and r.within(o) for o in kept))


class Scope:
    """Where a permission applies: a union of reaches (one per role assignment granting it). ``Scope()`` is
    nowhere, ``Scope(all=True)`` everywhere, ``Scope(tag_ids=…)`` the objects carrying one of those tags."""

    __slots__ = ("reaches",)
    reaches: frozenset[Reach]

    def __init__(
        self,
        all: bool = False,
        tag_ids: Iterable[uuid.UUID] = (),
        *,
        reaches: Iterable[Reach] = (),
    ) -> None:
        given = list(reaches)
        if all:
            given.append(Reach())
        elif tag_ids:
            given.append(Reach(tag_ids=frozenset(tag_ids)))
        object.__setattr__(self, "reaches", _normal(given))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Scope is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scope) and self.reaches == other.reaches

    def __hash__(self) -> int:
        return hash(self.reaches)

    def __repr__(self) -> str:
        return f"Scope(reaches={set(self.reaches)!r})"

    @property
    def all(self) -> bool:
        return Reach() in self.reaches

    @property
    def empty(self) -> bool:
        return not self.reaches

    @property
    def limits_groups(self) -> bool:
        """Whether some reach is limited to scope groups (users and devices need their groups to decide)."""
        return any(r.group_ids is not None for r in self.reaches)

    @property
    def tag_ids(self) -> frozenset[uuid.UUID]:
        """Every tag some reach names (for objects scoped by tags alone, see ``ignoring_groups``)."""
        return frozenset(t for r in self.reaches if r.tag_ids is not None for t in r.tag_ids)

    def ignoring_groups(self) -> Scope:
        """The scope for objects that belong to no group (enrollment tokens, policies…): tags alone."""
        return Scope(reaches=(Reach(tag_ids=r.tag_ids) for r in self.reaches))

    def union(self, other: Scope) -> Scope:
        return Scope(reaches=self.reaches | other.reaches)

    def covers(self, object_tag_ids: Iterable[uuid.UUID]) -> bool:
        """For objects scoped by tags alone. Untagged objects are in the built-in "Default" scope, reached
        only by grants not limited to tags."""
        return self.ignoring_groups().covers_member(object_tag_ids, ())

    def covers_member(self, object_tag_ids: Iterable[uuid.UUID], member_of: Iterable[uuid.UUID]) -> bool:
        """For a device (its tags; the groups it and its primary user belong to directly) or a user (no
        tags; the groups they belong to directly): some reach must match both."""
        tags, groups = frozenset(object_tag_ids), frozenset(member_of)
        return any(r.tags_match(tags) and r.groups_match(groups) for r in self.reaches)

    def covers_user(self, member_of: Iterable[uuid.UUID]) -> bool:
        """Users carry no scope tags: only scope groups limit which users a grant reaches."""
        groups = frozenset(member_of)
        return any(r.groups_match(groups) for r in self.reaches)

    def contains(self, other: Scope) -> bool:
        """Whether every object ``other`` reaches is reached here (exact for tags; for scope groups, each of
        ``other``'s reaches must fall within the groups of reaches here that together hold its tags)."""
        for reach in other.reaches:
            around = [r for r in self.reaches if reach.groups_within(r)]
            if any(r.tag_ids is None for r in around):
                continue
            held: set[uuid.UUID] = set()
            for r in around:
                held |= r.tag_ids or set()
            if reach.tag_ids is None or not reach.tag_ids <= held:
                return False
        return True


def assignment_scope(
    *,
    all_tags: bool,
    tag_ids: Iterable[uuid.UUID],
    scope_group_ids: Iterable[uuid.UUID],
    nested: Mapping[uuid.UUID, frozenset[uuid.UUID]],
) -> Scope:
    """A role assignment's scope: every object or those carrying ``tag_ids``; limited, for users and
    devices, to the scope groups when there are any (``nested`` gives each group with the groups nested in
    it, whose members are in scope too)."""
    roots = set(scope_group_ids)
    groups: frozenset[uuid.UUID] | None = None
    if roots:
        groups = frozenset(g for root in roots for g in nested.get(root, frozenset({root})))
    return Scope(reaches=[Reach(tag_ids=None if all_tags else frozenset(tag_ids), group_ids=groups)])


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
                # A Scope is kept normalised: the first grant's is used as it is (built on every request).
                held = scopes.get(permission)
                scopes[permission] = grant.scope if held is None else held.union(grant.scope)
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

    @property
    def scope_group_ids(self) -> frozenset[uuid.UUID]:
        """Every group some of this admin's grants are limited to (nested ones included): changing what
        such a group holds would change what they may reach."""
        return frozenset(g for s in self._scopes.values() for r in s.reaches for g in r.group_ids or ())

    def can_grant(self, permissions: Iterable[P], scope: Scope) -> bool:
        """Nobody hands out more than they hold: every permission, over a scope within their own."""
        return all(self.scope_for(p).contains(scope) for p in permissions)


def authorize_object(
    principal: Principal, permission: P, reaches: Callable[[Scope], bool], *, read_permission: P
) -> None:
    """The guard for one scoped object, fetched first; ``reaches`` says whether a scope reaches it (tags
    alone, or tags and groups for users and devices). Outside the caller's read scope it does not exist for
    them (404, so scope does not leak existence); visible but not actionable is 403."""
    from corral.errors import NotFound

    if not reaches(principal.scope_for(read_permission)):
        raise NotFound("No such object.")
    if not reaches(principal.scope_for(permission)):
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
