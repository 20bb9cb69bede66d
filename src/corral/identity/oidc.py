"""The OpenID Connect relying party: issuer discovery, JWKS, authorization code + PKCE through Authlib, and
ID token validation (signature, iss, aud, exp/iat, nonce). No database, no FastAPI."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

DISCOVERY_TTL = 300.0  # seconds a provider's metadata and keys are reused
HTTP_TIMEOUT = 5.0
LEEWAY = 60  # seconds of clock skew accepted on exp/iat
MAX_ID_TOKEN_AGE = 600  # an ID token issued longer ago than this is refused (iat)
REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


class OidcError(Exception):
    """Why a provider or a sign-in was refused, in words fit for the person signing in and the audit log."""


@dataclass(frozen=True)
class Metadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    algorithms: tuple[str, ...]
    iss_parameter_supported: bool


_metadata: dict[str, tuple[float, Metadata]] = {}
_jwks: dict[str, tuple[float, KeySet]] = {}


def clear_caches() -> None:
    _metadata.clear()
    _jwks.clear()


async def _get_json(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: e.g. a host name IDNA refuses
        raise OidcError(f"{url} is unreachable ({type(exc).__name__}).") from exc
    if response.status_code != 200:
        raise OidcError(f"{url} answered HTTP {response.status_code}.")
    try:
        data = response.json()
    except ValueError as exc:
        raise OidcError(f"{url} did not return JSON.") from exc
    if not isinstance(data, dict):
        raise OidcError(f"{url} did not return a JSON object.")
    return data


async def discover(issuer: str, *, fresh: bool = False) -> Metadata:
    """The provider's metadata from ``<issuer>/.well-known/openid-configuration``, cached briefly; its
    ``issuer`` must be exactly the configured one, trailing slash included (OpenID Connect Discovery 4.3)."""
    cached = _metadata.get(issuer)
    if cached and not fresh and cached[0] > time.monotonic():
        return cached[1]
    data = await _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
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
    _metadata[issuer] = (time.monotonic() + DISCOVERY_TTL, metadata)
    return metadata


async def keys(metadata: Metadata, *, fresh: bool = False) -> KeySet:
    cached = _jwks.get(metadata.jwks_uri)
    if cached and not fresh and cached[0] > time.monotonic():
        return cached[1]
    try:
        key_set = KeySet.import_key_set(await _get_json(metadata.jwks_uri))  # type: ignore[arg-type]
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise OidcError("The provider's signing keys (JWKS) cannot be read.") from exc
    _jwks[metadata.jwks_uri] = (time.monotonic() + DISCOVERY_TTL, key_set)
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
) -> str:
    """The ID token for an authorization code (client_secret_basic, with the PKCE verifier)."""
    async with AsyncOAuth2Client(
        client_id=client_id,
        client_secret=client_secret,
        redirect_uri=redirect_uri,
        token_endpoint_auth_method="client_secret_basic",  # noqa: S106 - a method name
        timeout=HTTP_TIMEOUT,
    ) as client:
        try:
            token = await client.fetch_token(metadata.token_endpoint, code=code, code_verifier=code_verifier)
        except (AuthlibBaseError, httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"The provider refused the authorization code ({exc}).") from exc
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise OidcError("The provider returned no ID token.")
    return id_token


async def validate_id_token(
    metadata: Metadata, id_token: str, *, client_id: str, nonce: str, now: int | None = None
) -> dict[str, Any]:
    """The ID token's claims once its signature (the provider's JWKS, algorithms from discovery), ``iss``,
    ``aud`` (and ``azp``), ``exp``, ``iat`` and ``nonce`` are checked. An unknown ``kid`` refetches the keys
    once (the provider may have rotated them), then refuses."""
    key_set = await keys(metadata)
    try:
        header = jws.extract_compact(id_token.encode()).headers()
    except (JoseError, ValueError) as exc:
        raise OidcError("The ID token is malformed.") from exc
    kid = header.get("kid")
    if kid is not None and not _has_kid(key_set, kid):
        key_set = await keys(metadata, fresh=True)
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
