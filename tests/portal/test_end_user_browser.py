"""An end user (no role) signs in through the identity provider in a real browser and lands on My devices:
their own devices, self-service navigation only."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from playwright.async_api import Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.kit.time import utcnow
from corral.models import ComplianceState, Device, Ownership, Platform, User
from tests.conftest import Factory
from tests.peers.idp_server import run_idp
from tests.portal.conftest import LiveServer, shot


async def _device(
    sessionmaker: async_sessionmaker[AsyncSession], user_id: uuid.UUID | None, name: str, **values: object
) -> None:
    async with sessionmaker() as session:
        session.add(
            Device(
                id=uuid.uuid4(),
                name=name,
                serial_number=f"SN-{uuid.uuid4().hex[:8].upper()}",
                user_id=user_id,
                enrolled_at=utcnow(),
                **values,
            )
        )
        await session.commit()


async def test_end_user_signs_in_and_sees_my_devices(
    page: Page,
    sso_live_server: LiveServer,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    tmp_path: Path,
) -> None:
    base = sso_live_server.url
    client = {
        "client_id": "corral-browser",
        "client_secret": "corral-browser-secret",
        "redirect_uris": [f"{base}/auth/oidc/callback"],
    }
    admin = await factory.admin("Global administrator")
    with run_idp(tmp_path / "idp", [client]) as idp:
        idp.set_user("megan", email="megan.bowen@contoso.example", name="Megan Bowen", groups=["staff"])
        async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:  # noqa: S501 - test CA
            created = await http.post(
                "/api/v1/identity-connections",
                json={
                    "name": "Contoso ID",
                    "issuer": idp.issuer,
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                    "user_sign_in": True,
                },
                headers={"Authorization": f"Bearer {admin.token}"},
            )
            assert created.status_code == 201, created.text

        # First sign-in creates the account; an administrator then enrolls devices for her.
        await page.goto(f"{base}/portal/sign-in")
        await page.get_by_role("link", name="Sign in with Contoso ID").click()
        await page.locator("input[name=login]").fill("megan")
        await page.locator("input[name=password]").fill("anything")
        await page.locator("button[type=submit]").click()
        await page.get_by_role("button", name="Continue").click()
        await page.wait_for_url(f"{base}/portal/my-devices")
        await expect(page.get_by_text("No device is enrolled for you yet")).to_be_visible()

        async with sessionmaker() as session:
            megan = await session.scalar(
                select(User.id).where(User.user_principal_name == "megan.bowen@contoso.example")
            )
        assert megan is not None
        common = {"os_version": "10.0.22631", "model": "Surface Laptop 5", "manufacturer": "Microsoft"}
        await _device(
            sessionmaker,
            megan,
            "MEGAN-LAPTOP",
            platform=Platform.windows,
            ownership=Ownership.company,
            compliance_state=ComplianceState.compliant,
            last_checkin_at=utcnow(),
            **common,
        )
        await _device(
            sessionmaker,
            megan,
            "Megan's iPhone",
            platform=Platform.ios,
            ownership=Ownership.personal,
            compliance_state=ComplianceState.noncompliant,
            os_version="17.5",
            model="iPhone 15",
            manufacturer="Apple",
        )
        await _device(
            sessionmaker,
            await factory.user(),
            "SOMEONE-ELSES-PC",
            platform=Platform.windows,
            ownership=Ownership.company,
        )

        await page.reload()
        table = page.get_by_role("table")
        await expect(table.get_by_role("row")).to_have_count(3)  # the header and her two devices
        await expect(table.get_by_text("MEGAN-LAPTOP")).to_be_visible()
        await expect(table.get_by_text("Megan's iPhone")).to_be_visible()
        await expect(page.get_by_text("SOMEONE-ELSES-PC")).to_have_count(0)
        nav = page.get_by_role("navigation", name="Main")
        await expect(nav.get_by_role("link")).to_have_count(1)
        await expect(nav.get_by_role("link", name="My devices")).to_be_visible()
        await shot(page, "end-user-my-devices")

        await page.goto(f"{base}/portal/devices")
        await expect(page.get_by_text("Error 403")).to_be_visible()
        await expect(page.get_by_role("link", name="Go to My devices")).to_be_visible()
        await shot(page, "end-user-admin-page-refused")
