"""The device key: generated here, stored owner-only, never sent anywhere (only its CSR and signatures)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from corral_agent.errors import AgentError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_POSIX = os.name == "posix"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed and make the directory itself owner-only (0700)."""
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if _POSIX:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != PRIVATE_DIR_MODE:
            path.chmod(PRIVATE_DIR_MODE)
    return path


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600.

    The bytes go to a new temporary file in the same directory, created with ``O_CREAT | O_EXCL`` and mode
    0600 (so it is never readable by others, not even for an instant), flushed to disk, then renamed over
    ``path``. A crash leaves either the old file or the new one, never a mix.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    if not _POSIX:
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_private_file(path: Path) -> bytes:
    """Read a file that must be owner-only; refuse (like ssh does) when others may read or write it."""
    path = Path(path)
    if _POSIX:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise AgentError(f"{path} is accessible by other users (mode {mode:04o}); run: chmod 600 {path}")
    return path.read_bytes()


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key from the operating system's random source."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def save_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_private_file(path, private_key_pem(key))


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(read_private_file(path), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AgentError(f"{path} does not hold an ECDSA P-256 private key")
    return key


def build_csr(key: ec.EllipticCurvePrivateKey, common_name: str = "corral-agent") -> str:
    """A PKCS#10 request signed with ``key`` (SHA-256). The server ignores the subject and names the
    certificate after the device."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "corral-agent")])
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def certificate_fingerprint(certificate_pem: str | bytes) -> str:
    """SHA-256 of the DER certificate, lower-case hex (the `keyid` of every signature)."""
    data = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
    cert = x509.load_pem_x509_certificate(data)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_matches_key(certificate_pem: str, key: ec.EllipticCurvePrivateKey) -> bool:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def new_key_file_name() -> str:
    return f"device-{secrets.token_hex(8)}.key"


__all__ = [
    "build_csr",
    "certificate_fingerprint",
    "certificate_matches_key",
    "ensure_private_dir",
    "generate_private_key",
    "load_private_key",
    "new_key_file_name",
    "read_private_file",
    "save_private_key",
    "write_private_file",
]
