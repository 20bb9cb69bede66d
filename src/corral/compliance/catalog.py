"""The compliance settings a policy can require, per platform, and how each is checked against what a device
reports (its inventory: the device row, the security facts, its apps).

Every setting has an id (``family.name``), a type that decides which values a policy may give it, the
platforms that report what it reads, and a check: ``observe`` reads the device's value (``None``: not
reported, the setting is then in *error*), ``complies`` compares it with the policy's value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from corral.models import Device, Platform

SettingType = Literal["boolean", "integer", "version", "identifiers"]

ALL = frozenset(Platform)
DESKTOP = frozenset({Platform.windows, Platform.macos, Platform.linux})
MOBILE = frozenset({Platform.ios, Platform.ipados, Platform.android})
WITH_BUILD = frozenset({Platform.windows, Platform.macos, Platform.ios, Platform.ipados})
VERSION = re.compile(r"^[0-9]+(\.[0-9]+){0,5}$")
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-+ ]{0,255}$")
MAX_IDENTIFIERS = 200


def version_key(text: str) -> tuple[int, ...]:
    """ "10.0.22631" → (10, 0, 22631); trailing zeros dropped so 14 == 14.0; what is not a number is ignored
    ("12.7.1 (21G83)" → (12, 7, 1, 21, 83) would be wrong: only the leading dotted numbers count)."""
    match = re.match(r"[ \t\n\r\f\v]*([0-9]+(?:\.[0-9]+)*)", text or "")
    if match is None:
        return ()
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


@dataclass(frozen=True)
class Observation:
    """What evaluation knows about a device: its columns (a ``Device`` or a row of the same columns, see
    ``EVALUATED``), the security facts of its inventory, its app identifiers, the time."""

    device: Any
    facts: Mapping[str, Any]
    apps: frozenset[str]
    now: datetime

    def security(self, key: str) -> Any:
        return self.facts.get(key)


@dataclass(frozen=True)
class Sql:
    """A setting's check as SQL, as evaluation runs it for a batch of devices at once
    (``corral.compliance.evaluation``): ``value`` reads the device's value from the row ``d`` (the columns
    of ``EVALUATED``; ``d.facts``: the security facts of its inventory; ``:now``), NULL when not reported
    (the setting is then in error); ``complies`` compares it (``$v``) with the policy's value (``$e``,
    jsonb) or with ``$k``, the policy's value turned by ``key`` (computed once per policy, not per device);
    ``shown`` is what is stored as observed (json). The Python ``observe`` and ``complies`` of the setting
    are the reference: a differential test holds the SQL to the same results
    (tests/compliance/test_evaluation_sql.py)."""

    value: str
    complies: str
    shown: str = "to_json($v)"
    key: str | None = None

    def _value(self, expected: str) -> str:
        return f"({self.value.replace('$e', expected)})"

    def state(self, expected: str, key: str) -> str:
        """The setting's state on a device: 'error' (not reported), 'compliant' or 'noncompliant'."""
        value = self._value(expected)
        complies = self.complies.replace("$v", value).replace("$e", expected).replace("$k", key)
        return (
            f"CASE WHEN {value} IS NULL THEN 'error' WHEN {complies} THEN 'compliant' ELSE 'noncompliant' END"
        )

    def observed(self, expected: str) -> str:
        """What is stored as observed (json), for a setting not in error."""
        return self.shown.replace("$v", self._value(expected))


def _version_sql(text: str) -> str:
    """``version_key`` in SQL: the leading dotted numbers as numeric[] (no overflow), trailing zeros dropped;
    '{}' when there are none (arrays compare like Python's tuples)."""
    leading = rf"substring({text} FROM '^[ \t\n\r\f\v]*([0-9]+(?:\.[0-9]+)*)')"  # ASCII blanks only
    return rf"coalesce(string_to_array(regexp_replace({leading}, '(\.0+)+$', ''), '.')::numeric[], '{{}}')"


VERSION_KEY = _version_sql("($e #>> '{}')")
VERSION_AT_LEAST = f"{_version_sql('$v')} >= $k"
VERSION_AT_MOST = f"{_version_sql('$v')} <= $k"
IS_TRUE = "$v IS TRUE"
AT_MOST = "$v <= ($e)::numeric"
#: A fact counts as a number only when it is a whole JSON number (as ``_at_least`` reads it).
_WHOLE = "jsonb_typeof($v) = 'number' AND ($v)::text ~ '^-?[0-9]+$'"
FACT_AT_LEAST = f"CASE WHEN {_WHOLE} THEN ($v)::numeric >= ($e)::numeric ELSE false END"
FACT_AT_MOST = f"CASE WHEN {_WHOLE} THEN ($v)::numeric <= ($e)::numeric ELSE false END"
DAYS_SINCE_CHECKIN = (
    "CASE WHEN coalesce(d.last_checkin_at, d.enrolled_at) IS NOT NULL THEN "
    "greatest(0, floor(extract(epoch FROM (:now - coalesce(d.last_checkin_at, d.enrolled_at))) / 86400)) END"
)
_APPS = (
    "ARRAY(SELECT x FROM jsonb_array_elements_text($e) AS x WHERE {} (SELECT FROM device_apps a "
    'WHERE a.device_id = d.id AND a.identifier = x) ORDER BY x COLLATE "C")'
)
MISSING_APPS = _APPS.format("NOT EXISTS")
INSTALLED_APPS = _APPS.format("EXISTS")
NONE_LISTED = "cardinality($v) = 0"


@dataclass(frozen=True)
class Setting:
    id: str
    name: str
    description: str
    type: SettingType
    platforms: frozenset[Platform]
    observe: Callable[[Observation], Any]
    complies: Callable[[Any, Any], bool]
    sql: Sql
    minimum: int | None = None
    maximum: int | None = None
    #: What the device reports that this setting reads (documentation).
    reads: str = ""
    examples: tuple[Any, ...] = field(default=())

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "platforms": sorted(p.value for p in self.platforms),
            "minimum": self.minimum,
            "maximum": self.maximum,
            "reads": self.reads,
        }

    def validate(self, value: Any) -> str | None:
        """Why ``value`` cannot be this setting's value, or None."""
        if self.type == "boolean":
            if value is not True:
                return "must be true (leave the setting out to not require it)"
        elif self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                return "must be a whole number"
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        elif self.type == "version":
            if not isinstance(value, str) or not VERSION.match(value):
                return "must be a version of dot-separated numbers, like 14.2 or 10.0.22631"
        elif self.type == "identifiers":
            if not isinstance(value, list) or not value:
                return "must be a non-empty list of app identifiers"
            if len(value) > MAX_IDENTIFIERS:
                return f"must list at most {MAX_IDENTIFIERS} identifiers"
            for item in value:
                if not isinstance(item, str) or not IDENTIFIER.match(item):
                    return f"{item!r} is not an app identifier (letters, digits, . _ - +)"
            if len(set(value)) != len(value):
                return "lists an identifier twice"
        return None


def _is_true(expected: Any, observed: Any) -> bool:
    return observed is True


def _whole(observed: Any) -> bool:
    return isinstance(observed, int) and not isinstance(observed, bool)


def _at_least(expected: Any, observed: Any) -> bool:
    return _whole(observed) and observed >= expected


def _at_most(expected: Any, observed: Any) -> bool:
    return _whole(observed) and observed <= expected


def _version_at_least(expected: Any, observed: Any) -> bool:
    return version_key(str(observed)) >= version_key(str(expected))


def _version_at_most(expected: Any, observed: Any) -> bool:
    return version_key(str(observed)) <= version_key(str(expected))


def _days_since_checkin(o: Observation) -> int | None:
    last = o.device.last_checkin_at or o.device.enrolled_at
    return None if last is None else max(0, (o.now - last).days)


def _has_all(expected: Any, observed: Any) -> bool:
    return set(expected) <= set(observed or ())


def _has_none(expected: Any, observed: Any) -> bool:
    return not set(expected) & set(observed or ())


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "os.min_version",
        "Minimum OS version",
        "The device's operating system is at least this version.",
        "version",
        ALL,
        lambda o: o.device.os_version,
        _version_at_least,
        reads="os.version",
        examples=("14.0",),
        sql=Sql("d.os_version", VERSION_AT_LEAST, key=VERSION_KEY),
    ),
    Setting(
        "os.max_version",
        "Maximum OS version",
        "The device's operating system is at most this version (blocks untested releases).",
        "version",
        ALL,
        lambda o: o.device.os_version,
        _version_at_most,
        reads="os.version",
        sql=Sql("d.os_version", VERSION_AT_MOST, key=VERSION_KEY),
    ),
    Setting(
        "os.min_build",
        "Minimum OS build",
        "The operating system's build is at least this (e.g. Windows 10.0.22631.3007).",
        "version",
        WITH_BUILD,
        lambda o: o.device.os_build,
        _version_at_least,
        reads="os.build",
        sql=Sql("d.os_build", VERSION_AT_LEAST, key=VERSION_KEY),
    ),
    Setting(
        "disk_encryption.required",
        "Require disk encryption",
        "The system disk is encrypted (BitLocker, FileVault, LUKS; always on for iOS and recent Android).",
        "boolean",
        ALL,
        lambda o: o.device.disk_encrypted,
        _is_true,
        reads="security.disk_encrypted",
        sql=Sql("d.disk_encrypted", IS_TRUE),
    ),
    Setting(
        "firewall.required",
        "Require firewall",
        "The host firewall is on.",
        "boolean",
        DESKTOP,
        lambda o: o.device.firewall_enabled,
        _is_true,
        reads="security.firewall_enabled",
        sql=Sql("d.firewall_enabled", IS_TRUE),
    ),
    Setting(
        "screen_lock.required",
        "Require screen lock or passcode",
        "A password, PIN or passcode locks the screen.",
        "boolean",
        ALL,
        lambda o: o.device.screen_lock_enabled,
        _is_true,
        reads="security.screen_lock_enabled",
        sql=Sql("d.screen_lock_enabled", IS_TRUE),
    ),
    Setting(
        "passcode.min_length",
        "Minimum passcode length",
        "The device's password or passcode policy asks for at least this many characters (where reported).",
        "integer",
        ALL,
        lambda o: o.security("passcode_min_length"),
        _at_least,
        minimum=4,
        maximum=64,
        reads="security.passcode_min_length",
        sql=Sql("NULLIF(d.facts -> 'passcode_min_length', 'null'::jsonb)", FACT_AT_LEAST),
    ),
    Setting(
        "screen_lock.max_inactivity_minutes",
        "Maximum minutes of inactivity before the screen locks",
        "The screen locks after at most this many idle minutes.",
        "integer",
        ALL,
        lambda o: o.security("screen_lock_timeout_minutes"),
        _at_most,
        minimum=1,
        maximum=1440,
        reads="security.screen_lock_timeout_minutes",
        sql=Sql("NULLIF(d.facts -> 'screen_lock_timeout_minutes', 'null'::jsonb)", FACT_AT_MOST),
    ),
    Setting(
        "jailbreak.blocked",
        "Block jailbroken or rooted devices",
        "The device is not jailbroken (iOS, iPadOS) or rooted (Android).",
        "boolean",
        MOBILE,
        lambda o: None if o.device.jailbroken is None else not o.device.jailbroken,
        _is_true,
        reads="security.jailbroken",
        sql=Sql("NOT d.jailbroken", IS_TRUE),
    ),
    Setting(
        "secure_boot.required",
        "Require Secure Boot",
        "The firmware verified the boot chain (UEFI Secure Boot).",
        "boolean",
        frozenset({Platform.windows, Platform.linux}),
        lambda o: o.device.secure_boot,
        _is_true,
        reads="security.secure_boot",
        sql=Sql("d.secure_boot", IS_TRUE),
    ),
    Setting(
        "system_integrity_protection.required",
        "Require System Integrity Protection",
        "macOS System Integrity Protection is on (Macs managed through Apple MDM report it).",
        "boolean",
        frozenset({Platform.macos}),
        lambda o: o.security("system_integrity_protection"),
        _is_true,
        reads="security.system_integrity_protection",
        sql=Sql(
            "CASE WHEN jsonb_typeof(d.facts -> 'system_integrity_protection') = 'boolean' "
            "THEN (d.facts -> 'system_integrity_protection')::boolean END",
            IS_TRUE,
        ),
    ),
    Setting(
        "checkin.max_days",
        "Maximum days since the last check-in",
        "The device checked in with Corral within this many days.",
        "integer",
        ALL,
        _days_since_checkin,
        _at_most,
        minimum=1,
        maximum=365,
        reads="the time of the last check-in",
        sql=Sql(DAYS_SINCE_CHECKIN, AT_MOST),
    ),
    Setting(
        "apps.required",
        "Required apps",
        "Every one of these apps (by identifier: bundle id, package name, product code) is installed.",
        "identifiers",
        ALL,
        lambda o: sorted(o.apps),
        _has_all,
        reads="apps[].identifier",
        sql=Sql(MISSING_APPS, NONE_LISTED),
    ),
    Setting(
        "apps.forbidden",
        "Forbidden apps",
        "None of these apps (by identifier) is installed.",
        "identifiers",
        ALL,
        lambda o: sorted(o.apps),
        _has_none,
        reads="apps[].identifier",
        sql=Sql(INSTALLED_APPS, NONE_LISTED),
    ),
    Setting(
        "agent.min_version",
        "Minimum Corral agent version",
        "The device's Corral agent is at least this version.",
        "version",
        DESKTOP,
        lambda o: o.device.agent_version,
        _version_at_least,
        reads="the agent_version of its check-ins",
        sql=Sql("d.agent_version", VERSION_AT_LEAST, key=VERSION_KEY),
    ),
)

BY_ID: dict[str, Setting] = {s.id: s for s in SETTINGS}
#: The device columns the settings read: evaluation loads these (and the inventory's security facts), never
#: whole devices.
EVALUATED = (
    Device.os_version,
    Device.os_build,
    Device.disk_encrypted,
    Device.firewall_enabled,
    Device.screen_lock_enabled,
    Device.jailbroken,
    Device.secure_boot,
    Device.last_checkin_at,
    Device.enrolled_at,
    Device.agent_version,
)


def settings_for(platform: Platform) -> list[Setting]:
    return [s for s in SETTINGS if platform in s.platforms]


def observed_for_display(setting: Setting, expected: Any, observed: Any) -> Any:
    """What to store as observed: for app lists only the identifiers that matter (not the whole list)."""
    if setting.id == "apps.required":
        return sorted(set(expected) - set(observed or ()))  # the missing ones
    if setting.id == "apps.forbidden":
        return sorted(set(expected) & set(observed or ()))  # the installed ones
    return observed
