"""Secrets: password hashing (argon2id), random tokens and their digests, encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
# A hash of a random password, verified against when the account does not exist (equal timing).
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD_LENGTH = 12


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None (length, as NIST SP 800-63B; no composition rules)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Use at least {MIN_PASSWORD_LENGTH} characters."
    if len(password) > 1024:
        return "Use at most 1024 characters."
    if password.strip() == "" or len(set(password)) < 4:
        return "That password is too easy to guess."
    return None


def generate_password() -> str:
    return secrets.token_urlsafe(18)


def new_token(prefix: str, nbytes: int = 32) -> str:
    return f"{prefix}_{secrets.token_urlsafe(nbytes)}"


def token_digest(token: str) -> bytes:
    """High-entropy tokens are stored as SHA-256 digests (a slow hash adds nothing for random secrets)."""
    return hashlib.sha256(token.encode()).digest()


def constant_time_equals(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def derive_key(secret_key: str, purpose: str, length: int = 32) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=length, salt=None, info=f"corral:{purpose}".encode()
    ).derive(secret_key.encode())


def hmac_sign(secret_key: str, purpose: str, message: str) -> str:
    digest = hmac.new(derive_key(secret_key, purpose), message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class SecretBox:
    """Authenticated encryption of small secrets at rest (TOTP seeds, CA keys), keyed by the secret key."""

    def __init__(self, secret_key: str, purpose: str = "at-rest") -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, purpose)))

    def encrypt(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode()

    def decrypt(self, ciphertext: str) -> bytes:
        try:
            return self._fernet.decrypt(ciphertext.encode())
        except InvalidToken as exc:
            raise ValueError(
                "cannot decrypt a stored secret: CORRAL_SECRET_KEY differs from the one it was written with"
            ) from exc
