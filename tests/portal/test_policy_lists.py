"""The lists of compliance policies and configuration profiles filter by name, platform and scope tag, and a
profile's editor works without script: Find narrows the catalog and keeps what was typed."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Factory, csrf_of, sign_in


async def test_lists_filter_by_scope_tag_and_platform(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    paris = (await client.post("/api/v1/scope-tags", json={"name": "Paris"}, headers=admin.headers)).json()
    bodies: list[tuple[str, dict[str, Any]]] = [
        (
            "compliance-policies",
            {"name": "Paris firewall", "platform": "linux", "settings": {"firewall.required": True}},
        ),
        (
            "compliance-policies",
            {"name": "Everyone firewall", "platform": "windows", "settings": {"firewall.required": True}},
        ),
        (
            "configuration-profiles",
            {"name": "Paris banner", "platform": "linux", "settings": {"login_banner.text": "Bonjour"}},
        ),
        (
            "configuration-profiles",
            {"name": "Everyone banner", "platform": "windows", "settings": {"login_banner.text": "Hi"}},
        ),
    ]
    for kind, body in bodies:
        if body["name"].startswith("Paris"):
            body["scope_tag_ids"] = [paris["id"]]
        made = await client.post(f"/api/v1/{kind}", json=body, headers=admin.headers)
        assert made.status_code == 201, made.text
    await sign_in(client, admin.email)
    for kind, noun in (("compliance-policies", "firewall"), ("configuration-profiles", "banner")):
        tagged = await client.get(f"/portal/{kind}?scope_tag=Paris")
        assert f"Paris {noun}" in tagged.text and f"Everyone {noun}" not in tagged.text
        windows = await client.get(f"/portal/{kind}?platform=windows")
        assert f"Everyone {noun}" in windows.text and f"Paris {noun}" not in windows.text
        everything = await client.get(f"/portal/{kind}")
        assert f"Everyone {noun}" in everything.text and f"Paris {noun}" in everything.text


async def test_the_profile_editor_finds_settings_without_script(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    admin = await factory.admin()
    await sign_in(client, admin.email)
    page = await client.get("/portal/configuration-profiles/new?platform=linux")
    assert page.status_code == 200
    form = {
        "csrf_token": csrf_of(page.text),
        "platform": "linux",
        "name": "Servers",
        "s.login_banner.text": "Authorised use only",
        "search": "ssh",
        "find": "1",
    }
    found = await client.post("/portal/configuration-profiles/new", data=form)
    assert found.status_code == 200
    # The SSH settings are shown, the others hidden but still in the form with what was typed.
    assert 'data-name="ssh root login' in found.text
    assert 'data-name="login banner' in found.text and "Authorised use only" in found.text
    hidden = found.text.split('data-name="login banner')[1].split(">")[0]
    assert "hidden" in hidden
    # A value outside the catalog's bounds is refused by the server too, naming the setting.
    form.update({"find": "", "s.password.min_length": "2", "step": "create"})
    del form["find"]
    refused = await client.post("/portal/configuration-profiles/new", data=form)
    assert refused.status_code == 422
    assert "settings.password.min_length: must be from 4 to 64" in refused.text


async def test_custom_payloads_in_the_profile_editor(client: httpx.AsyncClient, factory: Factory) -> None:
    admin = await factory.admin()
    await sign_in(client, admin.email)
    for platform, label in (
        ("macos", "Custom configuration profile (.mobileconfig)"),
        ("windows", "Custom OMA-URI settings"),
        ("linux", "Custom JSON for the agent"),
    ):
        page = await client.get(f"/portal/configuration-profiles/new?platform={platform}")
        assert page.status_code == 200 and label in page.text, platform
    page = await client.get("/portal/configuration-profiles/new?platform=windows")
    form = {
        "csrf_token": csrf_of(page.text),
        "platform": "windows",
        "name": "Camera off",
        "s.custom.oma_uri.0.__from": "",
        "s.custom.oma_uri.0.name": "Camera",
        "s.custom.oma_uri.0.oma_uri": "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera",
        "s.custom.oma_uri.0.data_type": "integer",
        "s.custom.oma_uri.0.value": "zero",
        "step": "create",
    }
    refused = await client.post("/portal/configuration-profiles/new", data=form)
    assert refused.status_code == 422
    assert "0.value: must be a whole number (data type integer)" in refused.text
    form["s.custom.oma_uri.0.value"] = "0"
    created = await client.post("/portal/configuration-profiles/new", data=form)
    assert created.status_code == 303, created.text
    (profile,) = (await client.get("/api/v1/configuration-profiles", headers=admin.headers)).json()
    assert profile["settings"]["custom.oma_uri"] == [
        {
            "name": "Camera",
            "oma_uri": "./Device/Vendor/MSFT/Policy/Config/Camera/AllowCamera",
            "data_type": "integer",
            "value": "0",
        }
    ]
    detail = await client.get(f"/portal/configuration-profiles/{profile['id']}")
    assert "AllowCamera" in detail.text


async def test_a_signed_or_binary_mobileconfig_is_reviewed_by_its_payloads(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    import base64
    import plistlib

    from tests.profiles.test_custom_payloads import mobileconfig

    admin = await factory.admin()
    await sign_in(client, admin.email)
    page = await client.get("/portal/configuration-profiles/new?platform=ios")
    binary = base64.b64encode(plistlib.dumps(mobileconfig(), fmt=plistlib.FMT_BINARY)).decode()
    form = {
        "csrf_token": csrf_of(page.text),
        "platform": "ios",
        "name": "Restrictions",
        "s.custom.mobileconfig": binary,
    }
    review = await client.post("/portal/configuration-profiles/new", data=form)
    assert review.status_code == 200 and "data-review" in review.text
    assert "a profile with 1 payload(s): com.apple.applicationaccess" in review.text


async def test_a_mobileconfig_file_can_be_chosen_instead_of_pasted(
    client: httpx.AsyncClient, factory: Factory
) -> None:
    import plistlib

    from tests.profiles.test_custom_payloads import mobileconfig, sign

    admin = await factory.admin()
    await sign_in(client, admin.email)
    page = await client.get("/portal/configuration-profiles/new?platform=macos")
    assert 'enctype="multipart/form-data"' in page.text and 'type="file"' in page.text
    content = plistlib.dumps(mobileconfig())
    for name, data in (("plain", content), ("signed", sign(content))):
        created = await client.post(
            "/portal/configuration-profiles/new",
            data={"csrf_token": csrf_of(page.text), "platform": "macos", "name": name, "step": "create"},
            files={
                "s.custom.mobileconfig.file": (
                    f"{name}.mobileconfig",
                    data,
                    "application/x-apple-aspen-config",
                )
            },
        )
        assert created.status_code == 303, created.text
    profiles = (await client.get("/api/v1/configuration-profiles", headers=admin.headers)).json()
    stored = {p["name"]: plistlib.loads(p["settings"]["custom.mobileconfig"].encode()) for p in profiles}
    assert stored["plain"] == stored["signed"] == plistlib.loads(content)
    too_big = plistlib.dumps(mobileconfig(PayloadDescription="x" * 210_000))
    refused = await client.post(
        "/portal/configuration-profiles/new",
        data={"csrf_token": csrf_of(page.text), "platform": "macos", "name": "big", "step": "create"},
        files={"s.custom.mobileconfig.file": ("big.mobileconfig", too_big, "application/xml")},
    )
    assert refused.status_code in (413, 422)
