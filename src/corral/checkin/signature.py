"""RFC 9421 verification of the device protocol's one signature profile (docs/device-protocol.md §3): the
signature labelled ``corral``, tagged ``corral-device``, ECDSA P-256 with SHA-256, covering ``@method``,
``@target-uri`` and, whenever there is a body, ``content-digest`` (RFC 9530, ``sha-256`` or ``sha-512``).

The general-purpose library (``http_message_signatures``) verifies the same signatures — the agent signs with
it, and tests/devices/test_signature.py holds this module to the library's verdicts over valid, tampered and
malformed requests — but spent about 0.7 ms of Python per request on generality (every component identifier
and header line parsed into objects, parameters of components, derived components this protocol never uses);
the ECDSA verification itself is about 0.1 ms. This module accepts no more than the library does: components
other than the three above, or with parameters, are refused.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from http_sf.innerlist import ser_innerlist

LABEL = "corral"
TAG = "corral-device"
ALGORITHM = "ecdsa-p256-sha256"
METHOD, TARGET_URI, CONTENT_DIGEST = "@method", "@target-uri", "content-digest"
COMPONENTS = frozenset({METHOD, TARGET_URI, CONTENT_DIGEST})
PARAMETERS = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_INTEGER_PARAMETERS = frozenset({"created", "expires"})
_DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
_ECDSA = ec.ECDSA(hashes.SHA256())


class SignatureError(ValueError):
    """The signature does not verify; the message says why (it goes into the 401's detail)."""


@dataclass(frozen=True, slots=True)
class SignatureInput:
    """The ``corral`` member of a Signature-Input field, parsed once (its keyid finds the certificate)."""

    members: dict[str, Any]  # every member of the field, by label
    key_id: str
    #: The nonce when it is a string of 16 to 128 characters (the protocol's bounds), else None.
    nonce: str | None


def parse_signature_input(value: str) -> SignatureInput:
    """The field's members and the ``corral`` signature's keyid. ValueError when the field is not a
    structured-field dictionary, has no ``corral`` member or that member has no keyid."""
    members: Any = http_sf.parse(value.encode(), tltype="dictionary")
    member = members.get(LABEL) if isinstance(members, dict) else None
    if member is None:
        raise ValueError(f'no signature labelled "{LABEL}"')
    params = member[1]
    key_id = params.get("keyid")
    if not isinstance(key_id, str) or not key_id:
        raise ValueError("the signature has no keyid")
    nonce = params.get("nonce")
    usable = isinstance(nonce, str) and 16 <= len(nonce) <= 128
    return SignatureInput(members, key_id, nonce if usable else None)


def _check_parameter_types(params: dict[str, Any]) -> None:
    for name, value in params.items():
        if name in _INTEGER_PARAMETERS and type(value) is not int:
            raise SignatureError(f'parameter "{name}" must be an integer')
        if name not in _INTEGER_PARAMETERS and name in PARAMETERS and type(value) is not str:
            raise SignatureError(f'parameter "{name}" must be a string')


def _timestamp(value: int, name: str) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise SignatureError(f'malformed "{name}" parameter') from exc


def _check_digest(value: str | None, body: bytes) -> None:
    if value is None:
        raise SignatureError('covered header field "content-digest" not found')
    try:
        digests: Any = http_sf.parse(value.encode("ascii"), tltype="dictionary", on_duplicate_key=_duplicate)
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureError("malformed Content-Digest field") from exc
    if not isinstance(digests, dict) or not digests:
        raise SignatureError("Content-Digest must contain at least one digest")
    for algorithm, member in digests.items():
        hasher = _DIGESTS.get(algorithm)
        if hasher is None:
            raise SignatureError(f"unsupported content digest algorithm {algorithm!r}")
        digest = member[0] if isinstance(member, tuple) else None
        if not isinstance(digest, bytes) or len(digest) != hasher().digest_size:
            raise SignatureError(f"invalid {algorithm} digest")
        if not hmac.compare_digest(digest, hasher(body).digest()):
            raise SignatureError("Content-Digest does not match the message body")


def _duplicate(name: str, context: str) -> None:
    if context == "dictionary":
        raise ValueError(f"duplicate content digest algorithm {name!r}")


def verify(
    signature_input: SignatureInput,
    signature: str,
    *,
    key: ec.EllipticCurvePublicKey,
    method: str,
    target_uri: str,
    content_digest: str | None,
    body: bytes,
    now: dt.datetime,
    max_age: dt.timedelta,
    clock_skew: dt.timedelta,
) -> None:
    """Verify the ``corral`` signature of a request; raises SignatureError. ``signature`` and
    ``content_digest`` are the fields' values (lines joined by ", "; None: no Content-Digest field)."""
    try:
        signatures: Any = http_sf.parse(signature.encode(), tltype="dictionary")
    except (ValueError, UnicodeEncodeError) as exc:
        raise SignatureError('malformed structured header field "Signature"') from exc
    members = signature_input.members
    if not isinstance(signatures, dict) or signatures.keys() != members.keys():
        raise SignatureError("Signature-Input and Signature headers have different labels")
    for label, member in members.items():
        if not (isinstance(member, tuple) and isinstance(member[0], list)):
            raise SignatureError(f'Signature-Input member "{label}" must be an inner list')
        value = signatures[label]
        if not (isinstance(value, tuple) and isinstance(value[0], bytes)):
            raise SignatureError(f'Signature member "{label}" must be a byte sequence')
        _check_parameter_types(member[1])
    components, params = members[LABEL]
    if params.get("tag") != TAG:
        raise SignatureError("no signature found matching the expected tag and label")
    # Times: as the library checks them (created required, within the clock skew; expires; the age).
    if "created" not in params:
        raise SignatureError('the signature is missing a required "created" parameter')
    created = _timestamp(params["created"], "created")
    if created > now + clock_skew:
        raise SignatureError('signature "created" parameter is set to a time in the future')
    if "expires" in params and _timestamp(params["expires"], "expires") < now - clock_skew:
        raise SignatureError('signature "expires" parameter is set to a time in the past')
    if created + max_age < now - clock_skew:
        raise SignatureError(f"signature age exceeds maximum allowable age {max_age}")
    if "alg" in params and params["alg"] != ALGORITHM:
        raise SignatureError("unexpected algorithm specified in the signature")
    for name in params:
        if name not in PARAMETERS:
            raise SignatureError(f'unexpected signature metadata parameter "{name}"')
    # The covered components: the protocol's, each once, without parameters.
    covered: list[str] = []
    for component in components:
        name, component_params = component
        if type(name) is not str or component_params or name not in COMPONENTS:
            raise SignatureError(f"unsupported covered component {http_sf.ser(component)}")
        if name in covered:
            raise SignatureError(f'component "{name}" appeared multiple times in signature input')
        covered.append(name)
    for required in (METHOD, TARGET_URI):
        if required not in covered:
            raise SignatureError(f'required component "{required}" was not covered by the signature')
    if CONTENT_DIGEST in covered:
        _check_digest(content_digest, body)
    elif body or content_digest is not None:
        raise SignatureError("the message body requires a signed Content-Digest")
    values = {METHOD: method, TARGET_URI: target_uri, CONTENT_DIGEST: content_digest or ""}
    lines = []
    for name in covered:
        value = values[name]
        if not value.isprintable() or value != value.strip(" "):
            raise SignatureError(f'component value for "{name}" is not printable')
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {ser_innerlist(members[LABEL])}')
    raw = signatures[LABEL][0]
    if len(raw) != 64:
        raise SignatureError("unexpected signature length")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        key.verify(der, "\n".join(lines).encode(), _ECDSA)
    except InvalidSignature as exc:
        raise SignatureError("signature verification failed") from exc
