"""The OpenID Connect relying party: issuer discovery, JWKS, authorization code + PKCE through Authlib, and
ID token validation (signature, iss, aud, exp/iat, nonce). No database, no FastAPI.

Every fetch (discovery, JWKS, token endpoint) goes through kit.outbound's guarded client: public addresses
only unless ``allow_private`` (CORRAL_OIDC_ALLOW_PRIVATE_ISSUERS), checked at connect time, short timeouts,
no redirects. A failed fetch says which document could not be fetched and nothing about why (the cause is
logged for the operator), so the answer does not tell whether a host or a port answered."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from corral.kit import outbound

log = logging.getLogger("corral.oidc")

DISCOVERY_TTL = 300.0  # seconds a provider's metadata and keys are reused
LEEWAY = 60  # seconds of clock skew accepted on exp/iat
MAX_ID_TOKEN_AGE = 600  # an ID token issued longer ago than this is refused (iat)
REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


class OidcError(Exception):
    """Why a provider or a sign-in was refused, in words fit for the person signing in and the audit log."""


class FetchFailed(OidcError):
    """A document could not be fetched from the provider, for whatever reason (one message for all)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the provider's {what} could not be fetched")


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    iss_parameter_supported: bool


_metadata: dict[tuple[str, bool], tuple[float, Metadata]] = {}
_jwks: dict[tuple[str, bool], tuple[float, KeySet]] = {}


def clear_caches() -> None:
    _metadata.clear()
    _jwks.clear()


async def _get_json(url: str, what: str, *, allow_private: bool) -> dict[str, Any]:
    """A JSON object from ``url`` (HTTP 200, at most outbound.MAX_RESPONSE_BYTES), else FetchFailed."""
    try:
        async with (
            asyncio.timeout(outbound.DEADLINE),
            outbound.guarded_client(allow_private=allow_private) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            data = json.loads(await outbound.read_capped(response))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, ValueError, RecursionError) as exc:
        log.warning("fetching %s from %s failed: %s: %s", what, url, type(exc).__name__, exc)
        raise FetchFailed(what) from exc
    return data


async def discover(issuer: str, *, allow_private: bool = False, fresh: bool = False) -> Metadata:
    """The provider's metadata from ``<issuer>/.well-known/openid-configuration``, cached briefly; its
    ``issuer`` must be exactly the configured one, trailing slash included (OpenID Connect Discovery 4.3)."""
    cached = _metadata.get((issuer, allow_private))
    if cached and not fresh and cached[0] > time.monotonic():
        return cached[1]
    data = await _get_json(
        issuer.rstrip("/") + "/.well-known/openid-configuration",
        "discovery document",
        allow_private=allow_private,
    )
    missing = [key for key in REQUIRED_METADATA if not isinstance(data.get(key), str)]
    if missing:
        raise OidcError(f"The provider's discovery document lacks {', '.join(missing)}.")
    if data["issuer"] != issuer:
        raise OidcError(f"The provider calls itself {data['issuer']!r}, not {issuer!r}.")
    algorithms = tuple(
        a for a in data.get("id_token_signing_alg_values_supported", ["RS256"]) if isinstance(a, str)
    )
    algorithms = tuple(a for a in algorithms if a != "none" and not a.startswith("HS")) or ("RS256",)
    metadata = Metadata(
        issuer=issuer,
        authorization_endpoint=data["authorization_endpoint"],
        token_endpoint=data["token_endpoint"],
        jwks_uri=data["jwks_uri"],
        algorithms=algorithms,
        iss_parameter_supported=data.get("authorization_response_iss_parameter_supported") is True,
    )
    _metadata[(issuer, allow_private)] = (time.monotonic() + DISCOVERY_TTL, metadata)
    return metadata


async def keys(metadata: Metadata, *, allow_private: bool = False, fresh: bool = False) -> KeySet:
    cached = _jwks.get((metadata.jwks_uri, allow_private))
    if cached and not fresh and cached[0] > time.monotonic():
        return cached[1]
    document = await _get_json(metadata.jwks_uri, "signing keys (JWKS)", allow_private=allow_private)
    try:
        key_set = KeySet.import_key_set(document)  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise OidcError("The provider's signing keys (JWKS) cannot be read.") from exc
    _jwks[(metadata.jwks_uri, allow_private)] = (time.monotonic() + DISCOVERY_TTL, key_set)
    return key_set


def _has_kid(key_set: KeySet, kid: str) -> bool:
    try:
        key_set.get_by_kid(kid)
    except (ValueError, KeyError, JoseError):
        return False
    return True


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    code_verifier: str


def authorization(metadata: Metadata, *, client_id: str, scopes: str, redirect_uri: str) -> Authorization:
    """The provider URL to send the browser to: authorization code with PKCE (S256), state and nonce."""
    client = AsyncOAuth2Client(
        client_id=client_id, scope=scopes, redirect_uri=redirect_uri, code_challenge_method="S256"
    )
    state, nonce, verifier = generate_token(32), generate_token(32), generate_token(64)
    url, _ = client.create_authorization_url(
        metadata.authorization_endpoint, state=state, code_verifier=verifier, nonce=nonce
    )
    return Authorization(url=url, state=state, nonce=nonce, code_verifier=verifier)


async def exchange_code(
    metadata: Metadata,
    *,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    code: str,
    code_verifier: str,
    allow_private: bool = False,
) -> str:
    """The ID token for an authorization code (client_secret_basic, with the PKCE verifier), requested
    through the guarded client (not Authlib's: it may run on another HTTP library, httpx2, when installed)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    # RFC 6749 2.3.1: the client id and secret are form-encoded before they go into Basic credentials.
    credentials = httpx.BasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
    try:
        async with (
            asyncio.timeout(outbound.DEADLINE),
            outbound.guarded_client(allow_private=allow_private) as client,
            client.stream(
                "POST",
                metadata.token_endpoint,
                data=form,
                auth=credentials,
                headers={"Accept": "application/json"},
            ) as response,
        ):
            token = json.loads(await outbound.read_capped(response))
            status = response.status_code
        if not isinstance(token, dict):
            raise ValueError("not a JSON object")
    except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, ValueError, RecursionError) as exc:
        log.warning(
            "the token request to %s failed: %s: %s", metadata.token_endpoint, type(exc).__name__, exc
        )
        raise FetchFailed("token endpoint answer") from exc
    if status != 200:
        error, description = token.get("error"), token.get("error_description")
        if not isinstance(error, str):
            log.warning("the token endpoint %s answered HTTP %s", metadata.token_endpoint, status)
            raise FetchFailed("token endpoint answer")
        said = f"{error[:100]}: {description[:200]}" if isinstance(description, str) else error[:100]
        raise OidcError(f"The provider refused the authorization code ({said}).")
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise OidcError("The provider returned no ID token.")
    return id_token


async def validate_id_token(
    metadata: Metadata,
    id_token: str,
    *,
    client_id: str,
    nonce: str,
    now: int | None = None,
    allow_private: bool = False,
) -> dict[str, Any]:
    """The ID token's claims once its signature (the provider's JWKS, algorithms from discovery), ``iss``,
    ``aud`` (and ``azp``), ``exp``, ``iat`` and ``nonce`` are checked. An unknown ``kid`` refetches the keys
    once (the provider may have rotated them), then refuses."""
    key_set = await keys(metadata, allow_private=allow_private)
    try:
        header = jws.extract_compact(id_token.encode()).headers()
    except (JoseError, ValueError) as exc:
        raise OidcError("The ID token is malformed.") from exc
    kid = header.get("kid")
    if kid is not None and not _has_kid(key_set, kid):
        key_set = await keys(metadata, allow_private=allow_private, fresh=True)
        if not _has_kid(key_set, kid):
            raise OidcError("The ID token is signed with a key the provider does not publish.")
    try:
        token = jwt.decode(id_token, key_set, algorithms=list(metadata.algorithms))
    except (JoseError, ValueError) as exc:
        raise OidcError(f"The ID token's signature is invalid ({type(exc).__name__}).") from exc
    claims: dict[str, Any] = dict(token.claims)
    registry = JWTClaimsRegistry(
        now=now,
        leeway=LEEWAY,
        iss={"essential": True, "value": metadata.issuer},
        sub={"essential": True},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        iat={"essential": True},
        nonce={"essential": True, "value": nonce},
    )
    try:
        registry.validate(claims)
    except JoseError as exc:
        raise OidcError(f"The ID token was refused: {exc.description or exc.error}.") from exc
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise OidcError("The ID token was issued to another client (azp).")
    issued = int(claims["iat"])
    current = now if now is not None else int(time.time())
    if issued < current - MAX_ID_TOKEN_AGE or issued > current + LEEWAY:
        raise OidcError("The ID token was issued too long ago or in the future (iat).")
    if not isinstance(claims.get("sub"), str) or not claims["sub"] or len(claims["sub"]) > 255:
        raise OidcError("The ID token has no usable subject.")
    return claims
