"""The settings catalog (catalog.yaml next to this file), loaded and checked once, and the validation of a
profile's values against it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.models import Platform
from corral.profiles import custom

CATALOG_FILE = Path(__file__).with_name("catalog.yaml")
SECRET_MARK = "$secret"  # noqa: S105 - the key marking an encrypted value, not a secret


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Item(_Frozen):
    """One field of a list setting's entries (a Wi-Fi network's SSID, security, password)."""

    name: str
    type: Literal["string", "enum", "boolean", "integer"]
    max_length: int | None = None
    values: list[str] | None = None
    required: bool = False
    secret: bool = False


class Mechanism(_Frozen):
    """How a setting reaches one platform."""

    payload: str | None = None
    key: str | None = None
    csp: str | None = None
    applier: str | None = None
    writes: str | None = None
    field: str | None = None


class Setting(_Frozen):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
    name: str
    description: str
    category: str
    type: Literal["boolean", "integer", "string", "enum", "list", "mobileconfig", "oma_uri", "json"]
    minimum: int | None = None
    maximum: int | None = None
    max_length: int | None = None
    values: list[str] | None = None
    max_items: int | None = None
    items: list[Item] | None = None
    default: Any = None
    platforms: dict[Platform, Mechanism]

    @model_validator(mode="after")
    def _coherent(self) -> Setting:
        if self.type == "integer" and (
            self.minimum is None or self.maximum is None or self.minimum > self.maximum
        ):
            raise ValueError(f"{self.id}: an integer needs minimum ≤ maximum")
        if self.type == "enum" and not self.values:
            raise ValueError(f"{self.id}: an enum needs values")
        if self.type == "list" and (not self.items or not self.max_items):
            raise ValueError(f"{self.id}: a list needs items and max_items")
        if self.type == "string" and not self.max_length:
            raise ValueError(f"{self.id}: a string needs max_length")
        if not self.platforms:
            raise ValueError(f"{self.id}: no platform")
        if self.default is not None and self.problem(self.default):
            raise ValueError(f"{self.id}: its default is not a valid value")
        return self

    def normalized(self, value: Any) -> Any:
        """A valid value in its stored form (custom payloads: canonical; others: as given)."""
        return custom.NORMALIZERS[self.type](value) if self.type in custom.NORMALIZERS else value

    @property
    def family(self) -> str:
        return self.id.partition(".")[0]

    @property
    def secret_fields(self) -> list[str]:
        return [i.name for i in self.items or [] if i.secret]

    def problem(self, value: Any, *, secrets_kept: bool = False) -> str | None:
        """Why ``value`` is not a valid value of this setting, or None. ``secrets_kept``: a secret field may
        hold the placeholder for "keep the stored secret"."""
        if self.type in custom.NORMALIZERS:
            try:
                custom.NORMALIZERS[self.type](value)
            except custom.PayloadError as exc:
                return str(exc)
            return None
        if self.type == "boolean":
            return None if isinstance(value, bool) else "must be true or false"
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be a whole number"
            assert self.minimum is not None and self.maximum is not None
            if not self.minimum <= value <= self.maximum:
                return f"must be from {self.minimum} to {self.maximum}"
            return None
        if self.type == "string":
            if not isinstance(value, str):
                return "must be text"
            if self.max_length is not None and len(value) > self.max_length:
                return f"must be at most {self.max_length} characters"
            return None
        if self.type == "enum":
            return None if value in (self.values or []) else f"must be one of {', '.join(self.values or [])}"
        if not isinstance(value, list):
            return "must be a list"
        if self.max_items is not None and len(value) > self.max_items:
            return f"must have at most {self.max_items} entries"
        fields = {i.name: i for i in self.items or []}
        for index, entry in enumerate(value):
            if not isinstance(entry, dict):
                return f"{index}: must be an object"
            unknown = set(entry) - set(fields)
            if unknown:
                return f"{index}.{sorted(unknown)[0]}: unknown field"
            for name, item in fields.items():
                if name not in entry or entry[name] is None:
                    if item.required:
                        return f"{index}.{name}: required"
                    continue
                found = entry[name]
                if item.secret and found == {SECRET_MARK: True}:
                    if secrets_kept:
                        continue
                    return f"{index}.{name}: a new profile has no stored secret to keep: write the secret"
                if item.type in ("string", "enum") and not isinstance(found, str):
                    return f"{index}.{name}: must be text"
                if item.type == "boolean" and not isinstance(found, bool):
                    return f"{index}.{name}: must be true or false"
                if item.max_length is not None and isinstance(found, str) and len(found) > item.max_length:
                    return f"{index}.{name}: must be at most {item.max_length} characters"
                if item.values is not None and found not in item.values:
                    return f"{index}.{name}: must be one of {', '.join(item.values)}"
        return None


class Catalog(_Frozen):
    settings: list[Setting]

    @model_validator(mode="after")
    def _unique(self) -> Catalog:
        ids = [s.id for s in self.settings]
        if len(ids) != len(set(ids)):
            raise ValueError("a setting id is listed twice")
        return self

    @functools.cached_property
    def by_id(self) -> dict[str, Setting]:
        return {s.id: s for s in self.settings}


@functools.cache
def load() -> Catalog:
    return Catalog.model_validate(yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8")))
