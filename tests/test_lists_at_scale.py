"""The big lists stay cheap as they grow (bench/admin_lists.py measures them at a million rows): totals are
counted up to a threshold and estimated beyond it (and say so), each sort key and search can read an index,
searches still reach devices through their users, and CSV exports stream in batches."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.devices import repository as devices_repository
from corral.devices.schemas import DeviceFilter
from corral.kit import pagination
from corral.rbac.principal import EVERYWHERE
from corral.users import repository as users_repository
from corral.users.schemas import UserFilter
from tests.conftest import Factory, new_client, portal_csrf

Maker = async_sessionmaker[AsyncSession]


@pytest.fixture
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A second client for the portal session (cookies), apart from the API client."""
    async with new_client(app) as c:
        yield c


async def add_devices(maker: Maker, names: list[str], **columns: Any) -> list[uuid.UUID]:
    """Devices straight into the table (the lists only read them); ``columns`` apply to every one."""
    ids = [uuid.uuid4() for _ in names]
    values = {
        "platform": "windows",
        "ownership": "company",
        "management_state": "managed",
        "compliance_state": "compliant",
        "user_id": None,
        "primary_user": None,
        "last_checkin_at": None,
        **columns,
    }
    async with maker() as session:
        for device_id, name in zip(ids, names, strict=True):
            await session.execute(
                text(
                    "INSERT INTO devices (id, name, serial_number, platform, ownership, management_state, "
                    "compliance_state, user_id, primary_user, enrolled_at, last_checkin_at, inventory) "
                    "VALUES (:id, :name, :serial, :platform, :ownership, :management_state, "
                    ":compliance_state, :user_id, :primary_user, now(), :last_checkin_at, '{}')"
                ),
                {"id": device_id, "name": name, "serial": f"SN-{name}", **values},
            )
        await session.commit()
    return ids


# ------------------------------------------------------------------------------------------------ totals
async def test_a_total_is_counted_up_to_the_threshold_and_estimated_beyond_and_says_which(
    client: httpx.AsyncClient,
    browser: httpx.AsyncClient,
    factory: Factory,
    sessionmaker: Maker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pagination, "COUNT_EXACTLY_UP_TO", 3)
    admin = await factory.admin("Global administrator")
    await add_devices(sessionmaker, [f"pc-{i}" for i in range(5)])
    await add_devices(sessionmaker, ["phone-0", "phone-1"], platform="ios")
    async with sessionmaker() as session:
        await session.execute(text("ANALYZE devices"))
        await session.commit()

    # More than the threshold, and more than a page: the planner's estimate, said to be one.
    every = (await client.get("/api/v1/devices", params={"limit": 2}, headers=admin.headers)).json()
    assert (every["total"], every["total_exact"]) == (7, False)  # ANALYZE made the estimate right
    # Within the threshold: counted.
    phones = await client.get(
        "/api/v1/devices", params={"platform": "ios", "limit": 1}, headers=admin.headers
    )
    assert (phones.json()["total"], phones.json()["total_exact"]) == (2, True)
    # A first page that is also the last is its own total, whatever the threshold.
    whole = (await client.get("/api/v1/devices", headers=admin.headers)).json()
    assert (whole["total"], whole["total_exact"], len(whole["items"])) == (7, True, 7)
    users = (await client.get("/api/v1/users", headers=admin.headers)).json()
    assert (users["total"], users["total_exact"]) == (1, True)  # the administrator alone

    await portal_csrf(browser, admin.email)
    listed = await browser.get("/portal/devices", params={"limit": 2})
    title = "More than 3 match: the number is the database's estimate"
    assert f'(<span title="{title}">about 7</span>)' in listed.text
    filtered = await browser.get("/portal/devices", params={"platform": "ios", "limit": 1})
    assert '<span class="muted">(2 matching)</span>' in filtered.text


# ------------------------------------------------------------------------------------------------ search
async def test_a_device_is_found_by_its_users_name_sign_in_name_or_email(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Maker
) -> None:
    admin = await factory.admin("Global administrator")
    ada = await factory.user(
        "ada.lovelace@example.com", display_name="Ada Lovelace", email="ada@mail.example"
    )
    grace = await factory.user("grace@example.com", display_name="Grace Hopper")
    await add_devices(sessionmaker, ["DESKTOP-ADA"], user_id=ada)
    await add_devices(sessionmaker, ["DESKTOP-GRACE"], user_id=grace)
    await add_devices(sessionmaker, ["DESKTOP-NOBODY"])

    async def names(search: str) -> list[str]:
        page = await client.get("/api/v1/devices", params={"search": search}, headers=admin.headers)
        assert page.status_code == 200
        return sorted(d["name"] for d in page.json()["items"])

    assert await names("lovelace") == ["DESKTOP-ADA"]  # display name
    assert await names("ADA.LOVE") == ["DESKTOP-ADA"]  # sign-in name, any case
    assert await names("ada@mail") == ["DESKTOP-ADA"]  # e-mail
    assert await names("hopper") == ["DESKTOP-GRACE"]
    assert await names("desktop-") == ["DESKTOP-ADA", "DESKTOP-GRACE", "DESKTOP-NOBODY"]
    assert await names("%") == []  # a wildcard is a character like any other
    assert await names("nobody at all") == []


# ------------------------------------------------------------------------------------------------ sort keys
async def test_devices_never_checked_in_sort_first_and_pages_cross_them(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Maker
) -> None:
    admin = await factory.admin("Global administrator")
    await add_devices(sessionmaker, ["never-a", "never-b"])
    await add_devices(sessionmaker, ["seen-old"], last_checkin_at=datetime(2026, 1, 1, tzinfo=UTC))
    await add_devices(sessionmaker, ["seen-new"], last_checkin_at=datetime(2026, 12, 1, tzinfo=UTC))
    seen: list[str] = []
    params: dict[str, Any] = {"sort": "last_checkin_at", "limit": 1}
    for _ in range(6):
        page = (await client.get("/api/v1/devices", params=params, headers=admin.headers)).json()
        seen.extend(d["name"] for d in page["items"])
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen[:2]) == ["never-a", "never-b"] and seen[2:] == ["seen-old", "seen-new"]


def _plan(rows: list[Any]) -> str:
    return "\n".join(str(r[0]) for r in rows)


def _device_page(sort: str) -> Any:
    return devices_repository.page_statements(DeviceFilter(sort=sort), EVERYWHERE, 30)[1]


def _user_page(sort: str) -> Any:
    return users_repository.page_statements(UserFilter(sort=sort), EVERYWHERE)[1]


@pytest.mark.parametrize(
    "page,sort,index",
    [
        (_device_page, "name", "ix_devices_name_lower_id"),
        (_device_page, "-last_checkin_at", "ix_devices_last_checkin_sort"),
        (_device_page, "enrolled_at", "ix_devices_enrolled_at_id"),
        (_user_page, "display_name", "ix_users_display_name_lower_id"),
        (_user_page, "-last_sign_in_at", "ix_users_last_sign_in_sort"),
        (_user_page, "created_at", "ix_users_created_at_id"),
    ],
)
async def test_each_sort_key_walks_its_index(sessionmaker: Maker, page: Any, sort: str, index: str) -> None:
    """The page statement's sort key is the very expression of its index, also in the generic plan a
    prepared statement comes to (a bound value in the key, say the epoch of never-checked-in devices, is a
    parameter there, which no index expression matches: PostgreSQL would sort every row). Prepared as the
    server's driver prepares it, planned generically, with sorting and scanning every row made prohibitive,
    the plan must read the index."""
    compiled = page(sort).compile(dialect=postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
    params = compiled.construct_params()
    values = ", ".join(_sql_literal(params[name]) for name in compiled.positiontup or [])
    async with sessionmaker() as session:
        for setting in ("plan_cache_mode = force_generic_plan", "enable_sort = off", "enable_seqscan = off"):
            await session.execute(text(f"SET LOCAL {setting}"))
        await session.execute(text(f"PREPARE page_plan AS {compiled}"))
        plan = _plan((await session.execute(text(f"EXPLAIN EXECUTE page_plan({values})"))).all())
    assert index in plan, plan


def _sql_literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + (value.isoformat() if isinstance(value, datetime) else str(value)).replace("'", "''") + "'"


async def test_a_device_search_reads_the_trigram_indexes(sessionmaker: Maker) -> None:
    base, _rows = devices_repository.page_statements(DeviceFilter(search="desk"), EVERYWHERE, 30)
    compiled = base.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    async with sessionmaker() as session:
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = _plan((await session.execute(text(f"EXPLAIN {compiled}"))).all())
    for index in ("ix_devices_name_trgm", "ix_devices_serial_number_trgm", "ix_devices_primary_user_trgm"):
        assert index in plan, plan
    assert "ix_users_user_principal_name_trgm" in plan and "ix_devices_user_id" in plan, plan


# ------------------------------------------------------------------------------------------------ exports
async def test_the_device_export_streams_every_match_in_batches(
    client: httpx.AsyncClient, factory: Factory, sessionmaker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices_repository, "EXPORT_BATCH", 2)
    admin = await factory.admin("Global administrator")
    names = [f"host-{i:02}" for i in range(7)]
    await add_devices(sessionmaker, list(reversed(names)))
    await add_devices(sessionmaker, ["phone"], platform="ios")
    response = await client.get(
        "/api/v1/devices/export.csv", params={"platform": "windows"}, headers=admin.headers
    )
    assert response.status_code == 200 and "content-length" not in response.headers  # streamed
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:2] == ["id", "name"]
    assert [r[1] for r in rows[1:]] == names  # every match, in the list's order, nothing else
    # Read from one cursor a batch at a time (this test client gathers the body, so count the batches).
    async with sessionmaker() as session:
        batches = devices_repository.export(session, DeviceFilter(platform="windows"), EVERYWHERE, 30)
        assert [len(batch) async for batch in batches] == [2, 2, 2, 1]


async def test_the_user_export_streams_with_licences_for_those_who_may_see_them(
    client: httpx.AsyncClient, factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(users_repository, "EXPORT_BATCH", 1)
    admin = await factory.admin("Global administrator")
    helpdesk = await factory.admin("Help desk operator")
    for i in range(3):
        await factory.user(f"person-{i}@example.com", licence=True)
    full = await client.get("/api/v1/users/export.csv", params={"search": "person-"}, headers=admin.headers)
    rows = list(csv.reader(io.StringIO(full.text)))
    assert rows[0][-1] == "licences" and len(rows) == 4 and all(r[-1].startswith("T-") for r in rows[1:])
    # The help desk reads users but never licences.
    limited = await client.get(
        "/api/v1/users/export.csv", params={"search": "person-"}, headers=helpdesk.headers
    )
    assert limited.status_code == 200
    rows = list(csv.reader(io.StringIO(limited.text)))
    assert "licences" not in rows[0] and len(rows) == 4
    assert not any(cell.startswith("T-") for row in rows for cell in row)
