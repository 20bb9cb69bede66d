"""CMS SignedData (corral.kit.cms): round trips through ``sign`` and ``verify_signed_data``; differential
checks against cryptography's PKCS7SignatureBuilder (what the Apple simulator sends as Mdm-Signature) and the
OpenSSL command line; every refusal is a CmsError, also under random mutation."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, core
from asn1crypto import cms as asn1_cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.kit import cms
from corral.kit.cms import CmsError, sign, verify_signed_data

MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
BODY = (
    b'<?xml version="1.0"?>\n<plist version="1.0">\n'
    b"<dict><key>Status</key><string>Idle</string></dict></plist>\n"
)
WHEN = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _certificate(key: Key, name: str, *, serial: int = 1000, issuer: str | None = None) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


@cache
def rsa_signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _certificate(key, "Device RSA")


@cache
def ec_signer() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _certificate(key, "Device EC")


@cache
def impostor() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """Another key in a certificate with the RSA signer's issuer and serial number."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, _certificate(key, "Device RSA", serial=1000)


def signer(kind: str) -> tuple[Key, x509.Certificate]:
    return rsa_signer() if kind == "rsa" else ec_signer()


def _edit(der: bytes, edit: Callable[[Any], None]) -> bytes:
    """``der`` with its SignedData changed by ``edit`` (the signature left as it was)."""
    info = asn1_cms.ContentInfo.load(der)
    edit(info["content"])
    return bytes(info.dump(force=True))


def _resigned(der: bytes, key: Key, edit: Callable[[list[Any]], list[Any]]) -> bytes:
    """``der`` with its signed attributes changed by ``edit`` and signed again by ``key``: a structure whose
    signature is good, so what is refused is the attributes themselves."""
    info = asn1_cms.ContentInfo.load(der)
    signer_info = info["content"]["signer_infos"][0]
    attributes = asn1_cms.CMSAttributes(edit(list(signer_info["signed_attrs"])))
    signer_info["signed_attrs"] = attributes
    signer_info["signature"] = _raw_sign(key, attributes.untag().dump())
    return bytes(info.dump(force=True))


def _raw_sign(key: Key, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _flip(der: bytes, needle: bytes, offset: int = 0) -> bytes:
    """``der`` with one byte of ``needle`` (found in it) changed."""
    at = der.index(needle) + offset
    return der[:at] + bytes([der[at] ^ 0x01]) + der[at + 1 :]


def _signature_of(der: bytes) -> bytes:
    return bytes(asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signature"].native)


def _message_digest_of(der: bytes) -> bytes:
    attributes = asn1_cms.ContentInfo.load(der)["content"]["signer_infos"][0]["signed_attrs"]
    return next(a["values"][0].native for a in attributes if a["type"].native == "message_digest")


# ------------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_what_sign_makes_verifies(kind: str, digest: str, detached: bool) -> None:
    key, certificate = signer(kind)
    der = sign(BODY, certificate, key, digest=digest, detached=detached, signing_time=WHEN)
    signed = verify_signed_data(der, detached=BODY if detached else None)
    assert signed.content == BODY
    assert signed.signer == certificate
    assert signed.certificates == (certificate,)
    assert signed.digest_algorithm == digest
    assert signed.signing_time == WHEN
    assert signed.attributes["1.2.840.113549.1.9.4"].native == hashlib.new(digest, BODY).digest()


def test_scep_attributes_are_written_and_read_back() -> None:
    key, certificate = rsa_signer()
    nonce = bytes(range(16))
    der = sign(
        b"pkcsPKIEnvelope",
        certificate,
        key,
        attributes=[
            (MESSAGE_TYPE, core.PrintableString("19")),
            (TRANSACTION_ID, core.PrintableString("4f1b2c")),
            (SENDER_NONCE, core.OctetString(nonce)),
        ],
    )
    attributes = verify_signed_data(der).attributes
    assert attributes[MESSAGE_TYPE].parse(core.PrintableString).native == "19"
    assert attributes[MESSAGE_TYPE].native == "19"
    assert attributes[TRANSACTION_ID].native == "4f1b2c"
    assert attributes[SENDER_NONCE].parse(core.OctetString).native == nonce
    assert attributes[SENDER_NONCE].native == nonce
    assert "1.2.840.113549.1.9.3" in attributes and "1.2.840.113549.1.9.5" in attributes


def test_signing_time_defaults_to_now_and_far_dates_use_generalized_time() -> None:
    key, certificate = ec_signer()
    before = datetime.now(UTC).replace(microsecond=0)
    signed = verify_signed_data(sign(b"x", certificate, key))
    assert signed.signing_time is not None and before <= signed.signing_time <= datetime.now(UTC)
    far = datetime(2051, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert verify_signed_data(sign(b"x", certificate, key, signing_time=far)).signing_time == far
    with pytest.raises(CmsError):
        sign(b"x", certificate, key, signing_time=datetime(2025, 1, 1))  # naive: refused


def test_scep_failure_reply_has_no_content_and_digests_empty_bytes() -> None:
    """RFC 8894 CertRep FAILURE/PENDING: eContentType id-data, no eContent, messageDigest over b""."""
    key, certificate = rsa_signer()
    der = sign(b"", certificate, key, detached=True, attributes=[(MESSAGE_TYPE, core.PrintableString("3"))])
    encapsulated = asn1_cms.ContentInfo.load(der)["content"]["encap_content_info"]
    assert encapsulated["content_type"].native == "data"
    assert encapsulated["content"].native is None
    assert _message_digest_of(der) == hashlib.sha256(b"").digest()
    assert verify_signed_data(der, detached=b"").content == b""
    with pytest.raises(CmsError, match="no content"):
        verify_signed_data(der)


def test_embedded_certificates_signer_first_without_duplicates() -> None:
    key, certificate = rsa_signer()
    _, other = ec_signer()
    der = sign(b"x", certificate, key, certificates=[other, certificate, other])
    assert verify_signed_data(der).certificates == (certificate, other)
    assert cms.certificates_of(der) == [certificate, other]


def test_version_follows_the_content_type() -> None:
    key, certificate = rsa_signer()
    assert asn1_cms.ContentInfo.load(sign(b"x", certificate, key))["content"]["version"].native == "v1"
    der = sign(b"x", certificate, key, content_type="1.2.840.113549.1.9.16.1.4")  # id-ct-TSTInfo
    assert asn1_cms.ContentInfo.load(der)["content"]["version"].native == "v3"
    assert verify_signed_data(der).content == b"x"


def test_signer_named_by_subject_key_identifier() -> None:
    key, certificate = rsa_signer()
    key_id = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    def by_key_id(signed: Any) -> None:
        signed["signer_infos"][0]["sid"] = asn1_cms.SignerIdentifier({"subject_key_identifier": key_id})

    assert verify_signed_data(_edit(sign(BODY, certificate, key), by_key_id)).signer == certificate

    def by_unknown_key_id(signed: Any) -> None:
        signed["signer_infos"][0]["sid"] = asn1_cms.SignerIdentifier({"subject_key_identifier": b"\x00" * 20})

    with pytest.raises(CmsError, match="signer's certificate"):
        verify_signed_data(_edit(sign(BODY, certificate, key), by_unknown_key_id))


def test_without_signed_attributes_the_signature_covers_the_content() -> None:
    key, certificate = rsa_signer()

    def plain(signed: Any) -> None:
        signer_info = signed["signer_infos"][0]
        signer_info["signed_attrs"] = None
        signer_info["signature"] = _raw_sign(key, BODY)

    der = _edit(sign(BODY, certificate, key, detached=True), plain)
    signed = verify_signed_data(der, detached=BODY)
    assert signed.attributes == {} and signed.signing_time is None
    with pytest.raises(CmsError, match="does not verify"):
        verify_signed_data(der, detached=BODY + b" ")


def test_certificates_are_parsed_once_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cms, "MAX_CACHED_CERTIFICATES", 2)
    monkeypatch.setattr(cms, "_certificates", {})
    key, certificate = rsa_signer()
    der = sign(b"x", certificate, key)
    assert verify_signed_data(der).signer is verify_signed_data(der).signer
    for kind in ("ec", "rsa"):
        verify_signed_data(sign(b"x", signer(kind)[1], signer(kind)[0], certificates=[impostor()[1]]))
    assert len(cms._certificates) <= 2


# ------------------------------------------------------------------------------------- cryptography's builder
DETACHED_LIKE_APPLE = [
    pkcs7.PKCS7Options.DetachedSignature,
    pkcs7.PKCS7Options.Binary,
    pkcs7.PKCS7Options.NoCapabilities,
]
BUILDER_OPTIONS = {
    "attached-binary": [pkcs7.PKCS7Options.Binary],
    "detached-binary-nocaps": DETACHED_LIKE_APPLE,
    "attached-binary-nocaps": [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities],
    "detached-binary-smimecaps": [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
}


def _built(kind: str, options: list[pkcs7.PKCS7Options], rsa_padding: Any = None) -> bytes:
    key, certificate = signer(kind)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(BODY)
    if rsa_padding is None:
        builder = builder.add_signer(certificate, key, hashes.SHA256())
    else:
        builder = builder.add_signer(certificate, key, hashes.SHA256(), rsa_padding=rsa_padding)
    return builder.sign(serialization.Encoding.DER, options)


@pytest.mark.parametrize("options", BUILDER_OPTIONS.values(), ids=BUILDER_OPTIONS.keys())
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_builder_signatures_verify_and_alterations_are_refused(kind: str, options: list[Any]) -> None:
    der = _built(kind, options)
    detached = BODY if pkcs7.PKCS7Options.DetachedSignature in options else None
    signed = verify_signed_data(der, detached=detached)
    assert signed.content == BODY and signed.signer == signer(kind)[1]
    assert signed.signing_time is not None and signed.digest_algorithm == "sha256"
    # The builder signs contentType, signingTime, messageDigest, and SMIMECapabilities unless told not to.
    expected = {"1.2.840.113549.1.9.3", "1.2.840.113549.1.9.5", "1.2.840.113549.1.9.4"}
    if pkcs7.PKCS7Options.NoCapabilities not in options:
        expected.add("1.2.840.113549.1.9.15")
    assert set(signed.attributes) == expected

    altered_body = BODY.replace(b"Idle", b"Idlf")
    if detached is None:
        with pytest.raises(CmsError, match="does not match"):
            verify_signed_data(der.replace(b"Idle", b"Idlf"))
    else:
        with pytest.raises(CmsError, match="does not match"):
            verify_signed_data(der, detached=altered_body)
    with pytest.raises(CmsError, match=r"does not verify|does not parse"):
        verify_signed_data(_flip(der, _signature_of(der), 7), detached=detached)
    with pytest.raises(CmsError, match="does not match"):
        verify_signed_data(_flip(der, _message_digest_of(der), 3), detached=detached)
    signing_time = signed.signing_time.strftime("%y%m%d%H%M").encode()  # inside the signed attributes
    with pytest.raises(CmsError, match=r"does not verify|does not parse"):
        verify_signed_data(_flip(der, signing_time, 9), detached=detached)


def test_builder_rsa_pss_signature_verifies() -> None:
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    der = _built("rsa", DETACHED_LIKE_APPLE, rsa_padding=pss)
    assert verify_signed_data(der, detached=BODY).content == BODY
    with pytest.raises(CmsError, match="does not verify"):
        verify_signed_data(_flip(der, _signature_of(der), 100), detached=BODY)


def test_builder_text_mode_signs_crlf_content_and_the_raw_body_does_not_verify() -> None:
    """Without Binary the builder signs the content with CRLF line ends: the verifier never normalises, so
    the original body does not match (a client must send Binary, as Apple's devices do in effect)."""
    der = _built("rsa", [pkcs7.PKCS7Options.DetachedSignature])
    crlf = BODY.replace(b"\n", b"\r\n")
    assert verify_signed_data(der, detached=crlf).content == crlf
    with pytest.raises(CmsError, match="does not match"):
        verify_signed_data(der, detached=BODY)
    attached = _built("rsa", [])
    assert verify_signed_data(attached).content == crlf


# ------------------------------------------------------------------------------------------ OpenSSL
needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="no openssl command on this machine"
)


def _openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, timeout=60, check=False)


@needs_openssl
@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_openssl_verifies_what_sign_makes(tmp_path: Path, kind: str, detached: bool) -> None:
    key, certificate = signer(kind)
    der = sign(
        BODY, certificate, key, detached=detached, attributes=[(MESSAGE_TYPE, core.PrintableString("3"))]
    )
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "body").write_bytes(BODY)
    args = ["cms", "-verify", "-noverify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der")]
    if detached:
        args += ["-content", str(tmp_path / "body")]
    result = _openssl(*args, "-out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "out").read_bytes() == BODY
    # And OpenSSL refuses an altered body, as we do.
    if detached:
        (tmp_path / "body").write_bytes(BODY + b" ")
        assert _openssl(*args).returncode != 0


@needs_openssl
@pytest.mark.parametrize("digest", ["sha1", "sha256"])
@pytest.mark.parametrize("command", ["cms", "smime"])
def test_what_openssl_signs_verifies(tmp_path: Path, command: str, digest: str) -> None:
    """OpenSSL-made signatures, as Debian's scepclient makes them (SHA-1 included)."""
    key, certificate = rsa_signer()
    (tmp_path / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "body").write_bytes(BODY)
    result = _openssl(
        command, "-sign", "-binary", "-nodetach", "-md", digest, "-outform", "DER",
        "-signer", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem"),
        "-in", str(tmp_path / "body"), "-out", str(tmp_path / "sig.der"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    signed = verify_signed_data((tmp_path / "sig.der").read_bytes())
    assert signed.content == BODY and signed.digest_algorithm == digest and signed.signer == certificate


# ------------------------------------------------------------------------------------------ refusals
def _two_signers(signed: Any) -> None:
    signed["signer_infos"] = [signed["signer_infos"][0], signed["signer_infos"][0]]


def _no_certificates(signed: Any) -> None:
    signed["certificates"] = None


def _impostor_certificate(signed: Any) -> None:
    signed["certificates"] = [asn1_cms.CertificateChoices({"certificate": _asn1_certificate(impostor()[1])})]


def _other_issuer_same_serial(signed: Any) -> None:
    key, _ = impostor()
    other = _certificate(key, "Device RSA", serial=1000, issuer="Another CA")
    signed["certificates"] = [asn1_cms.CertificateChoices({"certificate": _asn1_certificate(other)})]


def _md5(signed: Any) -> None:
    signed["signer_infos"][0]["digest_algorithm"] = algos.DigestAlgorithm({"algorithm": "md5"})


def _ecdsa_named_for_rsa_key(signed: Any) -> None:
    signed["signer_infos"][0]["signature_algorithm"] = algos.SignedDigestAlgorithm(
        {"algorithm": "sha256_ecdsa"}
    )


def _digest_disagrees(signed: Any) -> None:
    signed["signer_infos"][0]["signature_algorithm"] = algos.SignedDigestAlgorithm({"algorithm": "sha1_rsa"})


def _unknown_signature_algorithm(signed: Any) -> None:
    ec_public_key = algos.SignedDigestAlgorithm({"algorithm": "1.2.840.10045.2.1"})
    signed["signer_infos"][0]["signature_algorithm"] = ec_public_key


def _empty_content(signed: Any) -> None:
    signed["encap_content_info"] = {"content_type": "data", "content": b""}


def _scep_failure() -> bytes:
    key, certificate = rsa_signer()
    return sign(b"", certificate, key, detached=True)


def _asn1_certificate(certificate: x509.Certificate) -> Any:
    from asn1crypto import x509 as asn1_x509

    return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))


def _attached() -> bytes:
    key, certificate = rsa_signer()
    return sign(BODY, certificate, key, attributes=[(MESSAGE_TYPE, core.PrintableString("3"))])


def _detached() -> bytes:
    key, certificate = rsa_signer()
    return sign(BODY, certificate, key, detached=True)


def _wrong_content_type(attributes: list[Any]) -> list[Any]:
    return [
        asn1_cms.CMSAttribute({"type": "content_type", "values": ["signed_data"]})
        if a["type"].native == "content_type"
        else a
        for a in attributes
    ]


def _without_message_digest(attributes: list[Any]) -> list[Any]:
    return [a for a in attributes if a["type"].native != "message_digest"]


def _enveloped() -> bytes:
    _, certificate = rsa_signer()
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(BODY)
        .add_recipient(certificate)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )


REFUSALS: dict[str, Callable[[], tuple[bytes, bytes | None]]] = {
    "wrong detached content": lambda: (_detached(), BODY + b"\n"),
    "detached content of the right length": lambda: (_detached(), BODY.upper()),
    "content present when detached given": lambda: (_attached(), BODY),
    "detached signature without its content": lambda: (_detached(), None),
    "two signers": lambda: (_edit(_attached(), _two_signers), None),
    "no signer certificate": lambda: (_edit(_attached(), _no_certificates), None),
    "signer certificate swapped (same issuer and serial)": lambda: (
        _edit(_attached(), _impostor_certificate),
        None,
    ),
    "signer certificate swapped (same serial, other issuer)": lambda: (
        _edit(_attached(), _other_issuer_same_serial),
        None,
    ),
    "md5 digest": lambda: (_edit(_attached(), _md5), None),
    "ecdsa named for an rsa key": lambda: (_edit(_attached(), _ecdsa_named_for_rsa_key), None),
    "signature hash disagrees with digest": lambda: (_edit(_attached(), _digest_disagrees), None),
    "contentType attribute is not the content's": lambda: (
        _resigned(_attached(), rsa_signer()[0], _wrong_content_type),
        None,
    ),
    "no messageDigest attribute": lambda: (
        _resigned(_attached(), rsa_signer()[0], _without_message_digest),
        None,
    ),
    "repeated attribute": lambda: (_resigned(_attached(), rsa_signer()[0], lambda a: [*a, a[-1]]), None),
    "empty signed attributes": lambda: (_resigned(_attached(), rsa_signer()[0], lambda a: []), None),
    "unknown signature algorithm": lambda: (_edit(_attached(), _unknown_signature_algorithm), None),
    "empty content embedded, empty detached given (Go pkcs7's NewSignedData(nil))": lambda: (
        _edit(_scep_failure(), _empty_content),
        b"",
    ),
    "a degenerate SignedData (no signer)": lambda: (cms.degenerate([rsa_signer()[1]]), None),
    "garbage": lambda: (b"\x30\x82\xff\xff" + b"\x00" * 100, None),
    "not DER at all": lambda: (b"hello, world", None),
    "empty": lambda: (b"", None),
    "truncated": lambda: (_attached()[:-40], None),
    "trailing bytes": lambda: (_attached() + b"\x00", None),
    "enveloped data": lambda: (_enveloped(), None),
    "oversized": lambda: (b"\x30" * ((1 << 20) + 1), None),
}


@pytest.mark.parametrize("make", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_are_cms_errors(make: Callable[[], tuple[bytes, bytes | None]]) -> None:
    der, detached = make()
    with pytest.raises(CmsError) as refused:
        verify_signed_data(der, detached=detached)
    assert type(refused.value) is CmsError and str(refused.value)


def test_a_smaller_size_cap_is_honoured() -> None:
    with pytest.raises(CmsError, match="larger than 100 bytes"):
        verify_signed_data(_attached(), max_bytes=100)


def test_sign_refuses_a_key_that_is_not_the_certificates_and_unknown_digests() -> None:
    key, _ = rsa_signer()
    _, other = ec_signer()
    with pytest.raises(CmsError, match="not the certificate's"):
        sign(b"x", other, key)
    with pytest.raises(CmsError, match="md5"):
        sign(b"x", rsa_signer()[1], key, digest="md5")


# ------------------------------------------------------------------------------------------ fuzz
@cache
def _fuzz_inputs() -> tuple[bytes, bytes]:
    key, certificate = ec_signer()  # ECDSA verifies quickly: more examples per second
    return sign(BODY, certificate, key), sign(BODY, certificate, key, detached=True)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    detached=st.booleans(),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "delete", "insert"]),
            st.integers(0, 2000),
            st.binary(min_size=1, max_size=4),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_signatures_verify_or_raise_cms_error(
    detached: bool, edits: list[tuple[str, int, bytes]]
) -> None:
    attached_der, detached_der = _fuzz_inputs()
    der = bytearray(detached_der if detached else attached_der)
    for operation, position, data in edits:
        at = position % (len(der) + 1)
        if operation == "replace":
            der[at : at + len(data)] = data
        elif operation == "delete":
            del der[at : at + len(data)]
        else:
            der[at:at] = data
    try:
        signed = verify_signed_data(bytes(der), detached=BODY if detached else None)
    except CmsError:
        return
    assert signed.content == BODY  # accepted only when what was signed is intact


# ------------------------------------------------------------------------------------------ degenerate
def test_degenerate_round_trip() -> None:
    _, rsa_certificate = rsa_signer()
    _, ec_certificate = ec_signer()
    der = cms.degenerate([rsa_certificate, ec_certificate])
    signed_data = asn1_cms.ContentInfo.load(der)["content"]
    assert len(signed_data["signer_infos"]) == 0
    assert cms.certificates_of(der) == [rsa_certificate, ec_certificate]


@pytest.mark.parametrize("der", [b"", b"garbage", b"\x30\x03\x02\x01\x01"], ids=["empty", "text", "integer"])
def test_certificates_of_garbage_is_a_cms_error(der: bytes) -> None:
    with pytest.raises(CmsError):
        cms.certificates_of(der)


def test_certificates_of_enveloped_data_and_an_empty_degenerate_are_cms_errors() -> None:
    with pytest.raises(CmsError, match="not CMS signed data"):
        cms.certificates_of(_enveloped())
    with pytest.raises(CmsError):
        cms.degenerate([])
