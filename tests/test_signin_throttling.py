"""Sign-in throttling through the portal flow (real cookies, many client addresses): growing delays instead of
a lock-out, and known clients (OWASP's device cookies) that keep the owner in while someone else guesses."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.auth import service as auth_module
from corral.auth.service import auth_service
from corral.config import Settings
from corral.kit.security import SecretBox
from corral.kit.time import utcnow
from corral.models import SignInThrottle, User
from corral.rbac.roles import GLOBAL_ADMINISTRATOR
from tests.conftest import BASE_URL, PASSWORD, Admin, Factory, csrf_of, sign_in

KNOWN = "__Host-corral_known_client"
WRONG = "wrong password entirely"
HOME = "192.0.2.50"  # the owner's address, which the attacker shares in some tests (one NAT)


def browser(app: FastAPI, address: str = HOME) -> httpx.AsyncClient:
    """A browser of its own (its own cookie jar) at a client address."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(address, 50000)), base_url=BASE_URL
    )


def botnet(n: int) -> str:
    """The n-th address of an attacker who has plenty (no two attempts share one)."""
    return f"198.18.{n // 250}.{n % 250 + 1}"


async def attempt(app: FastAPI, name: str, password: str = WRONG, *, address: str) -> httpx.Response:
    async with browser(app, address) as fresh:
        return await sign_in(fresh, name, password)


async def attack(app: FastAPI, name: str, times: int, *, start: int = 0) -> list[httpx.Response]:
    """Wrong passwords for ``name``, each from another address of the botnet."""
    return [await attempt(app, name, address=botnet(start + i)) for i in range(times)]


async def sign_out(client: httpx.AsyncClient) -> None:
    page = await client.get("/portal")
    assert page.status_code == 200
    assert (await client.post("/portal/sign-out", data={"csrf_token": csrf_of(page.text)})).status_code == 303


async def become_known(client: httpx.AsyncClient, admin: Admin, password: str = PASSWORD) -> str:
    """Sign in and out on ``client``; it keeps its known-client cookie, which is returned."""
    response = await sign_in(client, admin.email, password)
    assert response.status_code == 303, response.text
    cookie = client.cookies.get(KNOWN)
    assert cookie
    await sign_out(client)
    assert client.cookies.get(KNOWN) == cookie  # signing out does not forget the browser
    return cookie


async def let_delays_pass(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """The waits asked for go by (moved into the past in the database rather than slept)."""
    async with sessionmaker() as session:
        await session.execute(
            update(SignInThrottle)
            .where(SignInThrottle.locked_until.is_not(None))
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
        await session.commit()


async def throttle_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessionmaker() as session:
        return set((await session.scalars(select(SignInThrottle.key))).all())


def statuses(responses: list[httpx.Response]) -> list[int]:
    return [r.status_code for r in responses]


def error_of(response: httpx.Response) -> str:
    match = re.search(r'id="sign-in-error">.*?<p>(.*?)</p>', response.text, re.S)
    assert match, response.text
    return match.group(1)


async def test_an_attacker_from_many_addresses_does_not_stop_the_owner_on_a_known_client(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    async with browser(app, HOME) as laptop:
        assert (await sign_in(laptop, owner.email)).status_code == 303
        await sign_out(laptop)

        guesses = await attack(app, owner.email, 3 * settings.signin_max_failures_per_account)
        assert guesses[-1].status_code == 429 and int(guesses[-1].headers["retry-after"]) > 0
        # The attacker also fills the owner's own address with failures (other accounts, same NAT).
        for i in range(settings.signin_max_failures_per_client):
            assert (await attempt(app, f"guess{i}@example.com", address=HOME)).status_code == 401
        assert (await attempt(app, "guess-again@example.com", address=HOME)).status_code == 429

        # A new client is slowed, even with the right password, from anywhere ...
        for address in (HOME, "203.0.113.99"):
            refused = await attempt(app, owner.email, PASSWORD, address=address)
            assert refused.status_code == 429, address
            assert int(refused.headers["retry-after"]) > 0
        # ... but the owner's browser, known since it signed in, gets in (and gets a fresh cookie).
        before = laptop.cookies.get(KNOWN)
        response = await sign_in(laptop, owner.email)
        assert response.status_code == 303 and response.headers["location"] == "/portal"
        assert laptop.cookies.get(KNOWN) not in (None, before)
        assert (await laptop.get("/portal/audit")).status_code == 200


async def test_from_many_addresses_the_account_admits_its_limit_of_guesses_then_delays(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    limit = settings.signin_max_failures_per_account
    guesses = await attack(app, owner.email, limit + 5)
    assert statuses(guesses) == [401] * limit + [429] * 5


async def test_the_attacker_waits_longer_after_every_further_failure(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    limit = settings.signin_max_failures_per_account
    assert statuses(await attack(app, owner.email, limit)) == [401] * limit
    waits = []
    for n in range(6):
        refused = await attempt(app, owner.email, address=botnet(100 + n))
        assert refused.status_code == 429
        assert "Too many failed sign-in attempts. Try again in" in error_of(refused)
        waits.append(int(refused.headers["retry-after"]))
        await let_delays_pass(sessionmaker)
        # Once the wait is over one more guess is admitted (and fails), which makes the next wait longer.
        assert (await attempt(app, owner.email, address=botnet(200 + n))).status_code == 401
    cap = settings.signin_max_delay_minutes * 60
    expected = [min(cap, settings.signin_first_delay_seconds * 2**n) for n in range(6)]
    assert expected == [60, 120, 240, 480, 900, 900]  # the defaults
    for got, want in zip(waits, expected, strict=True):
        assert want - 10 <= got <= want, (waits, expected)


async def test_a_burst_of_parallel_guesses_gets_no_more_through_than_the_limit(
    app: FastAPI, factory: Factory
) -> None:
    app.state.settings = app.state.settings.model_copy(update={"signin_max_failures_per_account": 3})
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    burst = await asyncio.gather(*(attempt(app, owner.email, address=botnet(n)) for n in range(8)))
    assert sorted(statuses(list(burst))) == [401] * 3 + [429] * 5


async def test_refusals_read_the_same_for_an_account_that_does_not_exist(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    n = settings.signin_max_failures_per_account + 2
    real = await attack(app, owner.email, n)
    made_up = await attack(app, "nobody-at-all@example.com", n, start=100)
    assert statuses(real) == statuses(made_up) == [401] * (n - 2) + [429] * 2
    assert [error_of(r) for r in real] == [error_of(r) for r in made_up]
    for one, other in zip(real[-2:], made_up[-2:], strict=True):
        assert abs(int(one.headers["retry-after"]) - int(other.headers["retry-after"])) <= 10


async def test_one_address_is_slowed_on_an_account_before_the_account_is(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    pair_limit = settings.signin_max_failures_per_account_and_client
    assert pair_limit < settings.signin_max_failures_per_account
    for _ in range(pair_limit):
        assert (await attempt(app, owner.email, address="203.0.113.20")).status_code == 401
    assert (await attempt(app, owner.email, PASSWORD, address="203.0.113.20")).status_code == 429
    # The same account from another address is not delayed yet (fewer than its own limit so far).
    assert (await attempt(app, owner.email, PASSWORD, address="203.0.113.21")).status_code == 303


async def test_counters_start_afresh_after_a_quiet_window(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    address = "203.0.113.30"
    for _ in range(settings.signin_max_failures_per_account_and_client):
        assert (await attempt(app, owner.email, address=address)).status_code == 401
    assert (await attempt(app, owner.email, PASSWORD, address=address)).status_code == 429
    # A window passes after the delay ended, with no attempt: the next failure counts from one again.
    window = timedelta(minutes=settings.signin_window_minutes)
    async with sessionmaker() as session:
        await session.execute(
            update(SignInThrottle).values(
                window_started_at=SignInThrottle.window_started_at - window - window,
                locked_until=utcnow() - window - timedelta(seconds=1),
            )
        )
        await session.commit()
    assert (await attempt(app, owner.email, address=address)).status_code == 401
    async with sessionmaker() as session:
        pair = await session.get(SignInThrottle, f"account-client:{owner.email}|{address}")
    assert pair is not None and pair.failures == 1 and pair.locked_until is None
    assert (await attempt(app, owner.email, PASSWORD, address=address)).status_code == 303


async def test_a_known_clients_failures_count_against_that_client_only(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    async with browser(app, HOME) as laptop:
        await become_known(laptop, owner)
        limit = settings.signin_max_failures_per_known_client
        for _ in range(limit):
            assert (await sign_in(laptop, owner.email, WRONG)).status_code == 401
        refused = await sign_in(laptop, owner.email)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        (key,) = await throttle_keys(sessionmaker)
        assert key.startswith(f"known:{owner.id.hex}:")  # neither the account nor the address counted
        # Another browser at the same address is not held back by the laptop's fumbles.
        assert (await attempt(app, owner.email, PASSWORD, address=HOME)).status_code == 303


async def test_a_known_client_cookie_of_another_account_or_forged_does_not_help(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    other = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    async with browser(app, HOME) as shared:
        other_cookie = await become_known(shared, other)
        limit = settings.signin_max_failures_per_account
        assert statuses(await attack(app, owner.email, limit)) == [401] * limit
        assert (await sign_in(shared, owner.email)).status_code == 429

    version, _user, issued, client_id, mac = other_cookie.split(".")
    forged = [
        ".".join([version, owner.id.hex, issued, client_id, mac]),  # the other account's signature
        ".".join([version, owner.id.hex, issued, client_id, "A" * len(mac)]),
        "garbage",
    ]
    for n, cookie in enumerate(forged):
        async with browser(app, botnet(300 + n)) as attacker:
            attacker.cookies.set(KNOWN, cookie, domain="testserver")
            assert (await sign_in(attacker, owner.email)).status_code == 429, cookie
    # Attempts with made-up cookies add no rows of their own.
    assert not {k for k in await throttle_keys(sessionmaker) if k.startswith("known:")}


async def change_password(client: httpx.AsyncClient, current: str, new: str) -> httpx.Response:
    page = await client.get("/portal/account/password")
    return await client.post(
        "/portal/account/password",
        data={
            "csrf_token": csrf_of(page.text),
            "current_password": current,
            "new_password": new,
            "confirm_password": new,
        },
    )


async def test_a_password_change_forgets_every_known_client_but_the_one_it_was_made_on(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    new_password = "another long passphrase"
    async with browser(app, HOME) as desktop, browser(app, "192.0.2.51") as laptop:
        await become_known(desktop, owner)
        assert (await sign_in(laptop, owner.email)).status_code == 303
        old = laptop.cookies.get(KNOWN)
        changed = await change_password(laptop, PASSWORD, new_password)
        assert changed.status_code == 303
        assert laptop.cookies.get(KNOWN) not in (None, old)
        await sign_out(laptop)

        limit = settings.signin_max_failures_per_account
        assert statuses(await attack(app, owner.email, limit)) == [401] * limit
        assert (await sign_in(desktop, owner.email, new_password)).status_code == 429
        assert (await sign_in(laptop, owner.email, new_password)).status_code == 303


@pytest.mark.parametrize("event", ["password reset", "disable and enable again"])
async def test_a_password_reset_or_disabling_the_account_forgets_its_known_clients(
    app: FastAPI, factory: Factory, settings: Settings, event: str
) -> None:
    boss = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    async with browser(app, HOME) as laptop:
        await become_known(laptop, owner)
        password = PASSWORD
        async with browser(app, "192.0.2.9") as api:
            if event == "password reset":
                reset = await api.post(f"/api/v1/users/{owner.id}/password-reset", headers=boss.headers)
                assert reset.status_code == 200, reset.text
                password = reset.json()["one_time_password"]
            else:
                for enabled in (False, True):
                    patched = await api.patch(
                        f"/api/v1/users/{owner.id}", json={"enabled": enabled}, headers=boss.headers
                    )
                    assert patched.status_code == 200, patched.text
        limit = settings.signin_max_failures_per_account
        assert statuses(await attack(app, owner.email, limit)) == [401] * limit
        assert (await sign_in(laptop, owner.email, password)).status_code == 429


async def test_the_known_client_cookie_is_hardened_and_only_set_after_a_complete_sign_in(
    app: FastAPI, factory: Factory, settings: Settings
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    async with browser(app, HOME) as laptop:
        failed = await sign_in(laptop, owner.email, WRONG)
        assert failed.status_code == 401 and KNOWN not in failed.cookies
        response = await sign_in(laptop, owner.email)
        header = next(h for h in response.headers.get_list("set-cookie") if h.startswith(KNOWN + "="))
        attributes = {part.strip().split("=")[0].lower() for part in header.split(";")[1:]}
        assert {"secure", "httponly", "path", "max-age"} <= attributes and "domain" not in attributes
        assert "SameSite=strict" in header and "Path=/" in header
        assert f"Max-Age={settings.signin_known_client_days * 86400}" in header


async def enable_totp(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, admin: Admin
) -> pyotp.TOTP:
    secret = pyotp.random_base32()
    async with sessionmaker() as session:
        user = await session.get(User, admin.id)
        assert user is not None
        user.totp_secret_encrypted = SecretBox(settings.resolved_secret_key(), "totp").encrypt(
            secret.encode()
        )
        user.totp_enabled_at = utcnow()
        await session.commit()
    return pyotp.TOTP(secret)


async def verify(client: httpx.AsyncClient, location: str, code: str) -> httpx.Response:
    form = await client.get(location)
    return await client.post("/portal/sign-in/verify", data={"csrf_token": csrf_of(form.text), "code": code})


async def test_knowing_the_password_does_not_buy_unthrottled_second_factor_guesses(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    await enable_totp(sessionmaker, settings, owner)
    # The attacker has the password. From one address: the right password admits to the second step but
    # does not wipe the count, so wrong codes run into the same limit as wrong passwords.
    pair_limit = settings.signin_max_failures_per_account_and_client
    async with browser(app, "203.0.113.40") as attacker:
        for _ in range(pair_limit):
            admitted = await sign_in(attacker, owner.email)
            assert admitted.status_code == 303
            assert (await verify(attacker, admitted.headers["location"], "000000")).status_code == 401
        assert (await sign_in(attacker, owner.email)).status_code == 429
    # From many addresses: the account's limit for unknown clients.
    rest = settings.signin_max_failures_per_account - pair_limit
    for n in range(rest):
        async with browser(app, botnet(n)) as attacker:
            admitted = await sign_in(attacker, owner.email)
            assert admitted.status_code == 303
            assert (await verify(attacker, admitted.headers["location"], "000000")).status_code == 401
    assert (await attempt(app, owner.email, PASSWORD, address=botnet(rest))).status_code == 429


async def test_with_a_second_factor_the_owner_on_a_known_client_passes_both_steps_during_an_attack(
    app: FastAPI, factory: Factory, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.admin(GLOBAL_ADMINISTRATOR.name, token=False)
    totp = await enable_totp(sessionmaker, settings, owner)
    step = int(utcnow().timestamp()) // 30
    async with browser(app, HOME) as laptop:
        first = await sign_in(laptop, owner.email)
        assert first.status_code == 303 and KNOWN not in first.cookies  # not before the second factor
        done = await verify(laptop, first.headers["location"], totp.at(step * 30))
        assert done.status_code == 303 and laptop.cookies.get(KNOWN)
        await sign_out(laptop)

        # Wrong codes (the attacker has the password) and wrong passwords from many addresses.
        for n in range(settings.signin_max_failures_per_account // 2):
            async with browser(app, botnet(n)) as attacker:
                admitted = await sign_in(attacker, owner.email)
                assert (await verify(attacker, admitted.headers["location"], "000000")).status_code == 401
        await attack(app, owner.email, settings.signin_max_failures_per_account, start=100)
        assert (await attempt(app, owner.email, PASSWORD, address=HOME)).status_code == 429

        again = await sign_in(laptop, owner.email)
        assert again.status_code == 303 and again.headers["location"].startswith("/portal/sign-in/verify")
        later_step = int(utcnow().timestamp()) // 30 + 1  # a code not used yet
        done = await verify(laptop, again.headers["location"], totp.at(later_step * 30))
        assert done.status_code == 303 and done.headers["location"] == "/portal"


# ------------------------------------------------------------------------------------- the pieces, directly
def test_delays_start_at_the_limit_and_double_up_to_the_cap(settings: Settings) -> None:
    delays = [auth_service.delay_after(settings, failures, 5) for failures in range(1, 12)]
    seconds = [int(d.total_seconds()) if d else None for d in delays]
    assert seconds == [None, None, None, None, 60, 120, 240, 480, 900, 900, 900]
    assert auth_service.delay_after(settings, 10_000, 5) == timedelta(
        minutes=settings.signin_max_delay_minutes
    )


def test_a_known_client_cookie_is_bound_to_its_account_generation_and_lifetime(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = User(id=uuid.uuid4(), user_principal_name="a@example.com", known_clients_generation=0)
    other = User(id=uuid.uuid4(), user_principal_name="b@example.com", known_clients_generation=0)
    cookie = auth_service.known_client_cookie(settings, user)
    client_id = auth_service.known_client_id(settings, user, cookie)
    assert client_id and client_id == cookie.split(".")[3]
    assert auth_service.known_client_id(settings, other, cookie) is None
    assert auth_service.known_client_id(settings, user, cookie[:-2] + "xx") is None
    assert auth_service.known_client_id(settings, user, cookie + "." + "x" * 300) is None
    other_key = settings.model_copy(update={"secret_key": "another-secret-key-" + "q" * 40})
    assert auth_service.known_client_id(other_key, user, cookie) is None

    later = utcnow() + timedelta(days=settings.signin_known_client_days, seconds=1)
    monkeypatch.setattr(auth_module, "utcnow", lambda: later)
    assert auth_service.known_client_id(settings, user, cookie) is None  # expired
    monkeypatch.undo()

    auth_service.forget_known_clients(user)
    assert auth_service.known_client_id(settings, user, cookie) is None
