"""Device requests with a body are JSON, and say so: the signature covers the bytes but not their declared
type, so a signed check-in sent as text or a form is refused with 415 before anything is looked at."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.models import Device, EnrollmentTokenUse
from tests.conftest import Factory
from tests.devices.device import TestDevice, csr_for, inventory
from tests.devices.test_enrollment_and_checkin import count, enrolled, make_token

REFUSED = [
    "text/plain",
    "text/plain; charset=utf-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonp",
    "application/json-seq",
    "text/json",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    None,  # no Content-Type at all
]
ACCEPTED = [
    "application/json",
    "application/json; charset=utf-8",
    'Application/JSON;charset="UTF-8"',
    "application/json ; charset=utf8",
]


async def signed(
    client: httpx.AsyncClient, device: TestDevice, path: str, payload: Any, content_type: str | None
) -> httpx.Response:
    """A correctly signed request whose Content-Type is then set to ``content_type`` (not a signed
    component, so the signature stays valid)."""
    body = json.dumps(payload).encode()
    headers = device.signed_headers("POST", path, body)
    del headers["content-type"]
    if content_type is not None:
        headers["content-type"] = content_type
    return await client.post(path, content=body, headers=headers)


@pytest.mark.parametrize("content_type", REFUSED, ids=str)
async def test_a_signed_checkin_that_is_not_declared_json_is_a_415_and_changes_nothing(
    client: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: async_sessionmaker[AsyncSession],
    content_type: str | None,
) -> None:
    device = await enrolled(client, await factory.admin())
    payload = {"inventory": inventory(primary_user="refused")}
    response = await signed(client, device, "/device/v1/checkin", payload, content_type)
    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "application/json" in response.json()["detail"]
    assert response.headers["accept-post"] == "application/json"
    async with sessionmaker() as session:
        row = await session.scalar(select(Device).where(Device.serial_number == device.serial))
    assert row is not None and row.inventory == {} and row.last_checkin_at is None
    # The same bytes, declared as JSON, are taken.
    accepted = await signed(client, device, "/device/v1/checkin", payload, "application/json")
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("content_type", ACCEPTED)
async def test_json_with_a_utf8_charset_is_accepted(
    client: httpx.AsyncClient, factory: Factory, content_type: str
) -> None:
    device = await enrolled(client, await factory.admin())
    response = await signed(client, device, "/device/v1/checkin", {}, content_type)
    assert response.status_code == 200, response.text


async def test_enrollment_and_renewal_bodies_must_be_declared_json(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin = await factory.admin()
    token = await make_token(client, admin)
    device = TestDevice(client)
    body = json.dumps(device.enroll_body(token)).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await client.post(
            "/device/v1/enroll", content=body, headers={"content-type": content_type}
        )
        assert response.status_code == 415, response.text
    assert await count(sessionmaker, Device) == 0
    assert await count(sessionmaker, EnrollmentTokenUse) == 0
    assert (await device.enroll(token)).status_code == 201
    renewal = await signed(client, device, "/device/v1/renew", {"csr": csr_for(device.key)}, "text/plain")
    assert renewal.status_code == 415, renewal.text
