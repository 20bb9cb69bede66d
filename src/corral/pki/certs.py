"""Certificate building (pure: no database): an ECDSA P-256 CA and the certificates it issues."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_rsa_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def build_ca(
    common_name: str, now: datetime, years: int = 10
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corral"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hostnames: list[str],
    now: datetime,
    days: int = 397,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = new_key()
    alt_names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hostnames):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


class CsrRefused(ValueError):
    """A certificate request that cannot be signed, with the reason."""


ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
DEVICE_CERT_DAYS = 365


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    """Parse and check a device CSR: PEM PKCS#10, valid self-signature, an ECDSA P-256 or P-384 key."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except (ValueError, TypeError) as exc:
        raise CsrRefused("the CSR is not a PEM-encoded PKCS#10 certificate request") from exc
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise CsrRefused("the CSR carries a key this server cannot read") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CsrRefused("the CSR key must be ECDSA P-256 or P-384 (RSA and other key types are refused)")
    if not isinstance(public_key.curve, ALLOWED_CURVES):
        raise CsrRefused(f"the CSR key uses the curve {public_key.curve.name}; use P-256 or P-384")
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR signature does not verify: it was not signed with the key it carries")
    return csr


def issue_device_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    csr: x509.CertificateSigningRequest,
    device_id: str,
    now: datetime,
    days: int = DEVICE_CERT_DAYS,
) -> x509.Certificate:
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return issue_leaf(
        ca_cert, ca_key, public_key, device_id, f"urn:corral:device:{device_id}", now, days, client=True
    )


def issue_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    common_name: str,
    uri: str | None,
    now: datetime,
    days: int,
    *,
    client: bool,
    key_encipherment: bool = False,
    organization: str = "Corral device",
) -> x509.Certificate:
    """An end-entity certificate from one of Corral's CAs: a device's identity (``client``, with its URN) or
    one of Corral's own service identities. RSA keys decrypt (``key_encipherment``: SCEP's key transport)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=key_encipherment,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if uri:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    if client:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


#: Apple devices make RSA keys for their SCEP identity (the agent channel stays EC-only: ``load_csr``).
IDENTITY_RSA_BITS = (2048, 8192)


def check_identity_csr(csr: x509.CertificateSigningRequest) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """An Apple device identity's request (SCEP): valid self-signature; RSA of 2048 to 8192 bits, or EC
    P-256 or P-384."""
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise CsrRefused("the CSR carries a key this server cannot read") from exc
    if isinstance(public_key, rsa.RSAPublicKey):
        low, high = IDENTITY_RSA_BITS
        if not low <= public_key.key_size <= high:
            raise CsrRefused(
                f"the CSR's RSA key has {public_key.key_size} bits; {low} to {high} are accepted"
            )
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ALLOWED_CURVES):
            raise CsrRefused(f"the CSR key uses the curve {public_key.curve.name}; use P-256 or P-384")
    else:
        raise CsrRefused("the CSR key must be RSA (2048 bits or more) or ECDSA P-256/P-384")
    if not csr.is_signature_valid:
        raise CsrRefused("the CSR signature does not verify: it was not signed with the key it carries")
    return public_key
