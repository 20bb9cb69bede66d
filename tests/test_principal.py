"""Pure RBAC logic: scopes, grants, narrowing, what may be granted, object authorization."""

from __future__ import annotations

import uuid

import pytest

from corral.errors import Forbidden, NotFound
from corral.rbac.permissions import P
from corral.rbac.principal import EVERYWHERE, Grant, Principal, Scope, authorize_object
from corral.rbac.roles import BUILTIN_ROLES, GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR, SERVICE_ADMINISTRATOR

PARIS, BERLIN = uuid.uuid4(), uuid.uuid4()


def principal(*grants: tuple[frozenset[P], Scope], narrowed: frozenset[P] | None = None) -> Principal:
    return Principal(
        user_id=uuid.uuid4(),
        user_principal_name="a@example.com",
        display_name="A",
        narrowed_to=narrowed,
        grants=tuple(Grant(uuid.uuid4(), "r", uuid.uuid4(), "a", perms, scope) for perms, scope in grants),
    )


def test_scopes_of_several_grants_combine_per_permission() -> None:
    p = principal(
        (frozenset({P.devices_read}), Scope(tag_ids=frozenset({PARIS}))),
        (frozenset({P.devices_read, P.remote_lock}), Scope(tag_ids=frozenset({BERLIN}))),
    )
    assert p.scope_for(P.devices_read).tag_ids == {PARIS, BERLIN}
    assert p.scope_for(P.remote_lock).tag_ids == {BERLIN}
    assert p.scope_for(P.remote_wipe).empty


def test_an_unscoped_grant_wins_over_tags() -> None:
    p = principal(
        (frozenset({P.devices_read}), Scope(tag_ids=frozenset({PARIS}))),
        (frozenset({P.devices_read}), EVERYWHERE),
    )
    assert p.scope_for(P.devices_read).all


def test_narrowed_token_keeps_only_the_intersection() -> None:
    p = principal(
        (frozenset({P.devices_read, P.remote_wipe}), EVERYWHERE),
        narrowed=frozenset({P.devices_read, P.settings_write}),
    )
    assert p.permissions == {P.devices_read}


def test_can_grant_only_within_own_permissions_and_scope() -> None:
    p = principal((frozenset({P.remote_lock}), Scope(tag_ids=frozenset({PARIS}))))
    assert p.can_grant({P.remote_lock}, Scope(tag_ids=frozenset({PARIS})))
    assert not p.can_grant({P.remote_lock}, Scope(tag_ids=frozenset({PARIS, BERLIN})))
    assert not p.can_grant({P.remote_lock}, EVERYWHERE)
    assert not p.can_grant({P.remote_wipe}, Scope(tag_ids=frozenset({PARIS})))


def test_object_outside_read_scope_is_not_found_and_inside_without_action_is_forbidden() -> None:
    p = principal(
        (frozenset({P.devices_read}), Scope(tag_ids=frozenset({PARIS}))),
        (frozenset({P.remote_lock}), Scope(tag_ids=frozenset({PARIS}))),
    )
    authorize_object(p, P.remote_lock, {PARIS}, read_permission=P.devices_read)
    with pytest.raises(NotFound):
        authorize_object(p, P.remote_lock, {BERLIN}, read_permission=P.devices_read)
    with pytest.raises(NotFound):  # untagged objects belong to the default scope: unscoped grants only
        authorize_object(p, P.remote_lock, set(), read_permission=P.devices_read)
    with pytest.raises(Forbidden):
        authorize_object(p, P.remote_wipe, {PARIS}, read_permission=P.devices_read)


def test_builtin_roles_match_the_product_brief() -> None:
    assert GLOBAL_ADMINISTRATOR.permissions == frozenset(P)
    assert not SERVICE_ADMINISTRATOR.permissions & {P.licences_read, P.licences_write}
    assert {P.remote_wipe, P.remote_lock, P.remote_retire} <= HELP_DESK_OPERATOR.permissions
    assert not HELP_DESK_OPERATOR.permissions & {
        P.licences_read,
        P.compliance_write,
        P.profiles_write,
        P.roles_write,
        P.settings_read,
    }
    read_only = next(r for r in BUILTIN_ROLES if r.name == "Read-only operator")
    assert all(p.value.endswith(":read") for p in read_only.permissions)
    assert len({r.id for r in BUILTIN_ROLES}) == len(BUILTIN_ROLES)
