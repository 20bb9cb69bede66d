"""The permission vocabulary: ``resource:operation``. Every route states one (or is listed public)."""

from __future__ import annotations

from enum import StrEnum


class P(StrEnum):
    # Devices and remote tasks (one permission per action, as Intune's RemoteTasks_*).
    devices_read = "devices:read"
    devices_update = "devices:update"
    devices_delete = "devices:delete"
    remote_lock = "remote:lock"
    remote_wipe = "remote:wipe"
    remote_retire = "remote:retire"
    remote_sync = "remote:sync"
    remote_restart = "remote:restart"
    remote_shutdown = "remote:shutdown"
    remote_locate = "remote:locate"
    remote_lost_mode = "remote:lost_mode"
    remote_passcode_reset = "remote:passcode_reset"
    remote_rename = "remote:rename"
    remote_approve = "remote:approve"
    enrollment_read = "enrollment:read"
    enrollment_manage = "enrollment:manage"
    # Policies, profiles, apps, app protection.
    compliance_read = "compliance:read"
    compliance_write = "compliance:write"
    compliance_assign = "compliance:assign"
    profiles_read = "profiles:read"
    profiles_write = "profiles:write"
    profiles_assign = "profiles:assign"
    filters_read = "filters:read"
    filters_write = "filters:write"
    apps_read = "apps:read"
    apps_write = "apps:write"
    apps_assign = "apps:assign"
    mam_read = "mam:read"
    mam_write = "mam:write"
    mam_assign = "mam:assign"
    mam_wipe = "mam:wipe"
    # Identity.
    users_read = "users:read"
    users_write = "users:write"
    groups_read = "groups:read"
    groups_write = "groups:write"
    # Administration.
    roles_read = "roles:read"
    roles_write = "roles:write"
    roles_assign = "roles:assign"
    scope_tags_read = "scope_tags:read"
    scope_tags_write = "scope_tags:write"
    api_tokens_manage = "api_tokens:manage"
    audit_read = "audit:read"
    reports_read = "reports:read"
    licences_read = "licences:read"
    licences_write = "licences:write"
    settings_read = "settings:read"
    settings_write = "settings:write"
    system_metrics = "system:metrics"


ALL_PERMISSIONS: frozenset[P] = frozenset(P)

DESCRIPTIONS: dict[P, str] = {
    P.devices_read: "See devices, their inventory and command history",
    P.devices_update: "Edit device properties (name, ownership, primary user, scope tags)",
    P.devices_delete: "Delete device records",
    P.remote_lock: "Remote task: lock a device",
    P.remote_wipe: "Remote task: wipe a device (factory reset)",
    P.remote_retire: "Remote task: retire a device (remove corporate data and management)",
    P.remote_sync: "Remote task: ask a device to check in now",
    P.remote_restart: "Remote task: restart a device",
    P.remote_shutdown: "Remote task: shut a device down",
    P.remote_locate: "Remote task: locate a device",
    P.remote_lost_mode: "Remote task: turn lost mode on or off",
    P.remote_passcode_reset: "Remote task: reset a device passcode",
    P.remote_rename: "Remote task: rename a device",
    P.remote_approve: "Approve another admin's destructive remote task",
    P.enrollment_read: "See enrollment tokens and their use",
    P.enrollment_manage: "Create and revoke enrollment tokens",
    P.compliance_read: "See compliance policies and their status",
    P.compliance_write: "Create, edit and delete compliance policies",
    P.compliance_assign: "Assign compliance policies to groups",
    P.profiles_read: "See configuration profiles and their status",
    P.profiles_write: "Create, edit and delete configuration profiles",
    P.profiles_assign: "Assign configuration profiles to groups",
    P.filters_read: "See assignment filters",
    P.filters_write: "Create, edit and delete assignment filters",
    P.apps_read: "See apps and their install status",
    P.apps_write: "Add, edit and delete apps",
    P.apps_assign: "Assign apps to groups",
    P.mam_read: "See app protection policies and app registrations",
    P.mam_write: "Create, edit and delete app protection policies",
    P.mam_assign: "Assign app protection policies",
    P.mam_wipe: "Selectively wipe corporate data from managed apps",
    P.users_read: "See users",
    P.users_write: "Create, edit and disable users",
    P.groups_read: "See groups and their members",
    P.groups_write: "Create, edit and delete groups",
    P.roles_read: "See role definitions and role assignments",
    P.roles_write: "Create, edit and delete custom roles",
    P.roles_assign: "Assign roles to administrators",
    P.scope_tags_read: "See scope tags",
    P.scope_tags_write: "Create, edit and delete scope tags",
    P.api_tokens_manage: "See and revoke every administrator's API tokens",
    P.audit_read: "Read the audit log",
    P.reports_read: "Read reports",
    P.licences_read: "See licences and licence assignments",
    P.licences_write: "Manage licences and licence assignments",
    P.settings_read: "See tenant settings",
    P.settings_write: "Change tenant settings",
    P.system_metrics: "Scrape Prometheus metrics",
}

assert set(DESCRIPTIONS) == set(P), "every permission needs a description"


def parse_permissions(values: list[str]) -> list[P]:
    """Validate a list of permission strings; raises ValueError naming the unknown ones."""
    unknown = sorted({value for value in values if value not in P._value2member_map_})
    if unknown:
        raise ValueError(f"unknown permission(s): {', '.join(unknown)}")
    return sorted({P(value) for value in values})
