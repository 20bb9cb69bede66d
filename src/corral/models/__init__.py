"""ORM classes, one file per table; imported here so Alembic sees them all."""

from corral.models.api_token import ApiToken
from corral.models.audit_event import AuditEvent
from corral.models.certificate_authority import CertificateAuthority
from corral.models.role_assignment import RoleAssignment, role_assignment_members, role_assignment_scope_tags
from corral.models.role_definition import RoleDefinition
from corral.models.scope_tag import ScopeTag
from corral.models.signin_throttle import SignInThrottle
from corral.models.tenant_settings import TenantSettings
from corral.models.user import User, UserSource
from corral.models.user_session import UserSession

__all__ = [
    "ApiToken",
    "AuditEvent",
    "CertificateAuthority",
    "RoleAssignment",
    "RoleDefinition",
    "ScopeTag",
    "SignInThrottle",
    "TenantSettings",
    "User",
    "UserSession",
    "UserSource",
    "role_assignment_members",
    "role_assignment_scope_tags",
]
