"""ORM classes, one file per table; imported here so Alembic sees them all."""

from corral.models.api_token import ApiToken
from corral.models.apple import (
    AppleCommand,
    AppleEnrollment,
    ApplePendingIdentity,
    ApplePushQueue,
    AppleScepChallenge,
    ServiceCertificate,
)
from corral.models.apple_push_certificate import ApplePushCertificate
from corral.models.assignable import (
    DESIRED_STATE_VERSIONS,
    Assignable,
    AssignableKind,
    CompliancePolicy,
    ConfigurationProfile,
    ConfigurationProfileVersion,
    DeviceDesiredState,
    assignable_scope_tags,
    device_targets,
)
from corral.models.assignment import (
    Assignment,
    AssignmentFilter,
    AssignmentMode,
    AssignmentTarget,
    FilterMode,
    assignment_filter_scope_tags,
)
from corral.models.audit_event import AuditEvent
from corral.models.bulk_action import BulkAction
from corral.models.certificate_authority import CertificateAuthority
from corral.models.compliance import (
    ComplianceActionRun,
    ComplianceOverride,
    DeviceComplianceChange,
    DeviceCompliancePolicy,
    NotificationTemplate,
)
from corral.models.delivery import DeviceProfileDelivery, DeviceSettingState
from corral.models.device import (
    ComplianceState,
    Device,
    ManagementChannel,
    ManagementState,
    Ownership,
    Platform,
    device_checkin_days,
    device_scope_tags,
)
from corral.models.device_app import DeviceApp
from corral.models.device_certificate import DeviceCertificate
from corral.models.device_command import CommandStatus, DeviceCommand
from corral.models.device_inventory_change import DeviceInventoryChange
from corral.models.device_nonce import DeviceNonce
from corral.models.enrollment_token import (
    EnrollmentRefusal,
    EnrollmentToken,
    EnrollmentTokenUse,
    enrollment_token_scope_tags,
)
from corral.models.group import (
    DynamicKind,
    Group,
    GroupSource,
    MembershipType,
    group_children,
    group_devices,
    group_users,
)
from corral.models.identity_connection import IdentityConnection, UserIdentity
from corral.models.licence import Licence, UserLicence
from corral.models.role_assignment import (
    RoleAssignment,
    role_assignment_member_groups,
    role_assignment_members,
    role_assignment_scope_groups,
    role_assignment_scope_tags,
)
from corral.models.role_definition import RoleDefinition
from corral.models.scope_tag import ScopeTag
from corral.models.signin_throttle import SignInThrottle
from corral.models.tenant_settings import TenantSettings
from corral.models.user import User, UserSource
from corral.models.user_session import UserSession

__all__ = [
    "DESIRED_STATE_VERSIONS",
    "ApiToken",
    "AppleCommand",
    "AppleEnrollment",
    "ApplePendingIdentity",
    "ApplePushCertificate",
    "ApplePushQueue",
    "AppleScepChallenge",
    "Assignable",
    "AssignableKind",
    "Assignment",
    "AssignmentFilter",
    "AssignmentMode",
    "AssignmentTarget",
    "AuditEvent",
    "BulkAction",
    "CertificateAuthority",
    "CommandStatus",
    "ComplianceActionRun",
    "ComplianceOverride",
    "CompliancePolicy",
    "ComplianceState",
    "ConfigurationProfile",
    "ConfigurationProfileVersion",
    "Device",
    "DeviceApp",
    "DeviceCertificate",
    "DeviceCommand",
    "DeviceComplianceChange",
    "DeviceCompliancePolicy",
    "DeviceDesiredState",
    "DeviceInventoryChange",
    "DeviceNonce",
    "DeviceProfileDelivery",
    "DeviceSettingState",
    "DynamicKind",
    "EnrollmentRefusal",
    "EnrollmentToken",
    "EnrollmentTokenUse",
    "FilterMode",
    "Group",
    "GroupSource",
    "IdentityConnection",
    "Licence",
    "ManagementChannel",
    "ManagementState",
    "MembershipType",
    "NotificationTemplate",
    "Ownership",
    "Platform",
    "RoleAssignment",
    "RoleDefinition",
    "ScopeTag",
    "ServiceCertificate",
    "SignInThrottle",
    "TenantSettings",
    "User",
    "UserIdentity",
    "UserLicence",
    "UserSession",
    "UserSource",
    "assignable_scope_tags",
    "assignment_filter_scope_tags",
    "device_checkin_days",
    "device_scope_tags",
    "device_targets",
    "enrollment_token_scope_tags",
    "group_children",
    "group_devices",
    "group_users",
    "role_assignment_member_groups",
    "role_assignment_members",
    "role_assignment_scope_groups",
    "role_assignment_scope_tags",
]
