"""Which characters names and identifiers may hold: one rule for every way a user, group or device gets its
name (the admin API and admin center, SCIM, OpenID Connect, the device protocol).

Refused or removed: Unicode control characters (Cc: NUL, ESC, BEL, tab, newline…), format characters (Cf:
the bidirectional overrides and isolates such as U+202E that make text display in another order than it
is stored, zero-width spaces, the byte order mark, tags), surrogates (Cs) and the line and paragraph
separators (Zl, Zp).

- **Identifiers** (user principal names, email addresses, SCIM ``userName`` and ``externalId``, device
  serial numbers) are compared and looked up: one holding such a character is **refused**, so two names
  that look the same are the same.
- **Names** (display names, first and last names, department, job title, group and device names) are only
  shown: such characters are **removed** (a line break or tab becomes a space), so the name still displays
  as intended and a provider or device sending one is not refused. The zero-width joiner and non-joiner
  (U+200D, U+200C) stay in names: several scripts (Persian, the Indic scripts) and emoji sequences need
  them, and they cannot reorder text.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from pydantic import AfterValidator, BeforeValidator

UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
NAME_JOINERS = frozenset({"\u200c", "\u200d"})
# Characters that reorder the text around them: removed from whatever the admin center displays.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(char: str) -> bool:
    return unicodedata.category(char) in UNSAFE_CATEGORIES


_BIDI_TABLE: dict[int, None] = {ord(c): None for c in BIDI_CONTROLS}


def unsafe_characters(value: str) -> list[str]:
    """The code points of ``value`` an identifier may not hold, as ``U+XXXX`` (each once, in order)."""
    return list(dict.fromkeys(f"U+{ord(c):04X}" for c in value if _unsafe(c)))


def identifier_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier, or None."""
    found = unsafe_characters(value)
    if not found:
        return None
    return f"must not contain control, format or separator characters (found {', '.join(found[:5])})"


def check_identifier(value: str) -> str:
    problem = identifier_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def clean_name(value: str) -> str:
    """``value`` without the characters a name may not hold (a line break or tab becomes a space), trimmed."""
    if value.isascii() and value.isprintable():  # the common case, without a look at each character
        return value.strip()
    return "".join(
        (" " if c.isspace() else "") if _unsafe(c) and c not in NAME_JOINERS else c for c in value
    ).strip()


def without_bidi_controls(value: str) -> str:
    return value.translate(_BIDI_TABLE)


def _clean_if_text(value: Any) -> Any:
    return clean_name(value) if isinstance(value, str) else value


# Pydantic validators, placed after a field's constraints: Annotated[str, Field(max_length=…), IDENTIFIER].
# An identifier is refused (422); a name is cleaned before its constraints (length…) are checked.
IDENTIFIER = AfterValidator(check_identifier)
CLEAN_NAME = BeforeValidator(_clean_if_text)
