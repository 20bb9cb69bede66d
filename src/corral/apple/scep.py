"""SCEP (RFC 8894), the protocol part: no database. Reading a PKIOperation request (a CMS SignedData by the
requester's self-signed certificate, around an EnvelopedData for Corral's RA, around the PKCS#10 request)
and building the CertRep answers (success: the issued certificate, enveloped for the requester and signed by
the RA; failure: a pkiStatus and failInfo, signed by the RA).

Structures go through asn1crypto and every primitive through ``cryptography`` (kit/cms.py). No well-kept
Python SCEP server library exists (PyPI's are test clients), and the server's part is small.

Decryption failures of every kind give one and the same error: an RSA padding failure must not be told apart
from a wrong symmetric key or a bad CSR (OpenSSL's implicit rejection already turns bad padding into a random
key rather than an error).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import StrEnum

from asn1crypto import algos, core, parser
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs7
from cryptography.x509.oid import AttributeOID

from corral.kit import cms

MAX_MESSAGE_BYTES = 64 * 1024

# SCEP's signed attributes (RFC 8894 §3.2.1, the VeriSign arc).
MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"

PKCS_REQ = "19"
RENEWAL_REQ = "17"
CERT_POLL = "20"
CERT_REP = "3"

#: What GetCACaps advertises. SCEPStandard implies AES, POSTPKIOperation and SHA-256 (RFC 8894 §3.5.2);
#: renewal is not offered (an Apple device gets a new identity by re-enrolling).
CAPABILITIES = ("POSTPKIOperation", "SHA-256", "SHA-512", "AES", "SCEPStandard")

_AES = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_DES = {"des": 8, "tripledes_3key": 24}


class FailInfo(StrEnum):
    """RFC 8894 §3.2.1.4's failInfo values."""

    bad_alg = "0"
    bad_message_check = "1"
    bad_request = "2"
    bad_time = "3"
    bad_cert_id = "4"


class ScepError(ValueError):
    """A request that cannot be answered with a CertRep at all (not a signed SCEP message)."""


class ScepFailure(ValueError):
    """A request that gets a signed FAILURE CertRep: failInfo for the device, the message for logs."""

    def __init__(self, fail_info: FailInfo, message: str) -> None:
        super().__init__(message)
        self.fail_info = fail_info


@dataclass(frozen=True)
class PkiMessage:
    """A verified PKIOperation request: who signed it and what it asks, before decryption."""

    message_type: str
    transaction_id: str
    sender_nonce: bytes
    signer: x509.Certificate
    #: The DER ContentInfo of the EnvelopedData holding the request.
    envelope: bytes
    digest_algorithm: str


@dataclass(frozen=True)
class CertificateRequest:
    csr: x509.CertificateSigningRequest
    challenge: str


def capabilities() -> str:
    return "\n".join(CAPABILITIES) + "\n"


def ca_certificates(ra: x509.Certificate, ca: x509.Certificate) -> bytes:
    """GetCACert's answer: both certificates in a degenerate SignedData (``application/x-x509-ca-ra-cert``).
    Clients pick the RA by its key usage (keyEncipherment), or by fingerprint."""
    return cms.degenerate([ra, ca])


def _attribute(signed: cms.Signed, oid: str, spec: type[core.Asn1Value]) -> core.Asn1Value | None:
    value = signed.attributes.get(oid)
    if value is None:
        return None
    if isinstance(value, spec):
        return value
    return value.parse(spec) if hasattr(value, "parse") else None


def read_message(der: bytes) -> PkiMessage:
    """Verify a PKIOperation's signature (by the certificate it carries: a new device has nothing else) and
    read its SCEP attributes."""
    if len(der) > MAX_MESSAGE_BYTES:
        raise ScepError(f"the SCEP message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        signed = cms.verify_signed_data(der, max_bytes=MAX_MESSAGE_BYTES)
    except cms.CmsError as exc:
        raise ScepError(f"not a signed SCEP message: {exc}") from exc
    try:
        message_type = _attribute(signed, MESSAGE_TYPE, core.PrintableString)
        transaction_id = _attribute(signed, TRANSACTION_ID, core.PrintableString)
        nonce = _attribute(signed, SENDER_NONCE, core.OctetString)
        values = (
            message_type.native if message_type is not None else None,
            transaction_id.native if transaction_id is not None else None,
            nonce.native if nonce is not None else None,
        )
    except (ValueError, TypeError) as exc:
        raise ScepError("the SCEP message's attributes do not parse") from exc
    kind, transaction, sender_nonce = values
    if not isinstance(kind, str) or not isinstance(transaction, str) or not transaction:
        raise ScepError("the SCEP message lacks its messageType or transactionID")
    if not isinstance(sender_nonce, bytes) or not 8 <= len(sender_nonce) <= 64:
        raise ScepError("the SCEP message lacks a senderNonce")
    if len(transaction) > 128:
        raise ScepError("the SCEP transactionID is longer than 128 characters")
    return PkiMessage(kind, transaction, sender_nonce, signed.signer, signed.content, signed.digest_algorithm)


def decrypt_request(
    message: PkiMessage, ra: x509.Certificate, ra_key: rsa.RSAPrivateKey, *, allow_des: bool
) -> CertificateRequest:
    """The PKCS#10 request inside the envelope, and its challenge password. Any failure is one failInfo
    (badMessageCheck) with one message, so the answer says nothing about which step failed."""
    uniform = ScepFailure(FailInfo.bad_message_check, "the SCEP request could not be decrypted")
    try:
        info = asn1_cms.ContentInfo.load(message.envelope)
        if info["content_type"].native != "enveloped_data":
            raise uniform
        envelope = info["content"]
        (recipient,) = envelope["recipient_infos"]
        if recipient.name != "ktri":
            raise uniform
        ktri = recipient.chosen
        rid = ktri["rid"]
        if rid.name == "issuer_and_serial_number" and rid.chosen["serial_number"].native != ra.serial_number:
            raise uniform
        if ktri["key_encryption_algorithm"]["algorithm"].native != "rsaes_pkcs1v15":
            raise uniform
        encrypted_key = ktri["encrypted_key"].native
        content_info = envelope["encrypted_content_info"]
        algorithm: algos.EncryptionAlgorithm = content_info["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
        ciphertext = _encrypted_content(content_info)
        iv = algorithm["parameters"].native
        if not isinstance(iv, bytes):
            raise uniform
        key = ra_key.decrypt(encrypted_key, padding.PKCS1v15())
        if name in _AES and len(key) == _AES[name] and len(iv) == 16:
            decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
            block = 128
        elif allow_des and name in _DES and len(key) == _DES[name] and len(iv) == 8:
            des_key = key * 3 if len(key) == 8 else key
            decryptor = Cipher(TripleDES(des_key), modes.CBC(iv)).decryptor()
            block = 64
        else:
            raise uniform
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(block).unpadder()
        plaintext = unpadder.update(padded) + unpadder.finalize()
        csr = x509.load_der_x509_csr(plaintext)
        challenge = csr.attributes.get_attribute_for_oid(AttributeOID.CHALLENGE_PASSWORD).value
    except ScepFailure:
        raise
    except (ValueError, TypeError, KeyError, IndexError, x509.AttributeNotFound) as exc:
        raise uniform from exc
    text = challenge.decode("utf-8", "replace") if isinstance(challenge, bytes) else str(challenge)
    # The CSR's key must be the key that signed the message: the requester proves it holds it.
    if not hmac.compare_digest(
        csr.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        message.signer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
    ):
        raise ScepFailure(FailInfo.bad_request, "the certificate request's key is not the key that signed it")
    return CertificateRequest(csr, text)


def _encrypted_content(content_info: asn1_cms.EncryptedContentInfo) -> bytes:
    """The ciphertext of an EncryptedContentInfo. Go's pkcs7 (Debian's scepclient, micromdm) sends it as a
    *constructed* [0] OCTET STRING (BER segments), which asn1crypto's field spec does not take: read the raw
    element and join its segments."""
    rest = content_info.contents
    for _ in range(2):  # contentType, contentEncryptionAlgorithm
        *_, header, contents, trailer = parser.parse(rest)
        rest = rest[len(header) + len(contents) + len(trailer) :]
    cls, method, tag, _, contents, _ = parser.parse(rest)
    if cls != 2 or tag != 0:
        raise ValueError("no encrypted content")
    return _octets(contents) if method == 1 else contents


def _octets(contents: bytes, depth: int = 0) -> bytes:
    """The joined OCTET STRING segments of a constructed string's contents (bounded nesting)."""
    if depth > 4:
        raise ValueError("nested too deep")
    out = bytearray()
    while contents:
        cls, method, tag, header, inner, trailer = parser.parse(contents)
        if cls != 0 or tag != 4:
            raise ValueError("not an OCTET STRING segment")
        out += _octets(inner, depth + 1) if method == 1 else inner
        contents = contents[len(header) + len(inner) + len(trailer) :]
    return bytes(out)


def _reply(
    content: bytes,
    message: PkiMessage,
    ra: x509.Certificate,
    ra_key: rsa.RSAPrivateKey,
    status: str,
    fail_info: FailInfo | None = None,
) -> bytes:
    attributes: list[tuple[str, core.Asn1Value]] = [
        (MESSAGE_TYPE, core.PrintableString(CERT_REP)),
        (PKI_STATUS, core.PrintableString(status)),
        (TRANSACTION_ID, core.PrintableString(message.transaction_id)),
        (SENDER_NONCE, core.OctetString(os.urandom(16))),
        (RECIPIENT_NONCE, core.OctetString(message.sender_nonce)),
    ]
    if fail_info is not None:
        attributes.append((FAIL_INFO, core.PrintableString(fail_info.value)))
    digest = "sha256" if message.digest_algorithm == "sha1" else message.digest_algorithm
    return cms.sign(content, ra, ra_key, digest=digest, attributes=attributes, detached=not content)


def success(
    message: PkiMessage, issued: x509.Certificate, ra: x509.Certificate, ra_key: rsa.RSAPrivateKey
) -> bytes:
    """CertRep SUCCESS: the issued certificate in a degenerate SignedData, enveloped (AES-128-CBC) for the
    requester's self-signed certificate, inside SignedData by the RA."""
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(cms.degenerate([issued]))
        .add_recipient(message.signer)
        .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return _reply(envelope, message, ra, ra_key, "0")


def failure(
    message: PkiMessage, fail_info: FailInfo, ra: x509.Certificate, ra_key: rsa.RSAPrivateKey
) -> bytes:
    """CertRep FAILURE: no content, pkiStatus 2 and the failInfo."""
    return _reply(b"", message, ra, ra_key, "2", fail_info)
