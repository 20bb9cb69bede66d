"""The admin center (server-rendered) under /portal."""

from fastapi.responses import RedirectResponse

from corral.auth.dependencies import PUBLIC
from corral.kit.routing import APIRouter
from corral.portal.admin_views import router as admin_router
from corral.portal.apple_views import router as apple_router
from corral.portal.approval_views import router as approval_router
from corral.portal.assignment_views import router as assignment_router
from corral.portal.auth_views import router as auth_router
from corral.portal.compliance_views import router as compliance_router
from corral.portal.device_views import router as device_router
from corral.portal.group_views import router as group_router
from corral.portal.identity_views import router as identity_router
from corral.portal.oidc_views import router as oidc_router
from corral.portal.profile_views import router as profile_router
from corral.portal.scim_views import router as scim_router
from corral.portal.selfservice_views import router as selfservice_router
from corral.portal.user_views import router as user_router

portal_router = APIRouter()
portal_router.include_router(auth_router)
portal_router.include_router(admin_router)
portal_router.include_router(apple_router)
portal_router.include_router(device_router)
portal_router.include_router(group_router)
portal_router.include_router(user_router)
portal_router.include_router(approval_router)
portal_router.include_router(assignment_router)
portal_router.include_router(compliance_router)
portal_router.include_router(profile_router)
portal_router.include_router(scim_router)
portal_router.include_router(oidc_router)
portal_router.include_router(identity_router)
portal_router.include_router(selfservice_router)


@portal_router.get("/", dependencies=[PUBLIC], include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/portal", status_code=307)
