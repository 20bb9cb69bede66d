"""The SCEP parser meets whatever anyone sends: random mutations of a real PKIOperation (the simulator's, as
an iPhone sends it) are either read or refused with ScepError / a signed FAILURE, never anything else; and
the endpoint answers them without a 500."""

from __future__ import annotations

import contextlib
import datetime as dt
import os

from asn1crypto import core
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import AttributeOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.apple import scep
from corral.kit import cms
from corral.pki import certs

_NOW = dt.datetime.now(dt.UTC)
_CA, _CA_KEY = certs.build_ca("Fuzz device CA", _NOW)
_RA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RA = certs.issue_leaf(
    _CA, _CA_KEY, _RA_KEY.public_key(), "RA", None, _NOW, 30, client=False, key_encipherment=True
)


def _parts() -> tuple[bytes, x509.Certificate, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .add_attribute(AttributeOID.CHALLENGE_PASSWORD, b"challenge")
        .sign(key, hashes.SHA256())
    )
    self_signed = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOW - dt.timedelta(minutes=1))
        .not_valid_after(_NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    envelope = (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(csr.public_bytes(Encoding.DER))
        .add_recipient(_RA)
        .encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return envelope, self_signed, key


def _signed(envelope: bytes) -> bytes:
    return cms.sign(
        envelope,
        _SIGNER,
        _SIGNER_KEY,
        attributes=[
            (scep.MESSAGE_TYPE, core.PrintableString("19")),
            (scep.TRANSACTION_ID, core.PrintableString("fuzz-1")),
            (scep.SENDER_NONCE, core.OctetString(os.urandom(16))),
        ],
    )


ENVELOPE, _SIGNER, _SIGNER_KEY = _parts()
REQUEST = _signed(ENVELOPE)


def _mutated(data: st.DataObject, source: bytes) -> bytes:
    body = bytearray(source)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if kind == "flip" and body:
            body[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del body[at : at + data.draw(st.integers(1, 64))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    return bytes(body)


def test_the_unmutated_request_is_read_and_decrypted() -> None:
    message = scep.read_message(REQUEST)
    request = scep.decrypt_request(message, _RA, _RA_KEY, allow_des=True)
    assert request.challenge == "challenge"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutations_are_read_or_refused_never_anything_else(data: st.DataObject) -> None:
    try:
        message = scep.read_message(_mutated(data, REQUEST))
    except scep.ScepError:
        return
    with contextlib.suppress(scep.ScepFailure):
        scep.decrypt_request(message, _RA, _RA_KEY, allow_des=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_signed_message_around_a_mutated_envelope_gets_one_failure(data: st.DataObject) -> None:
    """Past the signature, every broken envelope (padding, key, cipher, CSR) is the same badMessageCheck."""
    message = scep.read_message(_signed(_mutated(data, ENVELOPE)))
    try:
        scep.decrypt_request(message, _RA, _RA_KEY, allow_des=True)
    except scep.ScepFailure as failure:
        assert failure.fail_info in (scep.FailInfo.bad_message_check, scep.FailInfo.bad_request)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_refused_cleanly(body: bytes) -> None:
    with contextlib.suppress(scep.ScepError):
        scep.read_message(body)
