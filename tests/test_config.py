"""Settings: production refuses weak or missing secrets and plain HTTP; development makes its own secret."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher, Type
from pydantic import ValidationError

from corral.config import MIN_SECRET_LENGTH, Environment, Settings

GOOD_SECRET = "s3cr3t-" + "Q" * 50


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only what each test says: no CORRAL_* variable or settings file from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    yield


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def production(**values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "env": "production",
        "secret_key": GOOD_SECRET,
        "base_url": "https://mdm.example.com",
    }
    return settings(**{**defaults, **values})


def test_production_accepts_a_strong_secret_over_https() -> None:
    s = production()
    assert s.env is Environment.production
    assert s.resolved_secret_key() == GOOD_SECRET
    assert s.secure_cookies is True


def test_production_refuses_a_missing_secret() -> None:
    with pytest.raises(ValidationError, match="CORRAL_SECRET_KEY is required when CORRAL_ENV=production"):
        production(secret_key=None)


def test_production_refuses_an_empty_secret() -> None:
    with pytest.raises(ValidationError, match="CORRAL_SECRET_KEY"):
        production(secret_key="")


@pytest.mark.parametrize(
    "secret",
    ["changeme", "CHANGEME", "change-me", "secret", "password", " corral ", "test"],
)
def test_production_refuses_a_placeholder_secret(secret: str) -> None:
    with pytest.raises(ValidationError, match=f"at least {MIN_SECRET_LENGTH} characters"):
        production(secret_key=secret)


@pytest.mark.parametrize("length", [1, 16, MIN_SECRET_LENGTH - 1])
def test_production_refuses_a_short_secret(length: int) -> None:
    with pytest.raises(ValidationError, match="must be a random value"):
        production(secret_key="k" * length)


def test_secret_of_the_minimum_length_is_accepted() -> None:
    assert production(secret_key="k" * MIN_SECRET_LENGTH).secret_key == "k" * MIN_SECRET_LENGTH


def test_development_also_refuses_a_placeholder_secret_when_one_is_given() -> None:
    with pytest.raises(ValidationError, match="CORRAL_SECRET_KEY"):
        settings(secret_key="changeme", data_dir=Path("/nonexistent"))


@pytest.mark.parametrize("url", ["http://mdm.example.com", "http://127.0.0.1:8000"])
def test_production_refuses_an_http_base_url(url: str) -> None:
    with pytest.raises(ValidationError, match="must use https:// when CORRAL_ENV=production"):
        production(base_url=url)


@pytest.mark.parametrize(
    "url", ["mdm.example.com", "ftp://mdm.example.com", "https://", "javascript:alert(1)"]
)
def test_base_url_must_be_an_absolute_http_url(url: str) -> None:
    with pytest.raises(ValidationError, match="absolute http"):
        settings(base_url=url)


def test_base_url_loses_its_trailing_slash() -> None:
    assert settings(base_url="https://mdm.example.com/").base_url == "https://mdm.example.com"


def test_production_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_ENV", "production")
    monkeypatch.setenv("CORRAL_BASE_URL", "https://mdm.example.com")
    with pytest.raises(ValidationError, match="CORRAL_SECRET_KEY is required"):
        settings()
    monkeypatch.setenv("CORRAL_SECRET_KEY", "changeme")
    with pytest.raises(ValidationError, match="must be a random value"):
        settings()
    monkeypatch.setenv("CORRAL_SECRET_KEY", GOOD_SECRET)
    assert settings().secret_key == GOOD_SECRET


def test_development_generates_a_secret_key_file_readable_only_by_its_owner(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    s = settings(data_dir=data_dir)
    assert s.env is Environment.development and s.secret_key is None
    key = s.resolved_secret_key()
    path = data_dir / "secret_key"
    assert path.is_file()
    assert len(key) >= MIN_SECRET_LENGTH
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_development_reuses_the_stored_secret_key(tmp_path: Path) -> None:
    first = settings(data_dir=tmp_path).resolved_secret_key()
    second = settings(data_dir=tmp_path).resolved_secret_key()
    assert first == second
    assert settings(data_dir=tmp_path / "elsewhere").resolved_secret_key() != first


def test_explicit_secret_wins_over_the_stored_one(tmp_path: Path) -> None:
    settings(data_dir=tmp_path).resolved_secret_key()
    assert settings(data_dir=tmp_path, secret_key=GOOD_SECRET).resolved_secret_key() == GOOD_SECRET


def test_trusted_proxies_are_read_as_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1 ,2001:db8::/32")
    s = settings()
    assert s.trusted_proxies == ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
    assert [str(n) for n in s.trusted_proxy_networks] == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]


def test_invalid_trusted_proxy_is_refused() -> None:
    with pytest.raises(ValidationError):
        settings(trusted_proxies=["not-a-network"])


def test_no_proxy_is_trusted_by_default() -> None:
    assert settings().trusted_proxies == []


def test_production_password_hasher_is_argon2id_with_strong_parameters(
    fast_password_hashing: PasswordHasher,
) -> None:
    real = fast_password_hashing
    assert real.type is Type.ID
    assert real.memory_cost >= 19_456  # OWASP password storage minimum for argon2id
    assert real.time_cost >= 2
    assert real.hash("correct horse battery staple").startswith("$argon2id$")
