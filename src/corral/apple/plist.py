"""The one property-list parser for Apple MDM bodies: device check-ins and command results.

Those bodies come from devices, so from anyone holding a device identity (or anyone at all, before that
identity is checked): every byte is untrusted. The parser therefore accepts the least that devices send.

**XML only.** Devices send XML property lists. A binary one (``bplist00``) is a graph of objects addressed
by number: its references may be shared (one object stands for many, so a small file can decode to a tree
exponentially larger once walked or re-serialised) or circular, and the standard library's binary reader
recurses. Refusing it costs no device anything. Only Apple's own ``<!DOCTYPE plist PUBLIC ...>`` is
accepted; anything else in the prolog (an internal subset with entity declarations, an external DTD) is
refused before the XML parser sees it, and the standard library's plistlib refuses entity declarations
again on its own (both layers are tested: no "billion laughs", nothing fetched, no file read).

Devices write UTF-8; an XML declaration naming any other encoding is refused, since expat hands names it
does not know to Python's codecs (every codec the process has, multi-byte and text-transform ones included).

**Bounded.** The body is refused above ``max_bytes`` (each endpoint passes its own); the decoded value is
then walked iteratively (no recursion, so no depth can exhaust the stack) and refused, with the path of the
offending value, when it is nested deeper than 32 levels, holds more than 100,000 values, has a dictionary
key that is not a string, a string longer than 64 KiB (characters), data larger than 1 MiB, an integer
outside 64 bits (signed or unsigned: -2**63 .. 2**64-1, as Apple's CFNumber and the binary format carry
both) or a float that is not finite (results are stored as JSONB, which has no NaN or infinity). The limits
leave real messages far behind: the largest datum a device sends is its UnlockToken, a few KiB (1.3 KiB in
tests/fixtures, about 2.3 KiB seen), real responses nest a handful of levels, and a Mac's
InstalledApplicationList is the largest common message (hundreds of applications, some ten values each:
thousands of values and hundreds of KiB of XML, not hundreds of thousands).

plistlib builds its tree from expat callbacks onto an explicit stack, so parsing itself does not recurse
either: 250,000 nested ``<array>`` elements parse (and are then refused by the walk) without a
RecursionError.
"""

from __future__ import annotations

import base64
import math
import plistlib
import re
from datetime import UTC, datetime
from typing import Any, TypeAlias
from xml.parsers.expat import ExpatError

MAX_DEPTH = 32
MAX_NODES = 100_000
MAX_STRING_CHARS = 64 * 1024
MAX_DATA_BYTES = 1024 * 1024
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1

_BOM = b"\xef\xbb\xbf"
_XML_STARTS = (b"<?xml", b"<!DOCTYPE plist", b"<plist")
_APPLE_DOCTYPE = re.compile(
    rb'<!DOCTYPE\s+plist\s+PUBLIC\s+"-//Apple(?: Computer)?//DTD PLIST 1\.0//EN"\s+'
    rb'"https?://www\.apple\.com/DTDs/PropertyList-1\.0\.dtd"\s*>'
)
_ENCODING = re.compile(rb"""<\?xml[^>]*?\sencoding\s*=\s*["']([^"']*)["']""")
# Everything plistlib (and expat under it) raises on a malformed document: a missing date match surfaces as
# AttributeError, a key outside a dictionary as IndexError or ValueError, an over-long decimal as ValueError,
# an encoding name Python's codecs do not know (expat asks them about any it does not know) as LookupError.
_PARSE_ERRORS = (
    plistlib.InvalidFileException,
    ExpatError,
    ValueError,  # (UnicodeError included)
    LookupError,  # (KeyError and IndexError included)
    OverflowError,
    TypeError,
    RecursionError,
    AttributeError,
)
_MAX_REASON = 120
_MAX_KEY_IN_PATH = 40


class PlistError(ValueError):
    """Why a property list is refused: a short message that is safe to show the sender (it never repeats
    more than a few dozen characters of the input)."""


def parse(body: bytes, *, max_bytes: int) -> dict[str, Any]:
    """The dictionary an XML property list holds, checked against the limits above; PlistError otherwise.

    MDM messages are dictionaries, so any other top-level value is refused too."""
    if len(body) > max_bytes:
        raise PlistError(f"the property list is larger than {max_bytes} bytes")
    start = body.removeprefix(_BOM).lstrip(b" \t\r\n")
    if not start:
        raise PlistError("the body is empty; expected an XML property list")
    if start.startswith(b"bplist"):
        raise PlistError("binary property lists are not accepted; send XML")
    if not start.startswith(_XML_STARTS):
        raise PlistError("not an XML property list (it must start with <?xml, <!DOCTYPE plist or <plist)")
    prolog = start.partition(b"<plist")[0]
    declared = _ENCODING.match(prolog)
    if declared and declared.group(1).lower() != b"utf-8":
        raise PlistError("only UTF-8 property lists are accepted")
    if b"<!DOCTYPE" in prolog and not _APPLE_DOCTYPE.fullmatch(
        prolog[prolog.index(b"<!DOCTYPE") :].rstrip(b" \t\r\n")
    ):
        raise PlistError(
            "entity declarations and DTDs are not supported: only Apple's plist DOCTYPE is accepted"
        )
    try:
        value = plistlib.loads(body, fmt=plistlib.FMT_XML)
    except _PARSE_ERRORS as exc:
        raise PlistError(f"not a valid XML property list: {_reason(exc)}") from None
    if not isinstance(value, dict):
        raise PlistError("the property list must hold a dictionary at its top level")
    check(value)
    return value


def check(value: Any, *, max_string_chars: int = MAX_STRING_CHARS) -> None:
    """Refuse (PlistError, naming the path) a decoded property-list value outside the limits above.

    Iterative, and counting values as they are reached rather than as they are stored, so it also ends — at
    the depth or value limit — on the graphs a binary property list can decode to (shared or circular
    references). For values decoded elsewhere (custom profiles); ``parse`` calls it itself."""
    stack: list[tuple[Any, int, _Path]] = [(value, 1, None)]
    nodes = 1
    while stack:
        item, depth, where = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                raise _error(where, f"nested deeper than {MAX_DEPTH} levels")
            nodes += len(item)
            if nodes > MAX_NODES:
                raise _error(where, f"more than {MAX_NODES} values in the property list")
            if isinstance(item, list):
                stack.extend((child, depth + 1, (where, index)) for index, child in enumerate(item))
                continue
            for key, child in item.items():
                if not isinstance(key, str):
                    raise _error(where, "a dictionary key that is not a string")
                if len(key) > max_string_chars:
                    raise _error(where, f"a dictionary key longer than {max_string_chars} characters")
                stack.append((child, depth + 1, (where, key)))
        elif isinstance(item, str):
            if len(item) > max_string_chars:
                raise _error(where, f"string longer than {max_string_chars} characters")
        elif isinstance(item, bool | datetime):
            pass
        elif isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise _error(where, "integer outside the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _error(where, "a real number that is not finite (NaN or infinity)")
        elif isinstance(item, bytes):
            if len(item) > MAX_DATA_BYTES:
                raise _error(where, f"data larger than {MAX_DATA_BYTES} bytes")
        else:
            raise _error(where, f"a value of an unsupported type ({type(item).__name__})")


def dump(value: dict[str, Any]) -> bytes:
    """XML, keys in the order given (commands read best in the order they were built)."""
    return plistlib.dumps(value, fmt=plistlib.FMT_XML, sort_keys=False)


def to_json(value: Any, *, keep_bytes: frozenset[str] = frozenset()) -> Any:
    """A JSON-safe copy of a parsed value, for storing results as JSONB.

    Dates become ISO 8601 UTC text (plistlib gives naive datetimes, which are UTC in a plist). Data (bytes)
    is dropped — its dictionary key omitted, or the item left out of its array — because results rarely
    need it and it would otherwise fill the column with tokens and certificates; under a key named in
    ``keep_bytes`` (the nearest dictionary key, for data inside arrays) it is kept as base64 text instead.
    Recursive: ``parse`` has already bounded the depth to 32."""
    return _json(value, None, keep_bytes)


_DROP = object()


def _json(value: Any, key: str | None, keep_bytes: frozenset[str]) -> Any:
    if isinstance(value, dict):
        pairs = ((k, _json(v, k, keep_bytes)) for k, v in value.items())
        return {k: v for k, v in pairs if v is not _DROP}
    if isinstance(value, list):
        items = (_json(v, key, keep_bytes) for v in value)
        return [v for v in items if v is not _DROP]
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii") if key in keep_bytes else _DROP
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.isoformat().replace("+00:00", "Z")
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"not a property-list value: {type(value).__name__}")


# A path as a linked list (parent, key or index), rendered only when a value is refused.
_Path: TypeAlias = tuple["_Path", str | int] | None


def _error(where: _Path, problem: str) -> PlistError:
    parts: list[str] = []
    while where is not None:
        where, step = where
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            if len(step) > _MAX_KEY_IN_PATH or not step.isprintable():
                step = repr(step[:_MAX_KEY_IN_PATH]) + ("…" if len(step) > _MAX_KEY_IN_PATH else "")
            parts.append(f".{step}")
    path = "".join(reversed(parts)).removeprefix(".") or "(top level)"
    return PlistError(f"{path}: {problem}")


def _reason(exc: BaseException) -> str:
    """The parser's message, one short printable line (a ValueError may quote the offending text)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"
