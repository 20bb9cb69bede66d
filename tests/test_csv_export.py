"""CSV exports cannot carry formulas (OWASP CSV injection): a cell a spreadsheet would read as a formula,
also behind leading blanks or line breaks, is prefixed with ``'``; every CSV export goes through it."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.config import Settings
from corral.kit.csvexport import safe_cell, to_csv
from corral.kit.routes import api_routes
from corral.main import create_app
from tests.conftest import Factory, new_client, portal_csrf
from tests.devices.device import TestDevice, inventory

FORMULA = ("=", "+", "-", "@")


def dangerous(cell: str) -> bool:
    """What a spreadsheet would run: a formula character first, or after blanks and line breaks."""
    return cell.startswith(("\t", "\r")) or cell.lstrip().startswith(FORMULA)


@pytest.mark.parametrize(
    "value",
    [
        "=1+1",
        "+1",
        "-1",
        "@SUM(A1)",
        "\t=1+1",
        "\tplain",  # a leading tab or carriage return, whatever follows (OWASP)
        "\rplain",
        " =1+1",
        "   +cmd|' /C calc'!A0",
        "\t\t-2+3",
        " \t@SUM(1)",
        '\n=HYPERLINK("https://evil.example")',
        "\r\n+1",
        "\n\n @A1",
        "\u00a0=1+1",  # a no-break space is a blank too
    ],
)
def test_formula_cells_are_neutralised(value: str) -> None:
    assert safe_cell(value) == "'" + value
    assert not dangerous(safe_cell(value))


@pytest.mark.parametrize("value", ["plain", " plain", "a=b", "user@example.com", "", "1.5", "\nline"])
def test_other_cells_are_kept(value: str) -> None:
    assert safe_cell(value) == value


def test_to_csv_neutralises_every_cell_but_not_the_header() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(["name", "note"], [[" =1+1", None], ["ok", "\r\n@A1"]]))))
    assert rows == [["name", "note"], ["' =1+1", ""], ["ok", "'\r\n@A1"]]


# ---------------------------------------------------------------------------------------- every export route
_TABLE_APP = create_app(
    Settings(
        secret_key="route-table-secret-" + "r" * 40,
        base_url="https://testserver",
        database_url="postgresql://unused/unused",
        data_dir=Path("/nonexistent-corral-data-dir"),
    )
)
CSV_PATHS = sorted(info.path for info in api_routes(_TABLE_APP) if info.path.endswith(".csv"))
DEVICE_NAME = " \t=cmd|' /C calc'!A0"
DISPLAY_NAME = "\r\n+SUM(1)"


def test_the_csv_exports_are_found_in_the_route_table() -> None:
    assert {
        "/api/v1/audit-events/export.csv",
        "/api/v1/devices/export.csv",
        "/api/v1/users/export.csv",
        "/portal/audit/export.csv",
        "/portal/devices/export.csv",
        "/portal/users/export.csv",
    } <= set(CSV_PATHS)


async def test_every_csv_export_neutralises_formulas_behind_blanks(
    app: FastAPI,
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    admin = await factory.admin()
    created = await client.post(
        "/api/v1/enrollment-tokens",
        json={"name": "Laptops", "platforms": ["linux"], "ownership": "company"},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    # Device names come from devices; Corral trims their blanks (kit/text.py), the formula stays.
    device = TestDevice(client, name=DEVICE_NAME)
    assert (await device.enroll(created.json()["token"])).status_code == 201
    # A compliance policy reaching it, so that the policy's device report lists the device.
    policy = await client.post(
        "/api/v1/compliance-policies",
        json={"name": "Firewall", "platform": "linux", "settings": {"firewall.required": True}},
        headers=admin.headers,
    )
    assert policy.status_code == 201, policy.text
    assigned = await client.put(
        f"/api/v1/compliance-policies/{policy.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    # And a configuration profile reaching it, for the profile's device report (the device is pending).
    profile = await client.post(
        "/api/v1/configuration-profiles",
        json={"name": "Banner", "platform": "linux", "settings": {"login_banner.text": "Hello"}},
        headers=admin.headers,
    )
    assert profile.status_code == 201, profile.text
    assigned = await client.put(
        f"/api/v1/configuration-profiles/{profile.json()['id']}/assignments",
        json={"assignments": [{"target": "all_devices"}]},
        headers=admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    assert (await device.checkin({"inventory": inventory()})).status_code == 200
    user_id = await factory.user()
    async with sessionmaker() as session:  # as a directory could deliver it (SCIM, OIDC claims)
        await session.execute(
            text("UPDATE users SET display_name = :name WHERE id = :id"),
            {"name": DISPLAY_NAME, "id": user_id},
        )
        await session.commit()

    async with new_client(app) as browser:
        await portal_csrf(browser, admin.email)
        for template in CSV_PATHS:
            path = template.replace("{policy_id}", policy.json()["id"]).replace(
                "{profile_id}", profile.json()["id"]
            )
            http, headers = (client, admin.headers) if path.startswith("/api/") else (browser, {})
            response = await http.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"].startswith("text/csv"), path
            cells = [cell for row in list(csv.reader(io.StringIO(response.text)))[1:] for cell in row]
            assert not [c for c in cells if dangerous(c)], path
            seeded = {"'" + DEVICE_NAME.strip(), "'" + DISPLAY_NAME} & set(cells)
            assert seeded, f"{path}: the seeded values are not in the export"
