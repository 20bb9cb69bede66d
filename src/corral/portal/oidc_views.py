"""Single sign-on with OpenID Connect: the sign-in page's "Sign in with <connection>" buttons start here; the
provider sends the browser back to /auth/oidc/callback.

The flow's secrets (state, nonce, PKCE verifier, connection, where to go next) travel in a short-lived cookie
encrypted and authenticated with the secret key: bound to the browser that started the sign-in, readable by
nobody else, and useless after FLOW_SECONDS."""

from __future__ import annotations

import json
import logging
import time
import uuid

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from corral.audit.refusals import RefusalsDep
from corral.auth.dependencies import PUBLIC
from corral.config import Settings
from corral.identity import oidc
from corral.identity.service import SignInRefused, identity_service, redirect_uri
from corral.kit.db import SessionDep
from corral.kit.deps import SessionMakerDep, SettingsDep
from corral.kit.routing import APIRouter
from corral.kit.security import SecretBox, constant_time_equals
from corral.portal.auth_views import _safe_next, _set_session_cookie
from corral.portal.rendering import render

log = logging.getLogger("corral.identity")
router = APIRouter(include_in_schema=False)

FLOW_SECONDS = 600
FLOW_PURPOSE = "oidc-flow"


def flow_cookie_name(settings: Settings) -> str:
    return "__Host-corral_oidc" if settings.secure_cookies else "corral_oidc"


def _refused(request: Request, message: str, status_code: int = 403) -> Response:
    response = render(request, "auth/sso_refused.html", {"message": message}, status_code=status_code)
    _forget_flow(response, request)
    return response


def _forget_flow(response: Response, request: Request) -> None:
    settings: Settings = request.app.state.settings
    response.delete_cookie(
        flow_cookie_name(settings), path="/", secure=settings.secure_cookies, httponly=True
    )


START = "/portal/sign-in/oidc/{connection_id}"
CALLBACK = "/auth/oidc/callback"


@router.get("/portal/sign-in/oidc/{connection_id:uuid}", dependencies=[PUBLIC])
async def start(
    request: Request,
    connection_id: uuid.UUID,
    session: SessionDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    next: str | None = None,
) -> Response:
    """Send the browser to the provider: authorization code with PKCE (S256), state and nonce."""
    try:
        connection = await identity_service.usable(session, connection_id)
        assert connection.issuer is not None and connection.client_id is not None
        metadata = await oidc.discover(connection.issuer, allow_private=settings.oidc_allow_private_issuers)
    except SignInRefused as exc:
        return _refused(request, exc.detail, 404)
    except oidc.OidcError as exc:
        log.warning("single sign-on through %s: provider unavailable: %s", connection.name, exc)
        await identity_service.refuse(refusals, connection, "provider_unavailable", endpoint=START)
        return _refused(request, f"{connection.name} cannot be reached right now: {exc}", 502)
    auth = oidc.authorization(
        metadata,
        client_id=connection.client_id,
        scopes=connection.scopes,
        redirect_uri=redirect_uri(settings),
    )
    flow = {
        "c": str(connection.id),
        "s": auth.state,
        "n": auth.nonce,
        "v": auth.code_verifier,
        "next": _safe_next(next),
        "t": int(time.time()),
    }
    sealed = SecretBox(settings.resolved_secret_key(), FLOW_PURPOSE).encrypt(json.dumps(flow).encode())
    response = RedirectResponse(auth.url, status_code=303)
    response.set_cookie(
        flow_cookie_name(settings),
        sealed,
        max_age=FLOW_SECONDS,
        httponly=True,
        secure=settings.secure_cookies,
        samesite="lax",  # the provider's redirect back is a top-level navigation from another site
        path="/",
    )
    return response


def _flow(request: Request, settings: Settings) -> dict[str, str] | None:
    sealed = request.cookies.get(flow_cookie_name(settings))
    if not sealed or len(sealed) > 4000:
        return None
    try:
        flow = json.loads(SecretBox(settings.resolved_secret_key(), FLOW_PURPOSE).decrypt(sealed))
    except ValueError:
        return None
    if not isinstance(flow, dict) or int(flow.get("t", 0)) + FLOW_SECONDS < time.time():
        return None
    return flow


@router.get(CALLBACK, dependencies=[PUBLIC])
async def callback(
    request: Request,
    session: SessionDep,
    sessionmaker: SessionMakerDep,
    refusals: RefusalsDep,
    settings: SettingsDep,
    code: str = "",
    state: str = "",
    iss: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    flow = _flow(request, settings)
    if flow is None or not state or not constant_time_equals(state[:200], flow["s"]):
        await identity_service.refuse(refusals, None, "state_invalid", endpoint=CALLBACK)
        return _refused(
            request, "This sign-in could not be verified (it expired or did not start here). Try again.", 400
        )
    try:
        connection = await identity_service.usable(session, uuid.UUID(flow["c"]))
    except SignInRefused as exc:
        await identity_service.refuse(refusals, None, "connection_unavailable", endpoint=CALLBACK)
        return _refused(request, exc.detail)
    assert connection.issuer is not None and connection.client_id is not None
    try:
        if error:
            raise oidc.OidcError(f"the provider answered {error[:100]}: {(error_description or '')[:200]}")
        if not code or len(code) > 2000:
            raise oidc.OidcError("the provider sent no authorization code")
        metadata = await oidc.discover(connection.issuer, allow_private=settings.oidc_allow_private_issuers)
        # RFC 9207: the response names its issuer, so a response from another provider is not taken for it.
        if (metadata.iss_parameter_supported or iss is not None) and iss != metadata.issuer:
            raise oidc.OidcError("the response's issuer (iss) is not this connection's provider")
        id_token = await oidc.exchange_code(
            metadata,
            client_id=connection.client_id,
            client_secret=identity_service.client_secret(settings, connection),
            redirect_uri=redirect_uri(settings),
            code=code,
            code_verifier=flow["v"],
            allow_private=settings.oidc_allow_private_issuers,
        )
        claims = await oidc.validate_id_token(
            metadata,
            id_token,
            client_id=connection.client_id,
            nonce=flow["n"],
            allow_private=settings.oidc_allow_private_issuers,
        )
        result = await identity_service.complete_sign_in(session, settings, connection, claims)
    except SignInRefused as exc:  # the ID token was valid: the account it names is not admitted
        await identity_service.refuse_account(sessionmaker, connection, exc.detail)
        return _refused(request, exc.detail)
    except oidc.OidcError as exc:
        # Its text may come from the request (the error parameter): the application log has it, the audit
        # log the reason code.
        log.warning("single sign-on through %s refused: %s", connection.name, exc)
        await identity_service.refuse(refusals, connection, "provider_error", endpoint=CALLBACK)
        return _refused(request, f"Signing in through the identity provider failed: {exc}")
    if result.refused is not None or result.user_session is None or result.token is None:
        reason = result.refused or "refused"
        await identity_service.refuse_account(
            sessionmaker, connection, reason, name=result.user.user_principal_name, user_id=result.user.id
        )
        return _refused(request, reason)
    response = RedirectResponse(flow["next"], status_code=303)
    _set_session_cookie(response, settings, result.token, result.user_session)
    _forget_flow(response, request)
    return response
