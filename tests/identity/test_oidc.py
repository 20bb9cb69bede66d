"""Single sign-on with OpenID Connect against a real, OpenID-certified provider (npm oidc-provider), over
real HTTP: the connection API, the sign-in flow and the ways it must fail."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.identity import oidc
from corral.models import (
    Group,
    GroupSource,
    IdentityConnection,
    RoleAssignment,
    User,
    UserIdentity,
    role_assignment_member_groups,
)
from corral.rbac.roles import GLOBAL_ADMINISTRATOR, HELP_DESK_OPERATOR
from tests.conftest import Factory, audit_rows
from tests.identity.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    OTHER_ID,
    REDIRECT_URI,
    account,
    callback_path,
    session_cookie_set,
    sign_in_at_provider,
)
from tests.peers.idp_server import Idp

SCOPES = "openid profile email groups"


async def connect(client: httpx.AsyncClient, factory: Factory, idp: Idp, **extra: Any) -> dict[str, Any]:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    body = {
        "name": f"Test IdP {uuid.uuid4().hex[:6]}",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": SCOPES,
        **extra,
    }
    response = await client.post("/api/v1/identity-connections", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def start(client: httpx.AsyncClient, connection_id: str) -> str:
    response = await client.get(f"/portal/sign-in/oidc/{connection_id}")
    assert response.status_code == 303, response.text
    return response.headers["location"]


async def sso(client: httpx.AsyncClient, connection_id: str, login: str) -> httpx.Response:
    back = await sign_in_at_provider(await start(client, connection_id), login)
    return await client.get(callback_path(back))


async def role_for_group(
    sessionmaker: async_sessionmaker[AsyncSession], connection_id: str, claim: str, role_id: uuid.UUID
) -> None:
    """What an administrator does once the provider's group exists in Corral: give it a role."""
    async with sessionmaker() as session:
        group_id = await session.scalar(
            select(Group.id).where(
                Group.connection_id == uuid.UUID(connection_id), Group.external_id == claim
            )
        )
        if group_id is None:
            group_id = uuid.uuid4()
            session.add(
                Group(
                    id=group_id,
                    display_name=claim,
                    source=GroupSource.oidc,
                    external_id=claim,
                    connection_id=uuid.UUID(connection_id),
                )
            )
        assignment = RoleAssignment(
            id=uuid.uuid4(), name=f"Via {claim} {uuid.uuid4().hex[:4]}", role_id=role_id
        )
        session.add(assignment)
        await session.flush()
        await session.execute(
            insert(role_assignment_member_groups).values(role_assignment_id=assignment.id, group_id=group_id)
        )
        await session.commit()


async def me(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/v1/me")
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


# ------------------------------------------------------------------------------------------------ the API
async def test_connection_secret_is_encrypted_never_returned_and_audited_redacted(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    created = await connect(client, factory, idp)
    assert created["client_secret_set"] is True
    assert "client_secret" not in created
    assert created["redirect_uri"] == REDIRECT_URI
    async with sessionmaker() as session:
        row = await session.get(IdentityConnection, uuid.UUID(created["id"]))
        assert row is not None and row.client_secret_encrypted
        assert CLIENT_SECRET not in row.client_secret_encrypted
    events = await audit_rows(sessionmaker, activity="identity_connection.create")
    assert events and CLIENT_SECRET not in repr(events[-1].modified_properties)
    assert "client_secret" in repr(events[-1].modified_properties)


async def test_unreachable_or_wrong_issuer_is_refused_on_save(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    admin = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    for issuer in ("http://127.0.0.1:9", f"{idp.issuer}/elsewhere"):
        body = {"name": "Broken", "issuer": issuer, "client_id": "x", "client_secret": "y"}
        response = await client.post("/api/v1/identity-connections", json=body, headers=admin.headers)
        assert response.status_code == 422, response.text
        assert "cannot be used" in response.json()["detail"]


async def test_help_desk_cannot_manage_connections(client: httpx.AsyncClient, factory: Factory) -> None:
    helper = await factory.admin(HELP_DESK_OPERATOR.name)
    assert (await client.get("/api/v1/identity-connections", headers=helper.headers)).status_code == 403
    body = {"name": "X", "issuer": "http://127.0.0.1:9", "client_id": "x", "client_secret": "y"}
    response = await client.post("/api/v1/identity-connections", json=body, headers=helper.headers)
    assert response.status_code == 403


# ------------------------------------------------------------------------------------------------ sign-in
async def test_sign_in_page_offers_enabled_connections(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    created = await connect(client, factory, idp)
    page = await client.get("/portal/sign-in")
    assert f"Sign in with {created['name']}" in page.text
    assert f"/portal/sign-in/oidc/{created['id']}" in page.text


async def test_group_claim_gives_the_groups_role_and_removing_it_takes_it_away(
    client: httpx.AsyncClient,
    factory: Factory,
    idp: Idp,
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    connection = await connect(client, factory, idp)
    login, team = account(), f"corral-admins-{uuid.uuid4().hex[:6]}"
    idp.set_user(login, email=f"{login}@example.com", name="Alice Admin", groups=[team, "staff"])
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)

    response = await sso(client, connection["id"], login)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/portal"
    assert session_cookie_set(response)
    who = await me(client)
    assert who["user_principal_name"] == f"{login}@example.com"
    assert "devices:read" in who["permissions"]
    async with sessionmaker() as session:
        user = await session.scalar(select(User).where(User.user_principal_name == f"{login}@example.com"))
        assert user is not None and user.source == "oidc"
        assert str(user.connection_id) == connection["id"]
        groups = await session.scalars(
            select(Group.external_id).where(Group.connection_id == uuid.UUID(connection["id"]))
        )
        assert {team, "staff"} <= set(groups.all())
    signins = await audit_rows(sessionmaker, activity="signin", result="success")
    assert signins[-1].detail.startswith(f"oidc {connection['name']}")

    # The group goes at the provider: at the next sign-in the role goes too (and nothing else grants one):
    # they are an end user now, holding no permission.
    idp.set_user(login, email=f"{login}@example.com", name="Alice Admin", groups=["staff"])
    client.cookies.clear()
    second = await sso(client, connection["id"], login)
    assert second.status_code == 303, second.text
    assert (await me(client))["permissions"] == {}
    signins = await audit_rows(sessionmaker, activity="signin", result="success")
    assert signins[-1].detail.startswith(f"oidc {connection['name']} (end user)")
    async with sessionmaker() as session:
        user = await session.scalar(select(User).where(User.user_principal_name == f"{login}@example.com"))
        assert user is not None
        from corral.auth.service import auth_service

        assert await auth_service.grants_of(session, user.id) == ()


async def test_user_without_groups_gets_no_role_but_is_provisioned(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp, user_sign_in=False)  # administrators only
    login = account()
    idp.set_user(login, email=f"{login}@example.com", name="No Groups")
    response = await sso(client, connection["id"], login)
    assert response.status_code == 403
    assert "no Corral administrator role" in response.text
    assert f"{connection['name']} is not enabled for end-user sign-in" in response.text
    assert not session_cookie_set(response)
    async with sessionmaker() as session:
        user = await session.scalar(select(User).where(User.user_principal_name == f"{login}@example.com"))
        assert user is not None  # kept: an administrator can now give it a role
    refusals = await audit_rows(sessionmaker, activity="signin", result="failure")
    assert "not enabled for end-user sign-in" in refusals[-1].detail


async def _oidc_user(sessionmaker: async_sessionmaker[AsyncSession], subject: str) -> User:
    async with sessionmaker() as session:
        user = await session.scalar(
            select(User)
            .join(UserIdentity, UserIdentity.user_id == User.id)
            .where(UserIdentity.subject == subject)
        )
    assert user is not None
    return user


async def test_first_sign_in_is_audited_as_created_by_the_user_through_the_connection(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    login = account()
    idp.set_user(login, email=f"{login}@example.com", name="New Person")
    assert (await sso(client, connection["id"], login)).status_code == 303  # no role: an end user
    user = await _oidc_user(sessionmaker, login)
    (created,) = await audit_rows(sessionmaker, activity="user.create", target_id=str(user.id))
    assert (created.actor_type, created.actor_id, created.actor_name) == (
        "user",
        user.id,
        f"{login}@example.com",
    )
    assert created.detail == f"first single sign-on through {connection['name']}"
    assert {c["name"]: c["new"] for c in created.modified_properties} == {
        "user_principal_name": f"{login}@example.com",
        "display_name": "New Person",
        "email": f"{login}@example.com",
        "source": "oidc",
    }


async def test_returning_user_gets_name_and_email_from_the_provider_audited(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    team, login = f"ops-{uuid.uuid4().hex[:6]}", account()
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    idp.set_user(login, email=f"{login}@example.com", name="Alice Old", groups=[team])
    assert (await sso(client, connection["id"], login)).status_code == 303
    user = await _oidc_user(sessionmaker, login)
    assert await audit_rows(sessionmaker, activity="user.update", target_id=str(user.id)) == []

    client.cookies.clear()
    idp.set_user(login, email=f"{login}@new.example", name="Alice New", groups=[team])
    assert (await sso(client, connection["id"], login)).status_code == 303
    refreshed = await _oidc_user(sessionmaker, login)
    assert refreshed.id == user.id
    assert (refreshed.display_name, refreshed.email) == ("Alice New", f"{login}@new.example")
    assert refreshed.user_principal_name == user.user_principal_name  # the sign-in name stays
    (update,) = await audit_rows(sessionmaker, activity="user.update", target_id=str(user.id))
    assert (update.actor_type, update.actor_id) == ("user", user.id)
    assert connection["name"] in (update.detail or "")
    assert {c["name"]: (c["old"], c["new"]) for c in update.modified_properties} == {
        "display_name": ("Alice Old", "Alice New"),
        "email": (f"{login}@example.com", f"{login}@new.example"),
    }

    # Unchanged claims change nothing and audit nothing.
    client.cookies.clear()
    assert (await sso(client, connection["id"], login)).status_code == 303
    assert len(await audit_rows(sessionmaker, activity="user.update", target_id=str(user.id))) == 1


async def test_returning_users_new_email_may_be_another_accounts_without_merging(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    team, login = f"ops-{uuid.uuid4().hex[:6]}", account()
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    local = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    idp.set_user(login, email=f"{login}@example.com", name="Bob", groups=[team])
    assert (await sso(client, connection["id"], login)).status_code == 303
    client.cookies.clear()
    idp.set_user(login, email=local.email.upper(), name="Bob", groups=[team])
    response = await sso(client, connection["id"], login)
    assert response.status_code == 303, response.text  # email addresses are not unique: taken as sent
    refreshed = await _oidc_user(sessionmaker, login)
    assert refreshed.email == local.email.upper()
    assert refreshed.id != local.id and refreshed.user_principal_name == f"{login}@example.com"
    assert (await client.get("/api/v1/me", headers=local.headers)).json()["email"] == local.email


async def test_same_email_different_subject_is_not_merged(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    team = f"ops-{uuid.uuid4().hex[:6]}"
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    first, second = account(), account()
    email = f"shared-{uuid.uuid4().hex[:6]}@example.com"
    idp.set_user(first, email=email, name="First", groups=[team])
    idp.set_user(second, email=email, name="Impostor", groups=[team])
    assert (await sso(client, connection["id"], first)).status_code == 303
    client.cookies.clear()
    refused = await sso(client, connection["id"], second)
    assert refused.status_code == 403
    assert "not merged" in refused.text
    async with sessionmaker() as session:
        subjects = (
            await session.scalars(
                select(UserIdentity.subject).where(UserIdentity.subject.in_([first, second]))
            )
        ).all()
        assert list(subjects) == [first]


async def test_local_account_with_that_name_is_not_taken_over(
    client: httpx.AsyncClient, factory: Factory, idp: Idp
) -> None:
    connection = await connect(client, factory, idp)
    local = await factory.admin(GLOBAL_ADMINISTRATOR.name)
    login = account()
    idp.set_user(login, email=local.email, name="Takeover", groups=[])
    client.cookies.clear()
    response = await sso(client, connection["id"], login)
    assert response.status_code == 403
    assert "already exists" in response.text
    assert not session_cookie_set(response)


async def test_disabled_user_is_refused(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection = await connect(client, factory, idp)
    team = f"ops-{uuid.uuid4().hex[:6]}"
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    login = account()
    idp.set_user(login, email=f"{login}@example.com", name="Soon Gone", groups=[team])
    assert (await sso(client, connection["id"], login)).status_code == 303
    async with sessionmaker() as session:
        await session.execute(
            update(User).where(User.user_principal_name == f"{login}@example.com").values(enabled=False)
        )
        await session.commit()
    client.cookies.clear()
    response = await sso(client, connection["id"], login)
    assert response.status_code == 403
    assert "disabled" in response.text
    assert not session_cookie_set(response)


# ------------------------------------------------------------------------------------------------ attacks
async def _admin_ready(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> tuple[dict[str, Any], str]:
    connection = await connect(client, factory, idp)
    team, login = f"ops-{uuid.uuid4().hex[:6]}", account()
    await role_for_group(sessionmaker, connection["id"], team, HELP_DESK_OPERATOR.id)
    idp.set_user(login, email=f"{login}@example.com", name="Target", groups=[team])
    return connection, login


def _with_query(url: str, **changes: str | None) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


async def test_tampered_state_is_400_and_no_session(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login = await _admin_ready(client, factory, idp, sessionmaker)
    back = await sign_in_at_provider(await start(client, connection["id"]), login)
    response = await client.get(callback_path(_with_query(back, state="forged-state")))
    assert response.status_code == 400
    assert not session_cookie_set(response)
    # Nor does a callback from a browser that never started the sign-in work.
    client.cookies.clear()
    response = await client.get(callback_path(back))
    assert response.status_code == 400
    assert not session_cookie_set(response)


async def test_reused_code_is_refused(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login = await _admin_ready(client, factory, idp, sessionmaker)
    auth_url = await start(client, connection["id"])
    back = await sign_in_at_provider(auth_url, login)
    flow_cookie = client.cookies.get("__Host-corral_oidc")
    assert (await client.get(callback_path(back))).status_code == 303
    client.cookies.clear()
    assert flow_cookie is not None
    client.cookies.set("__Host-corral_oidc", flow_cookie)  # replayed with the flow cookie and all
    again = await client.get(callback_path(back))
    assert again.status_code == 403
    assert "refused the authorization code" in again.text
    assert not session_cookie_set(again)


async def test_iss_mismatch_is_refused(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login = await _admin_ready(client, factory, idp, sessionmaker)
    for forged in ("https://evil.example", None):  # a different issuer, or none where one is promised
        back = await sign_in_at_provider(await start(client, connection["id"]), login)
        assert dict(parse_qsl(urlsplit(back).query))["iss"] == idp.issuer
        response = await client.get(callback_path(_with_query(back, iss=forged)))
        assert response.status_code == 403
        assert "issuer (iss)" in response.text
        assert not session_cookie_set(response)


async def test_wrong_redirect_uri_is_refused_by_the_provider(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, _ = await _admin_ready(client, factory, idp, sessionmaker)
    auth_url = _with_query(await start(client, connection["id"]), redirect_uri="https://evil.example/cb")
    async with httpx.AsyncClient() as browser:
        response = await browser.get(auth_url)
    assert response.status_code == 400
    assert "redirect_uri" in response.text


async def test_missing_pkce_is_refused(
    client: httpx.AsyncClient, factory: Factory, idp: Idp, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    connection, login = await _admin_ready(client, factory, idp, sessionmaker)
    auth_url = await start(client, connection["id"])
    assert dict(parse_qsl(urlsplit(auth_url).query))["code_challenge_method"] == "S256"
    stripped = _with_query(auth_url, code_challenge=None, code_challenge_method=None)
    back = await sign_in_at_provider(stripped, login)
    assert "error=invalid_request" in back
    response = await client.get(callback_path(back))
    assert response.status_code == 403
    assert not session_cookie_set(response)


# ---------------------------------------------------------------------------------- ID token validation
async def _real_token(idp: Idp, client_id: str, secret: str, login: str, nonce: str) -> str:
    metadata = await oidc.discover(idp.issuer, allow_private=True)
    auth = oidc.authorization(metadata, client_id=client_id, scopes=SCOPES, redirect_uri=REDIRECT_URI)
    auth_url = _with_query(auth.url, nonce=nonce)
    back = await sign_in_at_provider(auth_url, login)
    code = dict(parse_qsl(urlsplit(back).query))["code"]
    return await oidc.exchange_code(
        metadata,
        client_id=client_id,
        client_secret=secret,
        redirect_uri=REDIRECT_URI,
        code=code,
        code_verifier=auth.code_verifier,
        allow_private=True,
    )


async def test_id_token_checks(idp: Idp) -> None:
    login = account()
    idp.set_user(login, email=f"{login}@example.com", name="Token", groups=["g"])
    metadata = await oidc.discover(idp.issuer, allow_private=True)
    token = await _real_token(idp, CLIENT_ID, CLIENT_SECRET, login, "nonce-1")
    claims = await oidc.validate_id_token(
        metadata, token, client_id=CLIENT_ID, nonce="nonce-1", allow_private=True
    )
    assert claims["sub"] == login and claims["groups"] == ["g"]

    with pytest.raises(oidc.OidcError, match="nonce"):
        await oidc.validate_id_token(
            metadata, token, client_id=CLIENT_ID, nonce="other-nonce", allow_private=True
        )
    with pytest.raises(oidc.OidcError, match="aud"):  # a token the provider issued to another client
        other = await _real_token(idp, OTHER_ID, "other-app-secret", login, "nonce-2")
        await oidc.validate_id_token(
            metadata, other, client_id=CLIENT_ID, nonce="nonce-2", allow_private=True
        )
    with pytest.raises(oidc.OidcError, match="exp"):  # the same real token, two hours later
        await oidc.validate_id_token(
            metadata,
            token,
            client_id=CLIENT_ID,
            nonce="nonce-1",
            now=int(time.time()) + 7200,
            allow_private=True,
        )
    # Another provider's metadata (a mix-up): iss differs.
    elsewhere = oidc.Metadata(**{**metadata.__dict__, "issuer": "https://evil.example"})
    with pytest.raises(oidc.OidcError, match="iss"):
        await oidc.validate_id_token(
            elsewhere, token, client_id=CLIENT_ID, nonce="nonce-1", allow_private=True
        )


async def test_unknown_kid_refetches_keys_once_then_refuses(
    idp: Idp, monkeypatch: pytest.MonkeyPatch
) -> None:
    metadata = await oidc.discover(idp.issuer, allow_private=True)
    rogue = RSAKey.generate_key(2048, parameters={"kid": "rogue-key"})
    now = int(time.time())
    forged = jwt.encode(
        {"alg": "RS256", "kid": "rogue-key"},
        {"iss": idp.issuer, "aud": CLIENT_ID, "sub": "admin", "iat": now, "exp": now + 300, "nonce": "n"},
        rogue,
    )
    fetches: list[bool] = []
    real_keys = oidc.keys

    async def counting(meta: oidc.Metadata, *, allow_private: bool = False, fresh: bool = False) -> Any:
        assert allow_private  # the sign-in path's fetches are guarded like the discovery
        fetches.append(fresh)
        return await real_keys(meta, allow_private=allow_private, fresh=fresh)

    monkeypatch.setattr(oidc, "keys", counting)
    with pytest.raises(oidc.OidcError, match="does not publish"):
        await oidc.validate_id_token(metadata, forged, client_id=CLIENT_ID, nonce="n", allow_private=True)
    assert fetches == [False, True]
    # The same forgery claiming the provider's own kid fails on the signature.
    forged_same_kid = jwt.encode(
        {"alg": "RS256", "kid": "corral-test-key"},
        {"iss": idp.issuer, "aud": CLIENT_ID, "sub": "admin", "iat": now, "exp": now + 300, "nonce": "n"},
        rogue,
    )
    with pytest.raises(oidc.OidcError, match="signature"):
        await oidc.validate_id_token(
            metadata, forged_same_kid, client_id=CLIENT_ID, nonce="n", allow_private=True
        )
