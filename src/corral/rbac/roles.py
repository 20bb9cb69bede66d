"""Built-in roles. Their permissions live here (code), so a new permission reaches them with the release."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from corral.rbac.permissions import ALL_PERMISSIONS, P

if TYPE_CHECKING:
    from corral.models import RoleDefinition

_NS = uuid.UUID("8f2d6a9e-61c4-4b7a-9e0f-2b1f6f7c0a11")


@dataclass(frozen=True)
class BuiltinRole:
    name: str
    description: str
    permissions: frozenset[P]

    @property
    def id(self) -> uuid.UUID:
        return uuid.uuid5(_NS, self.name)


_READS = frozenset(p for p in P if p.value.endswith(":read"))
_REMOTE = frozenset(p for p in P if p.value.startswith("remote:")) - {P.remote_approve}

GLOBAL_ADMINISTRATOR = BuiltinRole(
    "Global administrator",
    "Everything, including tenant settings, licences and roles.",
    ALL_PERMISSIONS,
)
SERVICE_ADMINISTRATOR = BuiltinRole(
    "Service administrator",
    "Devices, enrollment, policies, profiles, apps, app protection, users, groups and roles; "
    "no licences, billing or tenant settings.",
    ALL_PERMISSIONS
    - {P.licences_read, P.licences_write, P.settings_read, P.settings_write, P.system_metrics},
)
DEVICE_COMPLIANCE_ADMINISTRATOR = BuiltinRole(
    "Device compliance administrator",
    "Builds, assigns and monitors compliance policies; reads devices.",
    frozenset(
        {
            P.compliance_read,
            P.compliance_write,
            P.compliance_assign,
            P.filters_read,
            P.devices_read,
            P.groups_read,
            P.users_read,
            P.reports_read,
            P.audit_read,
        }
    ),
)
HELP_DESK_OPERATOR = BuiltinRole(
    "Help desk operator",
    "Finds users and devices, sees their state and runs remote tasks (lock, wipe, retire, sync, passcode "
    "reset…); assigns apps. No policy editing, no licences.",
    frozenset(
        {
            P.devices_read,
            P.devices_update,
            P.apps_read,
            P.apps_assign,
            P.mam_read,
            P.mam_wipe,
            P.compliance_read,
            P.profiles_read,
            P.filters_read,
            P.users_read,
            P.groups_read,
            P.audit_read,
            P.reports_read,
            P.enrollment_read,
        }
    )
    | _REMOTE,
)
READ_ONLY_OPERATOR = BuiltinRole(
    "Read-only operator",
    "Sees devices, policies, apps, users, groups, roles and reports; changes nothing.",
    _READS - {P.licences_read, P.settings_read},
)
APPLICATION_MANAGER = BuiltinRole(
    "Application manager",
    "Manages apps and app protection policies; reads devices, users and groups.",
    frozenset(
        {
            P.apps_read,
            P.apps_write,
            P.apps_assign,
            P.mam_read,
            P.mam_write,
            P.mam_assign,
            P.mam_wipe,
            P.filters_read,
            P.devices_read,
            P.users_read,
            P.groups_read,
            P.reports_read,
        }
    ),
)
POLICY_AND_PROFILE_MANAGER = BuiltinRole(
    "Policy and profile manager",
    "Manages compliance policies, configuration profiles and enrollment; reads devices, users and groups.",
    frozenset(
        {
            P.compliance_read,
            P.compliance_write,
            P.compliance_assign,
            P.profiles_read,
            P.profiles_write,
            P.profiles_assign,
            P.filters_read,
            P.filters_write,
            P.enrollment_read,
            P.enrollment_manage,
            P.devices_read,
            P.users_read,
            P.groups_read,
            P.reports_read,
        }
    ),
)

BUILTIN_ROLES: tuple[BuiltinRole, ...] = (
    GLOBAL_ADMINISTRATOR,
    SERVICE_ADMINISTRATOR,
    DEVICE_COMPLIANCE_ADMINISTRATOR,
    HELP_DESK_OPERATOR,
    READ_ONLY_OPERATOR,
    APPLICATION_MANAGER,
    POLICY_AND_PROFILE_MANAGER,
)
BUILTIN_BY_ID: dict[uuid.UUID, BuiltinRole] = {role.id: role for role in BUILTIN_ROLES}
BUILTIN_BY_NAME: dict[str, BuiltinRole] = {role.name.lower(): role for role in BUILTIN_ROLES}


def role_permissions(role: RoleDefinition) -> frozenset[P]:
    """What a role grants: a built-in role's permissions from the code, a custom role's as stored (names
    this release does not know are left out)."""
    builtin = BUILTIN_BY_ID.get(role.id)
    if builtin is not None:
        return builtin.permissions
    return frozenset(P(p) for p in role.permissions if p in P._value2member_map_)
