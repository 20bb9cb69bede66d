"""A stand-in for Apple's side of the push certificate: the CA that signs MDM push certificates in Apple's
portal (Apple Push Certificates Portal), for the tests and the benchmarks. What it issues carries the topic
as the subject's UID, as Apple's do; the APNs stand-in (apns_standin.py) trusts its CA certificate."""

from __future__ import annotations

import datetime as dt
import functools
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

_APPLE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_APPLE = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Apple Application Integration 2 CA (test)")])


def apple_issues(
    csr_pem: str,
    topic: str | None,
    *,
    days: int = 365,
    starts: dt.datetime | None = None,
    public_key: rsa.RSAPublicKey | None = None,
) -> str:
    """What Apple's portal hands back for a CSR: a certificate for its key whose subject's UID is the topic
    (and CN APSP:<uuid>), here from a stand-in issuer."""
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    key = public_key or csr.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    start = starts or dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"APSP:{uuid.uuid4()}")]
    if topic is not None:
        attributes.insert(0, x509.NameAttribute(NameOID.USER_ID, topic))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(_APPLE)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .sign(_APPLE_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@functools.cache
def apple_ca_pem() -> bytes:
    """The stand-in issuer's certificate, for what must trust the certificates :func:`apple_issues` makes
    (the stand-in APNs checking client certificates). Valid for long before and after: certificates are
    issued with ``starts`` in the past."""
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_APPLE)
        .issuer_name(_APPLE)
        .public_key(_APPLE_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=3650))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(_APPLE_KEY, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def new_topic() -> str:
    return f"com.apple.mgmt.External.{uuid.uuid4()}"
