"""Who gets an assigned object, and why: the reference semantics of assignments. Pure: no database, no
FastAPI. The SQL in ``engine.py`` computes the same answer for whole fleets; the property tests hold the two
together, and explanations are built from this module.

For a device and an object (a compliance policy, a configuration profile…):

* the device's groups are the groups it belongs to directly, the groups its primary user belongs to directly,
  and every group those are nested in;
* an **include** assignment reaches the device when it targets all devices, all users (the device has a
  primary user), or one of the device's groups — and its filter, if any, matches the device (filter mode
  *include*) or does not (filter mode *exclude*);
* an **exclude** assignment reaches the device when it targets one of the device's groups (exclusions take
  no filter);
* an object made for one platform reaches only devices of that platform (iOS objects reach iPads too);
* the device is **included** when some include assignment reaches it and no exclude assignment does:
  exclusion wins (the verdict is *excluded* whenever an exclusion reaches it). Retired and wiped devices
  are targeted by nothing.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from corral.models.assignment import AssignmentMode, AssignmentTarget, FilterMode
from corral.models.device import Platform


class Verdict(StrEnum):
    included = "included"
    excluded = "excluded"
    not_targeted = "not_targeted"
    not_applicable = "not_applicable"  # the object is for another platform
    inactive = "inactive"  # retired or wiped: nothing targets it


# The device platforms an object made for a platform applies to: iOS objects also reach iPads (Intune's
# "iOS/iPadOS"); every other platform only its own.
APPLIES_TO: dict[Platform, frozenset[Platform]] = {p: frozenset({p}) for p in Platform}
APPLIES_TO[Platform.ios] = frozenset({Platform.ios, Platform.ipados})


def applies(object_platform: Platform | str, device_platform: Platform | str) -> bool:
    return Platform(device_platform) in APPLIES_TO[Platform(object_platform)]


class Via(StrEnum):
    device = "device"  # the device is a member (directly or through nested groups)
    primary_user = "primary_user"  # its primary user is
    all_devices = "all_devices"
    all_users = "all_users"


@dataclass(frozen=True)
class AssignmentSpec:
    """One assignment as the resolver needs it."""

    id: uuid.UUID
    target: AssignmentTarget
    mode: AssignmentMode = AssignmentMode.include
    group_id: uuid.UUID | None = None
    filter_id: uuid.UUID | None = None
    filter_mode: FilterMode | None = None


@dataclass(frozen=True)
class DeviceView:
    """What decides a device's targets: its direct groups, its primary user's, the nesting above them and
    the result of every filter that matters (``filter_id -> matched``)."""

    id: uuid.UUID
    platform: Platform = Platform.windows
    active: bool = True
    direct_groups: frozenset[uuid.UUID] = frozenset()
    user_id: uuid.UUID | None = None
    user_groups: frozenset[uuid.UUID] = frozenset()
    # child group -> the groups it is directly nested in (only edges above the groups above are needed)
    parents: Mapping[uuid.UUID, frozenset[uuid.UUID]] = field(default_factory=dict)
    filters: Mapping[uuid.UUID, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Path:
    """How an assignment's target reaches the device: ``via`` and, for a group, the chain of groups from
    the one the device (or its user) is a direct member of up to the assigned group."""

    via: Via
    chain: tuple[uuid.UUID, ...] = ()


@dataclass(frozen=True)
class AssignmentResult:
    assignment: AssignmentSpec
    path: Path | None  # None: its target does not reach the device
    filter_matched: bool | None = None  # None: no filter (or not reached)

    @property
    def filter_passed(self) -> bool:
        if self.assignment.filter_id is None or self.filter_matched is None:
            return True
        return self.filter_matched is (self.assignment.filter_mode is not FilterMode.exclude)

    @property
    def effective(self) -> bool:
        """Whether this assignment counts for the device (its target reaches it and its filter lets it)."""
        return self.path is not None and self.filter_passed


@dataclass(frozen=True)
class Resolution:
    verdict: Verdict
    results: tuple[AssignmentResult, ...]

    @property
    def included_by(self) -> list[AssignmentResult]:
        return [r for r in self.results if r.assignment.mode is AssignmentMode.include and r.effective]

    @property
    def excluded_by(self) -> list[AssignmentResult]:
        return [r for r in self.results if r.assignment.mode is AssignmentMode.exclude and r.effective]


def group_chain(device: DeviceView, starts: Iterable[uuid.UUID], target: uuid.UUID) -> tuple[uuid.UUID, ...]:
    """The shortest chain of nesting from one of ``starts`` up to ``target`` (inclusive), or ()."""
    queue: deque[tuple[uuid.UUID, ...]] = deque((start,) for start in sorted(starts))
    seen: set[uuid.UUID] = set()
    while queue:
        chain = queue.popleft()
        group = chain[-1]
        if group == target:
            return chain
        if group in seen:
            continue
        seen.add(group)
        for parent in sorted(device.parents.get(group, ())):
            if parent not in seen:
                queue.append((*chain, parent))
    return ()


def path_to(device: DeviceView, assignment: AssignmentSpec) -> Path | None:
    """How the assignment's target reaches the device, or None."""
    if assignment.target is AssignmentTarget.all_devices:
        return Path(Via.all_devices)
    if assignment.target is AssignmentTarget.all_users:
        return Path(Via.all_users) if device.user_id is not None else None
    assert assignment.group_id is not None
    chain = group_chain(device, device.direct_groups, assignment.group_id)
    if chain:
        return Path(Via.device, chain)
    if device.user_id is not None:
        chain = group_chain(device, device.user_groups, assignment.group_id)
        if chain:
            return Path(Via.primary_user, chain)
    return None


def resolve(
    device: DeviceView, assignments: Sequence[AssignmentSpec], platform: Platform | str | None = None
) -> Resolution:
    """The verdict for one device and one object (made for ``platform``; None: any) and its assignments,
    with each assignment's part in it."""
    applicable = platform is None or applies(platform, device.platform)
    results = []
    for assignment in assignments:
        path = path_to(device, assignment) if device.active and applicable else None
        matched = None
        if path is not None and assignment.filter_id is not None:
            matched = bool(device.filters.get(assignment.filter_id, False))
        results.append(AssignmentResult(assignment, path, matched))
    resolution = Resolution(Verdict.not_targeted, tuple(results))
    if not device.active:
        verdict = Verdict.inactive
    elif not applicable:
        verdict = Verdict.not_applicable
    elif resolution.excluded_by:
        verdict = Verdict.excluded
    elif resolution.included_by:
        verdict = Verdict.included
    else:
        verdict = Verdict.not_targeted
    return Resolution(verdict, tuple(results))


def targeted(
    device: DeviceView, assignments: Sequence[AssignmentSpec], platform: Platform | str | None = None
) -> bool:
    return resolve(device, assignments, platform).verdict is Verdict.included
