"""The kinds of assignable object: their API path, labels and permissions (read, edit, assign)."""

from __future__ import annotations

from dataclasses import dataclass

from corral.models import AssignableKind
from corral.rbac.permissions import P


@dataclass(frozen=True)
class Kind:
    kind: AssignableKind
    path: str  # under /api/v1
    label: str  # "compliance policy"
    read: P
    write: P
    assign: P


KINDS: dict[AssignableKind, Kind] = {
    k.kind: k
    for k in (
        Kind(
            AssignableKind.compliance_policy,
            "compliance-policies",
            "compliance policy",
            P.compliance_read,
            P.compliance_write,
            P.compliance_assign,
        ),
        Kind(
            AssignableKind.configuration_profile,
            "configuration-profiles",
            "configuration profile",
            P.profiles_read,
            P.profiles_write,
            P.profiles_assign,
        ),
    )
}
