"""CMS SignedData (RFC 5652), the one place Corral reads and writes it: Apple MDM's ``Mdm-Signature`` header
(a detached signature over the request body), SCEP messages (RFC 8894: custom signed attributes, read and
written) and signed ``.mobileconfig`` profiles (attached content).

asn1crypto reads and builds the ASN.1 structures; every cryptographic primitive (digests, signatures,
certificate parsing) is ``cryptography``'s. ``cryptography``'s own ``PKCS7SignatureBuilder`` cannot add
custom signed attributes (SCEP needs them) and it has no verifier, hence this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

MAX_BYTES = 1 << 20
MAX_CACHED_CERTIFICATES = 1024

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,  # Debian's scepclient (and old SCEP clients) still sign with SHA-1
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Everything asn1crypto may raise while it parses lazily, or cryptography while it loads or verifies: each
# becomes a CmsError, so callers catch one exception type.
_FAILURES = (
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
    NotImplementedError,
    RecursionError,
    InvalidSignature,
    UnsupportedAlgorithm,
    x509.InvalidVersion,  # cryptography's certificate loader: not a ValueError
    x509.DuplicateExtension,
)
_OID_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_OID_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_OID_SIGNING_TIME = "1.2.840.113549.1.9.5"


def _shown(name: object) -> str:
    """A name from the structure (an OID, when asn1crypto does not know it), cut short for a message."""
    text = str(name)
    return text if len(text) <= 64 else text[:61] + "..."


class CmsError(ValueError):
    """Why a CMS structure is refused: a short message, safe to show to whoever sent it. ``code`` says which
    kind of refusal it is ("malformed", "unsupported", "content", "signer", "signature", "size"), for callers
    that phrase their own message."""

    def __init__(self, message: str, *, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Signed:
    """What a verified SignedData says. The signature is proven to be by ``signer``'s key; who issued
    ``signer`` is NOT checked (see ``verify_signed_data``)."""

    content: bytes
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]
    digest_algorithm: str
    signing_time: datetime | None
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# ------------------------------------------------------------------------------------------ certificates
_certificates: dict[bytes, x509.Certificate] = {}


def _certificate(der: bytes) -> x509.Certificate:
    """Parsed once per distinct certificate: every Apple request carries the same device certificate, and
    parsing it costs more than hashing it. Bounded: cleared when full, so a flood of new ones cannot grow
    it."""
    key = hashlib.sha256(der).digest()
    certificate = _certificates.get(key)
    if certificate is None:
        try:
            certificate = x509.load_der_x509_certificate(der)
        except _FAILURES as exc:
            raise CmsError("an embedded certificate does not parse", code="malformed") from exc
        if len(_certificates) >= MAX_CACHED_CERTIFICATES:
            _certificates.clear()
        _certificates[key] = certificate
    return certificate


def _signed_data(der: bytes, max_bytes: int) -> Any:
    """The SignedData inside a DER/BER ContentInfo (parsed lazily by asn1crypto: the caller still catches)."""
    if not isinstance(der, bytes | bytearray | memoryview):
        raise CmsError("the CMS structure is not bytes", code="malformed")
    if len(der) > max_bytes:
        raise CmsError(f"the CMS structure is larger than {max_bytes} bytes", code="size")
    info = asn1_cms.ContentInfo.load(bytes(der), strict=True)
    content_type = info["content_type"].native
    if content_type != "signed_data":
        raise CmsError(f"not CMS signed data ({_shown(content_type)})", code="unsupported")
    return info["content"]


def _embedded(signed: Any) -> list[tuple[Any, x509.Certificate]]:
    """The embedded X.509 certificates, each as asn1crypto's (to match a sid) and cryptography's."""
    found = []
    for choice in signed["certificates"] or ():
        if choice.name == "certificate":  # other choices (attribute certificates) play no part here
            found.append((choice.chosen, _certificate(choice.chosen.dump())))
    return found


def _in_order(certificates: list[bytes]) -> Any:
    """A CertificateSet in the order given. asn1crypto would sort it (DER's SET OF rule), but SignedData is
    BER, OpenSSL and Go keep the order, and SCEP clients look at the first certificate."""
    contents = b"".join(certificates)
    length = len(contents)
    if length < 0x80:
        header = bytes([0x31, length])
    else:
        size = (length.bit_length() + 7) // 8
        header = bytes([0x31, 0x80 | size]) + length.to_bytes(size, "big")
    return asn1_cms.CertificateSet.load(header + contents)


def certificates_of(der: bytes, *, max_bytes: int = MAX_BYTES) -> list[x509.Certificate]:
    """The certificates a SignedData carries (a degenerate one, as SCEP's GetCACert and CertRep use, or any
    other), in their order. Nothing is verified: they are just what the sender put there."""
    try:
        return [certificate for _, certificate in _embedded(_signed_data(der, max_bytes))]
    except CmsError:
        raise
    except _FAILURES as exc:
        raise CmsError("the CMS structure does not parse", code="malformed") from exc


def degenerate(certificates: Sequence[x509.Certificate]) -> bytes:
    """A certificates-only SignedData (no content, no signer): DER but for the order of the certificates,
    which is kept as given: SCEP's GetCACert answer, and the inner content of a SCEP CertRep. (cryptography's
    ``pkcs7.serialize_certificates`` sorts them by encoding, as DER's SET OF rule says; Go's pkcs7 and
    OpenSSL's PKCS#7 keep the order, and some SCEP clients take the first certificate as the one meant.)"""
    if not certificates:
        raise CmsError("a degenerate SignedData needs at least one certificate", code="content")
    ders: list[bytes] = []
    for certificate in certificates:
        der = certificate.public_bytes(serialization.Encoding.DER)
        if der not in ders:
            ders.append(der)
    signed = asn1_cms.SignedData(
        {
            "version": "v1",
            "digest_algorithms": [],
            "encap_content_info": {"content_type": "data"},
            "certificates": _in_order(ders),
            "signer_infos": [],
        }
    )
    return bytes(asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())


# ------------------------------------------------------------------------------------------ verification
def verify_signed_data(der: bytes, *, detached: bytes | None = None, max_bytes: int = MAX_BYTES) -> Signed:
    """Check that ``der`` (a CMS ContentInfo of SignedData, DER or BER) is signed by exactly one signer whose
    certificate it carries, over its content — or over ``detached`` exactly as given (never CRLF-normalised)
    when the signature is detached, as Apple's ``Mdm-Signature`` is — and say what it holds.

    THIS DOES NOT CHECK WHO ISSUED THE SIGNER'S CERTIFICATE, nor its validity dates or revocation: any key can
    make a signature that passes here. The caller must decide whether ``Signed.signer`` is trusted (issued by
    the right CA, a known device's certificate, ...) before believing anything in ``Signed``.

    Refused with CmsError, whatever is wrong: over ``max_bytes``; not SignedData; not exactly one SignerInfo;
    the signer's certificate (found by issuer and serial, or subject key identifier) not embedded; content
    missing or empty (attached), or present (detached); a digest other than SHA-1/256/384/512; with signed
    attributes, a contentType other than the eContentType or a messageDigest other than the content's; a key
    other than RSA (PKCS#1 v1.5 or PSS) or ECDSA; a signature that does not verify.
    """
    try:
        return _verify(_signed_data(der, max_bytes), detached)
    except CmsError:
        raise
    except InvalidSignature as exc:
        raise CmsError("the signature does not verify", code="signature") from exc
    except UnsupportedAlgorithm as exc:
        raise CmsError("the signature uses an unsupported algorithm", code="unsupported") from exc
    except _FAILURES as exc:
        raise CmsError("the CMS structure does not parse", code="malformed") from exc


def _verify(signed: Any, detached: bytes | None) -> Signed:
    signers = signed["signer_infos"]
    if len(signers) != 1:
        raise CmsError(f"exactly one signer is expected, not {len(signers)}", code="signer")
    signer_info = signers[0]
    encapsulated = signed["encap_content_info"]
    carried = encapsulated["content"]
    if detached is not None:
        if carried.native is not None:
            raise CmsError("a detached signature was expected, but the content is embedded", code="content")
        content = bytes(detached)
    else:
        content = carried.native
        if not isinstance(content, bytes) or not content:
            raise CmsError("the signed data carries no content (a detached signature?)", code="content")

    embedded = _embedded(signed)
    signer = _signer(signer_info["sid"], embedded)
    digest_name = signer_info["digest_algorithm"]["algorithm"].native
    if digest_name not in _HASHES:
        raise CmsError(f"unsupported digest algorithm ({_shown(digest_name)})", code="unsupported")

    attributes: dict[str, Any] = {}
    signing_time = None
    signed_attrs = signer_info["signed_attrs"]
    if not isinstance(signed_attrs, core.Void):  # present, even empty: then it lacks what it must hold
        attributes = _attributes(signed_attrs)
        if _OID_CONTENT_TYPE not in attributes or _OID_MESSAGE_DIGEST not in attributes:
            raise CmsError("the signed attributes lack contentType or messageDigest", code="malformed")
        if attributes[_OID_CONTENT_TYPE].dotted != encapsulated["content_type"].dotted:
            raise CmsError("the signed contentType is not the content's type", code="content")
        computed = hashlib.new(digest_name, content).digest()
        if not hmac.compare_digest(attributes[_OID_MESSAGE_DIGEST].native, computed):
            raise CmsError("the content does not match its signature (altered?)", code="content")
        if _OID_SIGNING_TIME in attributes:
            signing_time = attributes[_OID_SIGNING_TIME].native
            if not isinstance(signing_time, datetime) or signing_time.tzinfo is None:
                raise CmsError("the signing time is not a date", code="malformed")
            signing_time = signing_time.astimezone(UTC)
        # Signed over the attributes' DER as a SET OF (RFC 5652 5.4): the bytes as sent, [0] re-tagged as SET.
        encoded = signed_attrs.dump()
        if encoded[:1] != b"\xa0":
            raise CmsError("the signed attributes do not parse", code="malformed")
        signed_bytes = b"\x31" + encoded[1:]
    elif encapsulated["content_type"].native != "data":
        raise CmsError("content other than data must be signed with signed attributes", code="malformed")
    else:
        signed_bytes = content

    _check_signature(signer, signer_info, digest_name, signed_bytes)
    return Signed(
        content=content,
        signer=signer,
        certificates=tuple(certificate for _, certificate in embedded),
        digest_algorithm=digest_name,
        signing_time=signing_time,
        attributes=MappingProxyType(attributes),
    )


def _signer(sid: Any, embedded: list[tuple[Any, x509.Certificate]]) -> x509.Certificate:
    """The embedded certificate the SignerInfo names: by issuer AND serial number (the issuer compared as
    RFC 5280 names, so re-encoded strings still match), or by subject key identifier."""
    if sid.name == "issuer_and_serial_number":
        issuer, serial = sid.chosen["issuer"], sid.chosen["serial_number"].native
        for parsed, certificate in embedded:
            if certificate.serial_number == serial and (
                parsed.issuer.dump() == issuer.dump() or parsed.issuer == issuer  # bytes first: cheaper
            ):
                return certificate
    else:
        key_id = sid.chosen.native
        for parsed, certificate in embedded:
            if parsed.key_identifier is not None and hmac.compare_digest(parsed.key_identifier, key_id):
                return certificate
    raise CmsError("the signer's certificate is not among the embedded certificates", code="signer")


def _attributes(signed_attrs: Any) -> dict[str, Any]:
    """The signed attributes by dotted OID, each its first value (parsed now, so a malformed one is refused
    here rather than in a caller). An attribute type twice, or one with no value, is refused: which would
    count is ambiguous, and RFC 5652 forbids it for the ones it defines."""
    found: dict[str, Any] = {}
    for attribute in signed_attrs:
        oid = attribute["type"].dotted
        values = attribute["values"]
        if oid in found or len(values) == 0:
            raise CmsError(f"signed attribute {_shown(oid)} is repeated or empty", code="malformed")
        if oid in (_OID_CONTENT_TYPE, _OID_MESSAGE_DIGEST, _OID_SIGNING_TIME) and len(values) != 1:
            raise CmsError(f"signed attribute {oid} must have exactly one value", code="malformed")
        value = values[0]
        value.native  # noqa: B018 - parse now: a malformed value fails here, as a CmsError
        found[oid] = value
    return found


def _check_signature(
    certificate: x509.Certificate, signer_info: Any, digest_name: str, signed_bytes: bytes
) -> None:
    """Raises InvalidSignature (or CmsError) unless the signature over ``signed_bytes`` verifies."""
    algorithm = signer_info["signature_algorithm"]
    try:
        scheme = algorithm.signature_algo
    except ValueError as exc:  # an OID asn1crypto does not know as a signature algorithm
        name = _shown(algorithm["algorithm"].native)
        raise CmsError(f"unsupported signature algorithm ({name})", code="unsupported") from exc
    if algorithm["algorithm"].native in _COMBINED and algorithm.hash_algo != digest_name:
        raise CmsError("the signature and digest algorithms disagree", code="unsupported")
    signature = signer_info["signature"].native
    key = certificate.public_key()
    hash_algorithm = _HASHES[digest_name]()
    if scheme == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, signed_bytes, padding.PKCS1v15(), hash_algorithm)
    elif scheme == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
        pss, pss_hash = _pss(algorithm["parameters"])
        key.verify(signature, signed_bytes, pss, pss_hash)
    elif scheme == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, signed_bytes, ec.ECDSA(hash_algorithm))
    else:
        kind = type(key).__name__.removeprefix("_").removesuffix("PublicKey")
        raise CmsError(f"unsupported signature ({_shown(scheme)}, {kind} key)", code="unsupported")


# Signature algorithm OIDs that name their hash too: it must be the SignerInfo's digest algorithm.
_COMBINED = {
    f"{digest}_{kind}"
    for digest in ("sha1", "sha224", "sha256", "sha384", "sha512")
    for kind in ("rsa", "ecdsa")
}


def _pss(parameters: Any) -> tuple[padding.PSS, hashes.HashAlgorithm]:
    """RSA-PSS as the structure states it (RFC 4055): its hash, MGF1 with its hash, its salt length."""
    if not isinstance(parameters, algos.RSASSAPSSParams):
        raise CmsError("RSA-PSS without its parameters", code="unsupported")
    hash_name = parameters["hash_algorithm"]["algorithm"].native
    mask = parameters["mask_gen_algorithm"]
    mask_hash = mask["parameters"]["algorithm"].native
    if (
        hash_name not in _HASHES
        or mask["algorithm"].native != "mgf1"
        or mask_hash not in _HASHES
        or parameters["trailer_field"].native != "trailer_field_bc"
    ):
        raise CmsError("unsupported RSA-PSS parameters", code="unsupported")
    pss = padding.PSS(mgf=padding.MGF1(_HASHES[mask_hash]()), salt_length=parameters["salt_length"].native)
    return pss, _HASHES[hash_name]()


# ------------------------------------------------------------------------------------------ signing
def sign(
    content: bytes,
    certificate: x509.Certificate,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    digest: str = "sha256",
    attributes: Sequence[tuple[str, core.Asn1Value]] = (),
    certificates: Sequence[x509.Certificate] = (),
    detached: bool = False,
    content_type: str = "data",
    signing_time: datetime | None = None,
) -> bytes:
    """A DER ContentInfo of SignedData over ``content`` by ``key`` (``certificate``'s): signed attributes
    contentType, signingTime (``signing_time``, default now), messageDigest, then ``attributes`` (dotted OID,
    asn1crypto value), e.g. SCEP's ``("2.16.840.1.113733.1.9.2", core.PrintableString("3"))``; RSA PKCS#1 v1.5
    or ECDSA; the signer named by issuer and serial; its certificate first, then ``certificates``.

    ``detached`` leaves eContent out, the digest still over ``content``: the Mdm-Signature shape, and, with
    ``content=b""``, a SCEP CertRep FAILURE or PENDING (a SignedData with no content).
    """
    if digest not in _HASHES:
        raise CmsError(f"unsupported digest algorithm ({digest})", code="unsupported")
    if key.public_key() != certificate.public_key():
        raise CmsError("the key is not the certificate's", code="signer")
    when = (signing_time or datetime.now(UTC)).replace(microsecond=0)
    if when.tzinfo is None:
        raise CmsError("the signing time must be timezone-aware", code="content")
    when = when.astimezone(UTC)
    # RFC 5652 11.3: UTCTime for 1950-2049, GeneralizedTime otherwise.
    time = asn1_cms.Time({"utc_time" if 1950 <= when.year < 2050 else "generalized_time": when})
    hash_algorithm = _HASHES[digest]()
    message_digest = core.OctetString(hashlib.new(digest, content).digest())
    signed_attrs = asn1_cms.CMSAttributes(
        [
            asn1_cms.CMSAttribute({"type": "content_type", "values": [asn1_cms.ContentType(content_type)]}),
            asn1_cms.CMSAttribute({"type": "signing_time", "values": [time]}),
            asn1_cms.CMSAttribute({"type": "message_digest", "values": [message_digest]}),
            *(asn1_cms.CMSAttribute({"type": oid, "values": [value]}) for oid, value in attributes),
        ]
    )
    to_sign = signed_attrs.dump()  # a SET OF until placed in the SignerInfo as [0]; DER: asn1crypto sorts it
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(to_sign, padding.PKCS1v15(), hash_algorithm)
        signature_algorithm = {"algorithm": "rsassa_pkcs1v15", "parameters": core.Null()}
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(to_sign, ec.ECDSA(hash_algorithm))
        signature_algorithm = {"algorithm": f"{digest}_ecdsa"}
    else:
        raise CmsError("only RSA and EC keys can sign", code="unsupported")

    signer_der = certificate.public_bytes(serialization.Encoding.DER)
    signer_cert = asn1_x509.Certificate.load(signer_der)
    embedded = [signer_der]
    for extra in certificates:
        der = extra.public_bytes(serialization.Encoding.DER)
        if der not in embedded:
            embedded.append(der)
    # RFC 5754: SHA-2 identifiers SHOULD be sent with absent parameters (asn1crypto would add a NULL).
    digest_algorithm = algos.DigestAlgorithm({"algorithm": digest, "parameters": None})
    signer_info = asn1_cms.SignerInfo(
        {
            "version": "v1",
            "sid": asn1_cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": signer_cert.issuer,
                        "serial_number": signer_cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": digest_algorithm,
            "signed_attrs": signed_attrs,
            "signature_algorithm": signature_algorithm,
            "signature": signature,
        }
    )
    encapsulated: dict[str, Any] = {"content_type": content_type}
    if not detached:
        encapsulated["content"] = content
    signed = asn1_cms.SignedData(
        {
            # RFC 5652 5.1: v1 for id-data with issuerAndSerialNumber and plain certificates; v3 otherwise.
            "version": "v1" if asn1_cms.ContentType(content_type).native == "data" else "v3",
            "digest_algorithms": [digest_algorithm],
            "encap_content_info": encapsulated,
            "certificates": _in_order(embedded),
            "signer_infos": [signer_info],
        }
    )
    return bytes(asn1_cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump())
