"""The /api/v1 router tree. Every route carries a guard (see corral.auth.dependencies)."""

from corral.apple.endpoints import router as apple_router
from corral.assignments.endpoints import router as assignments_router
from corral.audit.endpoints import router as audit_router
from corral.auth.endpoints import router as me_router
from corral.compliance.endpoints import router as compliance_router
from corral.delivery.endpoints import router as delivery_router
from corral.devices.endpoints import router as devices_router
from corral.enrollment.endpoints import router as enrollment_router
from corral.groups.endpoints import router as groups_router
from corral.identity.endpoints import router as identity_router
from corral.kit.routing import APIRouter
from corral.licensing.endpoints import router as licensing_router
from corral.policy_code.endpoints import router as policy_code_router
from corral.profiles.endpoints import router as profiles_router
from corral.rbac.endpoints import router as rbac_router
from corral.scim.endpoints import api_router as scim_admin_router
from corral.selfservice.endpoints import router as selfservice_router
from corral.tenant.endpoints import router as tenant_router
from corral.tokens.endpoints import router as tokens_router
from corral.users.endpoints import router as users_router

api_router = APIRouter(prefix="/api/v1")
for router in (
    me_router,
    selfservice_router,
    users_router,
    rbac_router,
    tokens_router,
    audit_router,
    tenant_router,
    devices_router,
    enrollment_router,
    groups_router,
    assignments_router,
    compliance_router,
    profiles_router,
    delivery_router,
    policy_code_router,
    licensing_router,
    scim_admin_router,
    identity_router,
    apple_router,
):
    api_router.include_router(router)
