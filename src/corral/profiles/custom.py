"""Custom payloads of configuration profiles (the catalog's "Custom" settings): a raw Apple configuration
profile (``custom.mobileconfig``), Windows OMA-URI rows (``custom.oma_uri``) and a JSON document for the
agent (``custom.json``). Each is checked here — what the catalog's generic types cannot say — and stored in
a canonical form: a ``.mobileconfig`` as its XML property list (a signed one is accepted when its signature
verifies, and stored without it: the device gets the content), OMA-URI rows as given, JSON as parsed.
"""

from __future__ import annotations

import base64
import binascii
import json
import plistlib
import re
import uuid
from datetime import datetime
from typing import Any
from xml.parsers.expat import ExpatError

from corral.apple import plist
from corral.kit import cms

MAX_MOBILECONFIG_BYTES = 200 * 1024
MAX_PAYLOADS = 100
MAX_OMA_URI_ROWS = 100
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 16
OMA_URI = re.compile(r"^\./(Device|User|Vendor)/[A-Za-z0-9_.~%{}()@+,;=:!$&'*/\-]{1,1000}$")
DATA_TYPES = ("string", "integer", "boolean", "float", "date", "base64", "xml")


class PayloadError(ValueError):
    """Why a custom payload is refused (the message names what is wrong)."""


# ------------------------------------------------------------------------------------------ .mobileconfig
def _signed_content(data: bytes) -> bytes:
    """The content of a CMS SignedData (a signed .mobileconfig), after checking that its signature over that
    content verifies with the certificate it carries. Which CA issued that certificate is the device's
    business (it shows the profile as verified or not); a broken signature is refused here."""
    try:
        return cms.verify_signed_data(data, max_bytes=MAX_MOBILECONFIG_BYTES).content
    except cms.CmsError as exc:
        if exc.code == "malformed":
            raise PayloadError(
                "not a property list, nor a signed one (its CMS structure does not parse)"
            ) from exc
        raise PayloadError(f"the signed profile is refused: {exc}") from exc


def _plist(data: bytes) -> Any:
    """The profile's value, bounded by the Apple message parser's walk (apple.plist.check). A binary profile
    is still accepted (Apple tools write them), but its object references may be shared or circular — a
    file of a few hundred bytes can decode to a cycle or to billions of values once re-serialised as XML —
    and its reader recurses, so the decoded value is walked before anything else touches it. Strings are
    bounded by the profile's own size limit, not by a device message's."""
    fmt = plistlib.FMT_BINARY if data.startswith(b"bplist00") else plistlib.FMT_XML
    try:
        value = plistlib.loads(data, fmt=fmt)
        plist.check(value, max_string_chars=MAX_MOBILECONFIG_BYTES)
    except (
        plistlib.InvalidFileException,
        ExpatError,
        ValueError,  # (apple.plist.PlistError included)
        LookupError,  # (KeyError, IndexError; and an encoding Python does not know, declared in the XML)
        OverflowError,
        TypeError,
        RecursionError,
        AttributeError,
    ) as exc:
        raise PayloadError(f"not a valid property list ({exc})") from exc
    return value


def _check_payload(where: str, payload: Any) -> None:
    if not isinstance(payload, dict):
        raise PayloadError(f"{where} is not a dictionary")
    for key in ("PayloadType", "PayloadIdentifier", "PayloadUUID"):
        if not isinstance(payload.get(key), str) or not payload[key].strip():
            raise PayloadError(f"{where} has no {key}")
    try:
        uuid.UUID(payload["PayloadUUID"])
    except ValueError as exc:
        raise PayloadError(f"{where}'s PayloadUUID is not a UUID") from exc
    if not isinstance(payload.get("PayloadVersion"), int) or isinstance(payload.get("PayloadVersion"), bool):
        raise PayloadError(f"{where} has no integer PayloadVersion")


def mobileconfig(value: Any) -> str:
    """The XML of a .mobileconfig given as XML text, or base64 of a binary or signed one; refused with the
    reason otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError("must be the profile's XML, or base64 of a binary or signed profile")
    text = value.strip()
    if text.startswith("<"):
        data = text.encode("utf-8")
    else:
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PayloadError("neither XML nor base64") from exc
    if len(data) > MAX_MOBILECONFIG_BYTES:
        raise PayloadError(f"the profile is larger than {MAX_MOBILECONFIG_BYTES // 1024} KiB")
    if data[:1] == b"\x30":  # DER: a CMS SignedData around the profile
        data = _signed_content(data)
    profile = _plist(data)
    _check_payload("the profile", profile)
    if profile["PayloadType"] != "Configuration":
        raise PayloadError("the profile's PayloadType must be Configuration")
    content = profile.get("PayloadContent", [])
    if not isinstance(content, list):
        raise PayloadError("PayloadContent must be an array of payloads")
    if len(content) > MAX_PAYLOADS:
        raise PayloadError(f"at most {MAX_PAYLOADS} payloads")
    for index, payload in enumerate(content):
        _check_payload(f"payload {index + 1}", payload)
    if text.startswith("<"):
        return text
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML).decode("utf-8")


def mobileconfig_summary(value: str) -> list[str]:
    """The payload types inside a stored profile (for the admin center)."""
    try:
        profile = plistlib.loads(value.encode("utf-8"))
    except (plistlib.InvalidFileException, ExpatError, ValueError):
        return []
    return [str(p.get("PayloadType")) for p in profile.get("PayloadContent") or [] if isinstance(p, dict)]


# ------------------------------------------------------------------------------------------ OMA-URI
def _typed(data_type: str, value: str) -> str | None:
    """Why ``value`` is not of ``data_type``, or None."""
    if data_type == "integer":
        return None if re.fullmatch(r"-?[0-9]{1,10}", value) else "must be a whole number"
    if data_type == "boolean":
        return None if value in ("true", "false") else "must be true or false"
    if data_type == "float":
        try:
            float(value)
        except ValueError:
            return "must be a number"
        return None
    if data_type == "date":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return "must be an ISO 8601 date"
        return None
    if data_type == "base64":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return "must be base64"
        return None
    if data_type == "xml":
        try:
            import xml.etree.ElementTree as ElementTree

            if "<!DOCTYPE" in value or "<!ENTITY" in value:
                return "must not declare a DOCTYPE or entities"
            ElementTree.fromstring(value)  # noqa: S314 - no DOCTYPE, so no entity expansion
        except ElementTree.ParseError as exc:
            return f"must be well-formed XML ({exc})"
        return None
    return None


def oma_uri(value: Any) -> list[dict[str, str]]:
    """OMA-URI rows: each a name, an OMA-URI under ./Device, ./User or ./Vendor, a data type and a value of
    that type."""
    if not isinstance(value, list) or not value:
        raise PayloadError("must be a list of OMA-URI rows")
    if len(value) > MAX_OMA_URI_ROWS:
        raise PayloadError(f"at most {MAX_OMA_URI_ROWS} rows")
    rows = []
    seen: set[str] = set()
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise PayloadError(f"{index}: must be an object")
        unknown = set(row) - {"name", "oma_uri", "data_type", "value"}
        if unknown:
            raise PayloadError(f"{index}.{sorted(unknown)[0]}: unknown field")
        name, uri, data_type, text = (row.get(k) for k in ("name", "oma_uri", "data_type", "value"))
        if not isinstance(name, str) or not 1 <= len(name.strip()) <= 256:
            raise PayloadError(f"{index}.name: required, up to 256 characters")
        if not isinstance(uri, str) or not OMA_URI.match(uri):
            raise PayloadError(
                f"{index}.oma_uri: must start with ./Device/, ./User/ or ./Vendor/ (no spaces)"
            )
        if uri.lower() in seen:
            raise PayloadError(f"{index}.oma_uri: {uri} is set twice")
        seen.add(uri.lower())
        if data_type not in DATA_TYPES:
            raise PayloadError(f"{index}.data_type: must be one of {', '.join(DATA_TYPES)}")
        if not isinstance(text, str) or len(text) > 64 * 1024:
            raise PayloadError(f"{index}.value: must be text up to 64 KiB")
        problem = _typed(data_type, text)
        if problem:
            raise PayloadError(f"{index}.value: {problem} (data type {data_type})")
        rows.append({"name": name.strip(), "oma_uri": uri, "data_type": data_type, "value": text})
    return rows


# ------------------------------------------------------------------------------------------ JSON
def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max([level, *(_depth(v, level + 1) for v in value.values())])
    if isinstance(value, list):
        return max([level, *(_depth(v, level + 1) for v in value)])
    return level


def agent_json(value: Any) -> dict[str, Any]:
    """A JSON object for the agent (given as an object, or as its text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise PayloadError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise PayloadError("must be a JSON object")
    if len(json.dumps(value)) > MAX_JSON_BYTES:
        raise PayloadError(f"larger than {MAX_JSON_BYTES // 1024} KiB")
    if _depth(value) > MAX_JSON_DEPTH:
        raise PayloadError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


NORMALIZERS = {"mobileconfig": mobileconfig, "oma_uri": oma_uri, "json": agent_json}
