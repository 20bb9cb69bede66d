from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import datetime
from typing import Annotated

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from corral.kit.types import Boolean

_DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?", re.IGNORECASE)


def issuer_url(value: str) -> str:
    """An OpenID Connect issuer: an absolute http(s) URL with a valid host name (IDNA) or IP address, and
    no credentials, query or fragment (OpenID Connect Discovery 1.0, section 2)."""
    try:
        url = httpx.URL(value)
        host = url.host  # decodes IDNA labels: a malformed one ("xn--") raises here
        raw_host = url.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError) as exc:  # (idna's errors are UnicodeErrors, so ValueErrors)
        raise ValueError("the issuer is not a valid URL") from exc
    if url.scheme not in {"http", "https"} or not host:
        raise ValueError("the issuer must be an absolute http(s) URL with a host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError("the issuer's port must be between 1 and 65535")
    if url.userinfo or url.query or url.fragment:
        raise ValueError("the issuer must have no user name, password, query or fragment")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if len(raw_host) > 253 or not _DNS_NAME.fullmatch(raw_host):
            raise ValueError("the issuer's host is not a valid host name") from None
    return value


Scopes = Field(
    default="openid profile email groups", min_length=6, max_length=256, pattern=r"^[\x21-\x7e ]+$"
)
Claim = Field(default="groups", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$")
IssuerUrl = Annotated[str, AfterValidator(issuer_url)]
Issuer = Field(min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")


class IdentityConnectionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    enabled: bool
    issuer: str | None
    client_id: str | None
    client_secret_set: bool = Field(description="The secret itself is never returned")
    scopes: str
    groups_claim: str
    admin_sign_in: bool
    user_sign_in: bool
    redirect_uri: str = Field(description="Register this redirect URI at the identity provider")
    created_at: datetime
    updated_at: datetime


class IdentityConnectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=128)
    issuer: IssuerUrl = Issuer
    client_id: str = Field(min_length=1, max_length=256)
    client_secret: str = Field(min_length=1, max_length=1024)
    scopes: str = Scopes
    groups_claim: str = Claim
    admin_sign_in: Boolean = True
    user_sign_in: Boolean = True
    enabled: Boolean = True


class IdentityConnectionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(default=None, min_length=1, max_length=128)
    issuer: IssuerUrl | None = Field(default=None, min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")
    client_id: str | None = Field(default=None, min_length=1, max_length=256)
    client_secret: str | None = Field(default=None, min_length=1, max_length=1024, description="Omit to keep")
    scopes: str | None = Field(default=None, min_length=6, max_length=256, pattern=r"^[\x21-\x7e ]+$")
    groups_claim: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:/-]+$"
    )
    admin_sign_in: Boolean | None = None
    user_sign_in: Boolean | None = None
    enabled: Boolean | None = None
