"""Pure RBAC logic: scopes, grants, narrowing, what may be granted, object authorization."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from corral.errors import Forbidden, NotFound
from corral.rbac.permissions import P
from corral.rbac.principal import (
    EVERYWHERE,
    Grant,
    Principal,
    Reach,
    Scope,
    assignment_scope,
    authorize_object,
)
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

    def tagged(*tags: uuid.UUID) -> Callable[[Scope], bool]:
        return lambda scope: scope.covers(tags)

    authorize_object(p, P.remote_lock, tagged(PARIS), read_permission=P.devices_read)
    with pytest.raises(NotFound):
        authorize_object(p, P.remote_lock, tagged(BERLIN), read_permission=P.devices_read)
    with pytest.raises(NotFound):  # untagged objects belong to the default scope: unscoped grants only
        authorize_object(p, P.remote_lock, tagged(), read_permission=P.devices_read)
    with pytest.raises(Forbidden):
        authorize_object(p, P.remote_wipe, tagged(PARIS), read_permission=P.devices_read)


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


# ------------------------------------------------------------------------------------------- scope groups
G_PARIS, G_PARIS_EAST, G_LYON = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
NESTED = {G_PARIS: frozenset({G_PARIS, G_PARIS_EAST}), G_LYON: frozenset({G_LYON})}


def grouped(*roots: uuid.UUID, tags: frozenset[uuid.UUID] | None = None) -> Scope:
    return assignment_scope(all_tags=tags is None, tag_ids=tags or (), scope_group_ids=roots, nested=NESTED)


def test_an_assignment_scope_includes_the_groups_nested_in_its_scope_groups() -> None:
    scope = grouped(G_PARIS)
    assert scope.reaches == {Reach(tag_ids=None, group_ids=frozenset({G_PARIS, G_PARIS_EAST}))}
    assert scope.limits_groups and not scope.all
    assert grouped() == EVERYWHERE
    assert grouped(tags=frozenset({PARIS})) == Scope(tag_ids=frozenset({PARIS}))


def test_scope_groups_limit_users_and_devices_but_not_tag_scoped_objects() -> None:
    paris = grouped(G_PARIS)
    assert paris.covers_member(set(), {G_PARIS_EAST})  # a device in a nested group
    assert paris.covers_member({BERLIN}, {G_PARIS})  # whatever its tags
    assert not paris.covers_member(set(), {G_LYON})
    assert not paris.covers_member(set(), set())
    assert paris.covers_user({G_PARIS})
    assert not paris.covers_user({G_LYON})
    assert paris.covers(set())  # an untagged enrollment token: scope groups do not concern it


def test_tags_and_groups_of_one_assignment_both_apply_and_reaches_of_two_do_not_mix() -> None:
    both = grouped(G_PARIS, tags=frozenset({PARIS})).union(grouped(G_LYON, tags=frozenset({BERLIN})))
    assert both.covers_member({PARIS}, {G_PARIS})
    assert both.covers_member({BERLIN}, {G_LYON})
    assert not both.covers_member({PARIS}, {G_LYON})  # not (PARIS or BERLIN) and (Paris or Lyon)
    assert not both.covers_member({BERLIN}, {G_PARIS})
    assert not both.covers_user(set())
    assert both.covers_user({G_LYON})  # users carry no tags


def test_a_wider_grant_absorbs_a_narrower_one() -> None:
    assert grouped(G_PARIS).union(EVERYWHERE) == EVERYWHERE
    wide = grouped(G_PARIS)
    assert wide.union(grouped(G_PARIS, tags=frozenset({PARIS}))) == wide
    assert Scope(tag_ids=frozenset()) == Scope()


def test_nobody_grants_beyond_their_scope_groups() -> None:
    p = principal((frozenset({P.remote_wipe}), grouped(G_PARIS)))
    assert p.can_grant({P.remote_wipe}, grouped(G_PARIS))
    assert p.can_grant(
        {P.remote_wipe},
        assignment_scope(all_tags=True, tag_ids=(), scope_group_ids=[G_PARIS_EAST], nested={}),
    )  # a group nested in their own
    assert p.can_grant({P.remote_wipe}, grouped(G_PARIS, tags=frozenset({PARIS})))
    assert not p.can_grant({P.remote_wipe}, grouped(G_LYON))
    assert not p.can_grant({P.remote_wipe}, grouped(G_PARIS, G_LYON))
    assert not p.can_grant({P.remote_wipe}, EVERYWHERE)
    assert not p.can_grant({P.remote_wipe}, Scope(tag_ids=frozenset({PARIS})))  # tags but every group


def test_tags_held_through_several_reaches_count_together_within_the_same_groups() -> None:
    p = principal(
        (frozenset({P.remote_lock}), grouped(G_PARIS, tags=frozenset({PARIS}))),
        (frozenset({P.remote_lock}), grouped(G_PARIS, tags=frozenset({BERLIN}))),
    )
    assert p.can_grant({P.remote_lock}, grouped(G_PARIS, tags=frozenset({PARIS, BERLIN})))
    assert not p.can_grant({P.remote_lock}, grouped(G_LYON, tags=frozenset({PARIS})))
