"""The admin center in a real browser: sign-in, first password, role-based navigation, CSRF, sign-out."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import AuditEvent, User, UserSession
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from corral.users.schemas import AdminCreate
from corral.users.service import user_service
from tests.conftest import PASSWORD, Factory
from tests.portal.conftest import LiveServer, browser_sign_in, shot

NEW_PASSWORD = "a much longer passphrase 42"


async def change_first_password(page: Page, one_time: str, new_password: str = NEW_PASSWORD) -> None:
    await expect(page).to_have_url(re.compile(r"/portal/account/password$"))
    await page.get_by_label("One-time or current password").fill(one_time)
    await page.get_by_label("New password", exact=True).fill(new_password)
    await page.get_by_label("Confirm new password").fill(new_password)
    await page.get_by_role("button", name="Change password").click()


async def test_sign_in_lands_on_dashboard_and_sign_out_ends_the_session(
    page: Page, live_server: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator", token=False)
    await page.goto(f"{live_server.url}/portal/roles")
    await expect(page).to_have_url(re.compile(r"/portal/sign-in\?next=%2Fportal%2Froles$"))
    await shot(page, "sign-in")

    await page.get_by_label("Email").fill(admin.email)
    await page.get_by_label("Password").fill("not the password at all")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("incorrect")

    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/portal/roles$"))  # back where they were going
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session_cookie = cookies["__Host-corral_session"]
    assert session_cookie["secure"] and session_cookie["httpOnly"] and session_cookie["sameSite"] == "Lax"

    await page.goto(f"{live_server.url}/portal")
    await expect(page.get_by_role("heading", level=1)).to_be_visible()
    await shot(page, "dashboard")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))
    async with sessionmaker() as session:
        remaining = await session.scalar(select(func.count()).select_from(UserSession))
        signins = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.activity.in_(["signin", "signout"]))
        )
    assert remaining == 0
    assert signins == 3  # one failure, one success, one sign-out

    # The old cookie is dead on the server, not only deleted in the browser.
    await page.context.add_cookies(
        [
            {
                "name": session_cookie["name"],
                "value": session_cookie["value"],
                "url": live_server.url,
                "secure": True,
                "httpOnly": True,
                "sameSite": "Lax",
            }
        ]
    )
    await page.goto(f"{live_server.url}/portal")
    await expect(page).to_have_url(re.compile(r"/portal/sign-in"))


async def test_first_global_admin_creates_help_desk_operator_who_sees_no_roles_or_settings(
    page: Page, live_server: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session:  # as `corral serve` does on first start
        bootstrap = await user_service.create_admin(
            session, AdminCreate(email="admin@corral.local", role_id=GLOBAL_ADMINISTRATOR.id)
        )
        await session.commit()
    assert bootstrap.one_time_password

    await browser_sign_in(page, live_server.url, "admin@corral.local", bootstrap.one_time_password)
    await shot(page, "forced-password-change")
    # Until the password is changed, nothing else opens.
    await page.goto(f"{live_server.url}/portal/admins")
    await change_first_password(page, bootstrap.one_time_password)
    await expect(page).to_have_url(re.compile(r"/portal$"))

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Administrators").click()
    await page.get_by_label("Email address").fill("helpdesk@example.com")
    await page.get_by_label("Display name").fill("Harriet Helpdesk")
    await page.get_by_label("Role").select_option(label="Help desk operator (built-in)")
    await page.get_by_role("button", name="Create administrator").click()
    one_time = (await page.locator("#one-time-password").inner_text()).strip()
    assert len(one_time) >= 12
    await shot(page, "admin-created")

    await page.get_by_role("button", name="Sign out").click()
    await browser_sign_in(page, live_server.url, "helpdesk@example.com", one_time)
    await change_first_password(page, one_time)
    await expect(page).to_have_url(re.compile(r"/portal$"))

    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="Audit log")).to_be_visible()
    for hidden in ("Roles", "Role assignments", "Settings", "Scope tags"):
        await expect(nav.get_by_role("link", name=hidden, exact=True)).to_have_count(0)
    await shot(page, "helpdesk-dashboard")

    for path in ("/portal/roles", "/portal/settings", "/portal/role-assignments/new"):
        response = await page.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 403, path
    await shot(page, "helpdesk-forbidden")
    api = await page.request.get(f"{live_server.url}/api/v1/settings")
    assert api.status == 403  # the session works for the API too, and is refused just the same

    async with sessionmaker() as session:
        helpdesk = await session.scalar(
            select(User).where(User.user_principal_name == "helpdesk@example.com")
        )
    assert helpdesk is not None and helpdesk.must_change_password is False


async def test_a_form_with_a_forged_csrf_token_changes_nothing(
    page: Page, live_server: LiveServer, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin("Global administrator", token=False)
    await browser_sign_in(page, live_server.url, admin.email)
    await page.goto(f"{live_server.url}/portal/settings")
    await page.get_by_label("Organisation name").fill("Forged Inc")
    await page.locator("form[action='/portal/settings'] input[name=csrf_token]").evaluate(
        "el => el.value = 'forged'"
    )
    await page.locator("form[action='/portal/settings'] button[type=submit]").click()
    await expect(page.get_by_text("CSRF")).to_be_visible()
    await shot(page, "csrf-rejected")

    await page.goto(f"{live_server.url}/portal/settings")
    await expect(page.get_by_label("Organisation name")).not_to_have_value("Forged Inc")
    await page.get_by_label("Organisation name").fill("Contoso")
    await page.locator("form[action='/portal/settings'] button[type=submit]").click()
    await expect(page.get_by_label("Organisation name")).to_have_value("Contoso")
    async with sessionmaker() as session:
        denied = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.activity == "access.denied")
        )
        changed = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.activity == "settings.update")
        )
    assert denied == 1 and changed == 1


async def test_main_pages_render_for_a_global_administrator(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    admin = await factory.admin("Global administrator", token=False)
    await factory.admin("Help desk operator", token=False)
    await browser_sign_in(page, live_server.url, admin.email)
    for name, path in [
        ("admins", "/portal/admins"),
        ("admin-detail", f"/portal/admins/{admin.id}"),
        ("roles", "/portal/roles"),
        ("role-new", "/portal/roles/new"),
        ("role-assignments", "/portal/role-assignments"),
        ("role-assignment-new", "/portal/role-assignments/new"),
        ("scope-tags", "/portal/scope-tags"),
        ("api-tokens", "/portal/api-tokens"),
        ("audit", "/portal/audit"),
        ("settings", "/portal/settings"),
        ("account", "/portal/account"),
    ]:
        response = await page.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 200, (path, response and response.status)
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        await shot(page, name)
    roles = page.get_by_role("link", name="Help desk operator")
    await page.goto(f"{live_server.url}/portal/roles")
    await roles.first.click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Help desk operator")
    await shot(page, "role-detail")
