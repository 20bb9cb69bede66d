"""The Apple MDM push certificate in a real browser: from Settings, create the request, download the CSR,
upload the certificate issued for it (a wrong one first, refused on the page), then see its topic and an
expiry warning."""

from __future__ import annotations

import uuid

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from playwright.async_api import Page, expect

from tests.apple.test_push_certificate import apple_issues
from tests.conftest import Factory
from tests.portal.conftest import LiveServer, browser_sign_in, shot


async def test_request_download_upload_and_see_the_topic_and_its_expiry(
    page: Page, live_server: LiveServer, factory: Factory
) -> None:
    base = live_server.url
    admin = await factory.admin("Global administrator", email="pat@example.com")
    await browser_sign_in(page, base, admin.email)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Settings").click()
    await page.get_by_role("link", name="Manage the push certificate").click()
    await expect(page.locator("#no-certificate")).to_be_visible()

    await page.get_by_role("button", name="Create a certificate request").click()
    await expect(page.get_by_role("status")).to_contain_text("Certificate request created")
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download the CSR").click()
    download = await download_info.value
    csr_pem = (await download.path()).read_text()
    assert csr_pem.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    async with httpx.AsyncClient(base_url=base, verify=False) as http:  # noqa: S501 - test CA
        api = (await http.get("/api/v1/apple/push-certificate", headers=admin.headers)).json()
    assert api["pending_request"]["csr_pem"] == csr_pem

    # A certificate Apple issued for another request is refused on the page; nothing is saved.
    other = apple_issues(
        csr_pem,
        "com.apple.mgmt.External.x",
        public_key=rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
    )
    form = page.get_by_role("region", name="2. Upload Apple\u2019s certificate")
    await form.get_by_label("Certificate (PEM)").fill(other)
    await form.get_by_role("button", name="Save the certificate").click()
    await expect(page.get_by_role("alert")).to_contain_text("not issued for Corral's current request")
    await expect(page.locator("#no-certificate")).to_be_visible()

    topic = f"com.apple.mgmt.External.{uuid.uuid4()}"
    form = page.get_by_role("region", name="2. Upload Apple\u2019s certificate")
    await form.get_by_label("Certificate (PEM)").fill(apple_issues(csr_pem, topic, days=20))
    await form.get_by_label("Apple Account used in Apple\u2019s portal").fill("mdm@example.com")
    await form.get_by_role("button", name="Save the certificate").click()
    await expect(page.get_by_role("status")).to_contain_text(f"topic {topic}")
    await expect(page.locator("#push-topic")).to_have_text(topic)
    await expect(page.locator(".alert--warning")).to_contain_text("Expires in 18 days")
    await expect(page.get_by_role("region", name="2. Upload Apple\u2019s certificate")).to_have_count(0)
    await shot(page, "apple-push-certificate")
