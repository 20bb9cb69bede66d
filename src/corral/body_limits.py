"""How large a request body may be, and where (docs/operations.md, security notes). Enforced while the body
streams by corral.kit.body_limit.BodyLimitMiddleware: one limit per route family, by path prefix, from the
settings; a route that takes larger bodies (a later feature's upload) declares its own limit here."""

from __future__ import annotations

from collections.abc import Mapping

from corral.config import Settings
from corral.kit.body_limit import BodyLimits, Limit

#: Routes whose bodies may be larger (or must be smaller) than their family's limit, e.g. a file upload:
#: (method, path template exactly as the route declares it, e.g. "/api/v1/apps/{app_id}/package") → the name
#: of the Settings field holding the limit in bytes. Add that setting to corral.config.Settings and to the
#: settings table of docs/operations.md with it. (tests/test_body_limits.py checks each entry names a route.)
ROUTE_LIMITS: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/policy-document/apply"): "max_body_policy_document_bytes",
}


def body_limits(settings: Settings, route_limits: Mapping[tuple[str, str], str] = ROUTE_LIMITS) -> BodyLimits:
    routes = []
    for (method, template), setting in route_limits.items():
        size = getattr(settings, setting)
        if not isinstance(size, int):
            raise TypeError(f"{setting} is not a size in bytes")
        routes.append((method, template, Limit(size, f"{method} {template} requests")))
    return BodyLimits(
        prefixes=[
            ("/device/v1", Limit(settings.max_body_device_bytes, "Device requests")),
            ("/apple/v1", Limit(settings.max_body_apple_bytes, "Apple MDM requests")),
            ("/api/v1", Limit(settings.max_body_api_bytes, "Admin API requests")),
            ("/scim/v2", Limit(settings.max_body_scim_bytes, "SCIM requests")),
        ],
        default=Limit(settings.max_body_form_bytes, "Admin center forms and other requests"),
        routes=routes,
    )
