"""What Corral's SCIM service provider says about itself (ServiceProviderConfig, ResourceTypes, Schemas:
RFC 7643 §5-7) and how its resources look on the wire. Only attributes Corral stores are declared: what an
identity provider sends beyond them is ignored (RFC 7644 §3.3), so nothing it reads back differs from what
it wrote. Pure logic."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from corral.models import Group, User
from corral.scim.filters import CORE_GROUP, CORE_USER, ENTERPRISE

LIST_RESPONSE = "urn:ietf:params:scim:api:messages:2.0:ListResponse"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SPC_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"
RESOURCE_TYPE_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:ResourceType"
SCHEMA_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Schema"
MAX_RESULTS = 1000
DEFAULT_COUNT = 100


def _attr(
    name: str,
    type_: str = "string",
    *,
    description: str = "",
    multi: bool = False,
    required: bool = False,
    case_exact: bool = False,
    mutability: str = "readWrite",
    returned: str = "default",
    uniqueness: str = "none",
    sub: list[dict[str, Any]] | None = None,
    canonical: list[str] | None = None,
    reference_types: list[str] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "type": type_,
        "multiValued": multi,
        "description": description,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": uniqueness,
    }
    if sub is not None:
        out["subAttributes"] = sub
    if canonical is not None:
        out["canonicalValues"] = canonical
    if reference_types is not None:
        out["referenceTypes"] = reference_types
    return out


USER_ATTRIBUTES = [
    _attr(
        "userName",
        description="The sign-in name (Corral's user principal name); unique whatever the case.",
        required=True,
        uniqueness="server",
    ),
    _attr(
        "name",
        "complex",
        description="The components of the user's name.",
        sub=[
            _attr("givenName", description="First name."),
            _attr("familyName", description="Last name."),
        ],
    ),
    _attr("displayName", description="The name shown in Corral.", required=True),
    _attr("title", description="Job title."),
    _attr(
        "emails",
        "complex",
        multi=True,
        description="Email address: Corral keeps one (the one marked primary, or the first).",
        sub=[
            _attr("value", description="The address."),
            _attr("type", description="Always work.", canonical=["work"]),
        ],
    ),
    _attr(
        "active",
        "boolean",
        description="false disables the user: their sessions end at once (true when not given).",
        required=True,
    ),
]
ENTERPRISE_ATTRIBUTES = [_attr("department", description="Department.")]
GROUP_ATTRIBUTES = [
    _attr("displayName", description="The group's name.", required=True),
    _attr(
        "members",
        "complex",
        multi=True,
        description="Users and groups (of the same connection) directly in the group.",
        sub=[
            _attr("value", description="The member's id.", mutability="immutable"),
            _attr(
                "$ref",
                "reference",
                description="The member's URI.",
                mutability="immutable",
                reference_types=["User", "Group"],
            ),
            _attr("type", description="User or Group.", mutability="immutable", canonical=["User", "Group"]),
        ],
    ),
]


def _meta(base: str, resource_type: str, location: str) -> dict[str, Any]:
    return {"resourceType": resource_type, "location": f"{base}/{location}"}


def schemas(base: str) -> list[dict[str, Any]]:
    def schema(urn: str, name: str, description: str, attributes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schemas": [SCHEMA_SCHEMA],
            "id": urn,
            "name": name,
            "description": description,
            "attributes": attributes,
            "meta": _meta(base, "Schema", f"Schemas/{urn}"),
        }

    return [
        schema(CORE_USER, "User", "User Account", USER_ATTRIBUTES),
        schema(ENTERPRISE, "EnterpriseUser", "Enterprise User", ENTERPRISE_ATTRIBUTES),
        schema(CORE_GROUP, "Group", "Group", GROUP_ATTRIBUTES),
    ]


def resource_types(base: str) -> list[dict[str, Any]]:
    return [
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "description": "User Account",
            "schema": CORE_USER,
            "schemaExtensions": [{"schema": ENTERPRISE, "required": False}],
            "meta": _meta(base, "ResourceType", "ResourceTypes/User"),
        },
        {
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "description": "Group",
            "schema": CORE_GROUP,
            "schemaExtensions": [],
            "meta": _meta(base, "ResourceType", "ResourceTypes/Group"),
        },
    ]


def service_provider_config(base: str, docs_url: str) -> dict[str, Any]:
    """What Corral supports, truthfully: PATCH and filters yes; bulk, sorting, ETags, password change no."""
    return {
        "schemas": [SPC_SCHEMA],
        "documentationUri": docs_url,
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "The secret token of the identity connection, issued in Corral (shown once).",
                "primary": True,
            }
        ],
        "meta": {"resourceType": "ServiceProviderConfig", "location": f"{base}/ServiceProviderConfig"},
    }


def _stamp(value: Any) -> str:
    text: str = value.isoformat()
    return text


def user_resource(base: str, user: User) -> dict[str, Any]:
    """A user as SCIM sees them: what the provider manages, never licences, roles or sign-in secrets."""
    out: dict[str, Any] = {
        "schemas": [CORE_USER, ENTERPRISE] if user.department else [CORE_USER],
        "id": str(user.id),
        "userName": user.user_principal_name,
        "displayName": user.display_name,
        "active": user.enabled,
        "meta": {
            "resourceType": "User",
            "created": _stamp(user.created_at),
            "lastModified": _stamp(user.updated_at),
            "location": f"{base}/Users/{user.id}",
        },
    }
    if user.external_id is not None:
        out["externalId"] = user.external_id
    name = {k: v for k, v in (("givenName", user.given_name), ("familyName", user.surname)) if v is not None}
    if name:
        out["name"] = name
    if user.job_title is not None:
        out["title"] = user.job_title
    if user.email is not None:
        out["emails"] = [{"value": user.email, "type": "work"}]
    if user.department:
        out[ENTERPRISE] = {"department": user.department}
    return out


def group_resource(base: str, group: Group, members: Iterable[tuple[str, str, str]] | None) -> dict[str, Any]:
    """``members``: (type "User"/"Group", id, display name); None leaves the attribute out. The display name
    is not returned (it is read-only, and clients compare members with what they sent)."""
    out: dict[str, Any] = {
        "schemas": [CORE_GROUP],
        "id": str(group.id),
        "displayName": group.display_name,
        "meta": {
            "resourceType": "Group",
            "created": _stamp(group.created_at),
            "lastModified": _stamp(group.updated_at),
            "location": f"{base}/Groups/{group.id}",
        },
    }
    if group.external_id is not None:
        out["externalId"] = group.external_id
    if members is not None:
        listed = [
            {"value": ident, "$ref": f"{base}/{kind}s/{ident}", "type": kind} for kind, ident, _ in members
        ]
        if listed:
            out["members"] = listed
    return out


ALWAYS_RETURNED = frozenset({"id", "schemas", "meta"})


def project(resource: dict[str, Any], attributes: str | None, excluded: str | None) -> dict[str, Any]:
    """``attributes`` / ``excludedAttributes`` (RFC 7644 §3.9), by top-level attribute (sub-attribute paths
    select or exclude their parent's sub-attribute)."""

    def names(text: str) -> list[tuple[str, str | None]]:
        out: list[tuple[str, str | None]] = []
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                continue
            lowered = item.lower()
            for urn in (CORE_USER.lower(), CORE_GROUP.lower()):
                if lowered.startswith(urn + ":"):
                    item = item[len(urn) + 1 :]
            if item.lower().startswith(ENTERPRISE.lower() + ":"):
                out.append((ENTERPRISE.lower(), item[len(ENTERPRISE) + 1 :].lower()))
                continue
            head, _, sub = item.partition(".")
            out.append((head.lower(), sub.lower() or None))
        return out

    if attributes:
        wanted = names(attributes)
        keep: dict[str, Any] = {}
        for key, value in resource.items():
            lowered = key.lower()
            if lowered in ALWAYS_RETURNED:
                keep[key] = value
                continue
            subs = [sub for head, sub in wanted if head == lowered]
            if not subs:
                continue
            if None in subs or not isinstance(value, dict | list):
                keep[key] = value
            elif isinstance(value, dict):
                keep[key] = {k: v for k, v in value.items() if k.lower() in subs}
            else:
                keep[key] = [
                    {k: v for k, v in item.items() if k.lower() in subs or k == "value"} for item in value
                ]
        return keep
    if excluded:
        unwanted = names(excluded)
        out: dict[str, Any] = {}
        for key, value in resource.items():
            lowered = key.lower()
            subs = [sub for head, sub in unwanted if head == lowered]
            if lowered in ALWAYS_RETURNED or not subs:
                out[key] = value
            elif None in subs:
                continue
            elif isinstance(value, dict):
                out[key] = {k: v for k, v in value.items() if k.lower() not in subs}
            elif isinstance(value, list):
                out[key] = [{k: v for k, v in item.items() if k.lower() not in subs} for item in value]
            else:
                out[key] = value
        return out
    return resource


def list_response(resources: list[dict[str, Any]], total: int, start_index: int) -> dict[str, Any]:
    return {
        "schemas": [LIST_RESPONSE],
        "totalResults": total,
        "startIndex": start_index,
        "itemsPerPage": len(resources),
        "Resources": resources,
    }
