"""Rules compiled to SQL on real PostgreSQL agree with the Python evaluator, keep nulls, and bind values.

One database per module: a population of devices (and a stand-in users table) with varied, null, mixed-case
and hostile attribute values is inserted once; every test only reads it."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, MetaData, String, Table, func, insert, literal, select
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.dialects.postgresql import dialect as postgresql_dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from corral.groups.rule_sql import (
    DEVICE_FIELDS,
    DEVICE_SCHEMA,
    EntitySchema,
    bind_schema,
    compile_rule,
    device_attribute_values,
    escape_like,
)
from corral.groups.rules import (
    DEVICE_ATTRIBUTES,
    USER_ATTRIBUTES,
    USER_RULES,
    AttributeType,
    AttributeValue,
    EntityKind,
    Not,
    RuleError,
    matches,
    parse_rule,
    python_regex,
)
from corral.kit.db import create_engine, create_sessionmaker
from corral.models import Device, EnrollmentToken
from corral.models.device import Ownership, Platform

NOW = datetime(2024, 6, 1, tzinfo=UTC)
TOKEN_NAMES = ["DEP iPhones", "Kiosk_Profile", "kioskXprofile", "50%-pilot"]
NAMES = [
    "Alice's iPhone",
    "alice's IPHONE",
    "BOB-LAPTOP",
    "bob-laptop",
    "bob-laptop-2",
    "50% off",
    "5000 off",
    "a_b",
    "axb",
    "a\\_b",
    "back\\slash",
    'quote"d',
    "O'Brien",
    "Ünïcode Gerät",
    "ünïcode gerät",
    "",
    "'; DROP TABLE devices; --",
    "line\nbreak",
    "kiosk-01",
    "KIOSK-02",
    "sales.laptop",
    "salesXlaptop",
    "trailing ",
    " leading",
]
OS_VERSIONS = [
    None,
    "10.0.19045",
    "10.0.22631.3447",
    "17.5.1",
    "17.4",
    "14.4.1",
    "13",
    "",
    "6.8.0-45-generic",
]
MANUFACTURERS = [None, "Apple", "APPLE", "apple inc.", "Samsung", "Dell Inc.", "", "%", "_"]
MODELS = [
    None,
    "iPhone15,2",
    "iPad Air",
    "MacBookPro18,3",
    "Latitude 7440",
    "SM-S918B",
    "Pixel 8",
    "Mac%",
    "Mac_",
]
ARCHITECTURES = [None, "x64", "arm64", "ARM64", "x86"]

USERS = Table(
    "rule_test_users",
    MetaData(),
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("enabled", Boolean, nullable=True),
    Column("upn", String(320), nullable=False),
    Column("mail", String(320)),
    Column("display_name", String(256), nullable=False),
    Column("department", String(64)),
    Column("job_title", String(64)),
    Column("country", String(64)),
)
USER_COLUMNS = {
    "objectId": "id",
    "accountEnabled": "enabled",
    "userPrincipalName": "upn",
    "mail": "mail",
    "displayName": "display_name",
    "department": "department",
    "jobTitle": "job_title",
    "country": "country",
}


@dataclass
class Population:
    sessionmaker: async_sessionmaker[AsyncSession]
    devices: dict[uuid.UUID, dict[str, AttributeValue]]
    users: dict[uuid.UUID, dict[str, AttributeValue]]
    user_schema: EntitySchema


def _device(rng: random.Random, i: int, tokens: list[EnrollmentToken | None]) -> Device:
    token = rng.choice(tokens)
    return Device(
        id=uuid.uuid4(),
        name=rng.choice(NAMES),
        serial_number=f"SN{i:05}",
        platform=list(Platform)[i % len(Platform)],
        ownership=rng.choice(list(Ownership)),
        os_version=rng.choice(OS_VERSIONS),
        manufacturer=rng.choice(MANUFACTURERS),
        model=rng.choice(MODELS),
        jailbroken=rng.choice([None, True, False]),
        cpu_architecture=rng.choice(ARCHITECTURES),
        enrollment_token_id=token.id if token else None,
        enrolled_at=NOW,
    )


def _user(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(["Ada Lovelace", "ada lovelace", "Grace Hopper", "O'Neil", "50% Guest", "x_y"])
    return {
        "id": uuid.uuid4(),
        "enabled": rng.choice([None, True, False]),
        "upn": rng.choice(["ada@example.com", "ADA@EXAMPLE.COM", "grace@contoso.com", "g_h@example.com"]),
        "mail": rng.choice([None, "ada@example.com", "grace@Contoso.com", ""]),
        "display_name": name,
        "department": rng.choice([None, "Sales", "sales", "Marketing", "R&D", "100% Sales"]),
        "job_title": rng.choice([None, "SDE", "SDE II", "Manager", "Director of Sales"]),
        "country": rng.choice([None, "US", "us", "NL", "DE"]),
    }


@pytest.fixture(scope="module")
async def population(module_db_url: str) -> AsyncIterator[Population]:
    engine = create_engine(module_db_url, pool_size=2, max_overflow=0)
    sessionmaker = create_sessionmaker(engine)
    rng = random.Random(20240601)
    async with sessionmaker() as session:
        tokens = [
            EnrollmentToken(
                id=uuid.uuid4(),
                name=name,
                token_hash=os.urandom(32),
                prefix=f"p{i}",
                platforms=[p.value for p in Platform],
                ownership="company",
                expires_at=NOW + timedelta(days=30),
                created_at=NOW,
            )
            for i, name in enumerate(TOKEN_NAMES)
        ]
        session.add_all(tokens)
        await session.flush()
        devices = [_device(rng, i, [None, None, *tokens]) for i in range(360)]
        session.add_all(devices)
        connection = await session.connection()
        await connection.run_sync(USERS.create)
        users = [_user(rng) for _ in range(120)]
        await session.execute(insert(USERS), users)
        await session.commit()
    token_names: dict[uuid.UUID | None, str] = {t.id: t.name for t in tokens}
    device_values = {
        d.id: device_attribute_values(d, enrollment_profile_name=token_names.get(d.enrollment_token_id))
        for d in devices
    }
    user_values = {u["id"]: {attr: u[col] for attr, col in USER_COLUMNS.items()} for u in users}
    schema = bind_schema("user", {attr: USERS.c[col] for attr, col in USER_COLUMNS.items()})
    yield Population(sessionmaker, device_values, user_values, schema)
    await engine.dispose()


async def sql_devices(population: Population, text: str) -> set[uuid.UUID]:
    rule = parse_rule(text, DEVICE_SCHEMA)
    async with population.sessionmaker() as session:
        return set((await session.scalars(select(Device.id).where(compile_rule(rule, DEVICE_SCHEMA)))).all())


def python_devices(population: Population, text: str) -> set[uuid.UUID]:
    rule = parse_rule(text, DEVICE_SCHEMA)
    return {device_id for device_id, values in population.devices.items() if matches(rule, values)}


DEVICE_CORPUS = [
    '(device.deviceOSType -eq "iOS") -and (device.deviceOwnership -eq "Company")',
    '(device.deviceOSType -eq "iPad") -or (device.deviceOSType -eq "iOS")',
    'device.deviceOSType -startsWith "Android"',
    'device.deviceOSType -notStartsWith "AndroidEnterprise"',
    'device.deviceOSType -contains "os"',
    'device.deviceOSType -match "^(mac|win)"',
    'device.deviceOSType -notIn ["Windows", "MacMDM", "linux"]',
    'device.deviceOwnership -ne "Personal"',
    'device.displayName -eq "bob-laptop"',
    'device.displayName -ne "BOB-LAPTOP"',
    'device.displayName -startsWith "ALICE"',
    'device.displayName -endsWith "laptop"',
    'device.displayName -contains "%"',
    'device.displayName -contains "_"',
    'device.displayName -contains "\\"',
    'device.displayName -startsWith "50%"',
    'device.displayName -eq "a_b"',
    'device.displayName -eq "a\\_b"',
    'device.displayName -match "^kiosk-[0-9]+$"',
    'device.displayName -notMatch "laptop|phone"',
    'device.displayName -match "\\."',
    'device.displayName -match "GERÄT$"',
    'device.displayName -eq "ÜNÏCODE GERÄT"',
    'device.displayName -in ["KIOSK-01", "kiosk-02", "nobody"]',
    'device.displayName -eq ""',
    'device.displayName -match "break$" -and -not (device.displayName -match "^break")',
    'device.displayName -match "line.break"',
    'device.displayName -endsWith " " -or device.displayName -startsWith " "',
    'device.displayName -eq "\'; DROP TABLE devices; --"',
    "device.displayName -eq \"quote`\"d\" -or device.displayName -eq 'O''Brien'",
    "device.deviceOSVersion -eq null",
    "device.deviceOSVersion -ne null",
    'device.deviceOSVersion -startsWith "10.0.2"',
    'device.deviceOSVersion -notStartsWith "17"',
    'device.deviceOSVersion -ne "17.4"',
    'device.deviceOSVersion -notIn ["13", "14.4.1"]',
    'device.deviceOSVersion -notMatch "^1[0-9]\\."',
    'device.deviceOSVersion -eq ""',
    'device.deviceManufacturer -eq "apple"',
    'device.deviceManufacturer -notContains "apple"',
    'device.deviceManufacturer -in ["%", "Samsung"]',
    'device.deviceManufacturer -notEndsWith "inc."',
    'device.deviceModel -startsWith "Mac%"',
    'device.deviceModel -startsWith "Mac_"',
    'device.deviceModel -notEndsWith ",2" -and device.deviceModel -ne null',
    "device.isRooted -eq true",
    "device.isRooted -eq false",
    "device.isRooted -ne true",
    "device.isRooted -eq null",
    'device.enrollmentProfileName -eq "DEP iPhones"',
    'device.enrollmentProfileName -startsWith "kiosk_"',
    'device.enrollmentProfileName -contains "%"',
    'device.enrollmentProfileName -notIn ["DEP iPhones"]',
    "device.enrollmentProfileName -eq null",
    'device.cpuArchitecture -in ["ARM64"]',
    'device.cpuArchitecture -ne "x64"',
    'device.serialNumber -endsWith "7"',
    "device.objectId -ne null",
    '-not (device.deviceModel -eq "iPad Air")',
    '-not (device.deviceOSVersion -startsWith "17") -and -not (device.deviceManufacturer -eq "Apple")',
    'device.deviceOSType -eq "Windows" -and device.deviceOSVersion -startsWith "10.0.2" '
    '-or device.deviceOSType -eq "MacMDM" -and -not device.isRooted -eq true',
    '((device.deviceOwnership -eq "Personal") -or (device.isRooted -ne false)) '
    '-and -not (device.deviceManufacturer -in ["Apple", "apple inc."] -or device.deviceModel -eq null)',
]
ALWAYS = {"device.objectId -ne null"}


@pytest.mark.parametrize("text", DEVICE_CORPUS)
async def test_sql_and_python_agree_on_which_devices_match(population: Population, text: str) -> None:
    assert await sql_devices(population, text) == python_devices(population, text)


@pytest.mark.parametrize("text", DEVICE_CORPUS)
async def test_negating_a_rule_in_sql_selects_exactly_the_other_devices(
    population: Population, text: str
) -> None:
    rule = parse_rule(text, DEVICE_SCHEMA)
    negated = compile_rule(Not(rule.root), DEVICE_SCHEMA)
    async with population.sessionmaker() as session:
        others = set((await session.scalars(select(Device.id).where(negated))).all())
    assert others == set(population.devices) - await sql_devices(population, text)


def test_the_corpus_tells_devices_apart(population: Population) -> None:
    """Agreement only means something if the rules select some devices and not others."""
    total = len(population.devices)
    trivial = [
        t for t in DEVICE_CORPUS if len(python_devices(population, t)) in (0, total) and t not in ALWAYS
    ]
    assert trivial == []


async def test_an_object_id_selects_that_device(population: Population) -> None:
    chosen = sorted(population.devices)[:3]
    assert await sql_devices(population, f'device.objectId -eq "{str(chosen[0]).upper()}"') == {chosen[0]}
    listed = ", ".join(f'"{c}"' for c in chosen[1:])
    assert await sql_devices(population, f"device.deviceId -in [{listed}]") == set(chosen[1:])
    assert (
        len(await sql_devices(population, f'device.objectId -ne "{chosen[0]}"'))
        == len(population.devices) - 1
    )


async def test_wildcards_and_backslashes_in_values_match_only_themselves(population: Population) -> None:
    names = {v["displayName"] for v in population.devices.values()}
    assert {"50% off", "5000 off", "a_b", "axb", "a\\_b"} <= names  # the look-alikes are present

    async def selected(text: str) -> set[AttributeValue]:
        return {population.devices[d]["displayName"] for d in await sql_devices(population, text)}

    assert await selected('device.displayName -contains "%"') == {"50% off"}
    assert await selected('device.displayName -startsWith "50%"') == {"50% off"}
    assert await selected('device.displayName -eq "a_b"') == {"a_b"}
    assert await selected('device.displayName -contains "_"') == {"a_b", "a\\_b"}
    assert await selected('device.displayName -contains "\\_"') == {"a\\_b"}
    assert await selected('device.displayName -endsWith "\\slash"') == {"back\\slash"}
    assert await selected('device.displayName -contains "\\"') == {"back\\slash", "a\\_b"}


async def test_sql_in_a_value_is_only_text(population: Population) -> None:
    hostile = "'; DROP TABLE devices; --"
    text = f"device.displayName -eq \"{hostile}\" -or device.displayName -startsWith \"x' OR '1'='1\""
    rule = parse_rule(text, DEVICE_SCHEMA)
    statement = select(Device.id).where(compile_rule(rule, DEVICE_SCHEMA))
    compiled = statement.compile(dialect=postgresql_dialect())
    assert hostile not in str(compiled) and "OR '1'" not in str(compiled)  # values are parameters
    assert hostile in compiled.params.values()
    selected = await sql_devices(population, text)
    assert {population.devices[d]["displayName"] for d in selected} == {hostile}
    async with population.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(Device)) == len(population.devices)


async def test_a_regex_cannot_escape_its_parameter(population: Population) -> None:
    text = 'device.displayName -match "x\' OR true --"'
    assert await sql_devices(population, text) == set()


# ------------------------------------------------------------------------------------------------ users

USER_CORPUS = [
    'user.department -eq "Sales"',
    'user.department -ne "sales"',
    'user.department -startsWith "100%"',
    'user.department -in ["R&D", "Marketing"]',
    'user.department -eq "Sales" -and -not (user.jobTitle -startsWith "SDE")',
    'user.country -eq "US" -and (user.department -eq "Marketing" -or user.department -eq "Sales")',
    'user.userPrincipalName -endsWith "@EXAMPLE.com"',
    'user.userPrincipalName -startsWith "g_"',
    'user.mail -notEndsWith "@contoso.com"',
    "user.mail -ne null",
    'user.mail -eq ""',
    "user.accountEnabled -eq true",
    "user.accountEnabled -ne false",
    'user.displayName -match "^ada\\s"',
    'user.displayName -contains "\'"',
    'user.jobTitle -notContains "sales"',
    'user.displayName -contains "_"',
]


@pytest.mark.parametrize("text", USER_CORPUS)
async def test_sql_and_python_agree_on_which_users_match(population: Population, text: str) -> None:
    schema = population.user_schema
    rule = parse_rule(text, schema)
    async with population.sessionmaker() as session:
        in_sql = set((await session.scalars(select(USERS.c.id).where(compile_rule(rule, schema)))).all())
    in_python = {user_id for user_id, values in population.users.items() if matches(rule, values)}
    assert in_sql == in_python
    assert 0 < len(in_sql) < len(population.users)


def test_user_attributes_not_bound_yet_are_refused(population: Population) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule('user.city -eq "Lagos"', population.user_schema)
    assert (
        caught.value.message == "Property user.city isn't supported at column 1; Corral doesn't record it yet"
    )
    parse_rule('user.city -eq "Lagos"', USER_RULES)  # the full vocabulary knows it


def test_binding_names_that_are_not_attributes_of_the_kind_fails() -> None:
    with pytest.raises(ValueError, match="not user attributes: deviceModel"):
        bind_schema(EntityKind.user, {"deviceModel": USERS.c.job_title})


def test_a_rule_compiles_only_for_its_own_kind(population: Population) -> None:
    rule = parse_rule('device.displayName -eq "x"', DEVICE_SCHEMA)
    with pytest.raises(ValueError, match="device rule"):
        compile_rule(rule, population.user_schema)


# ------------------------------------------------------------------------------------------------ schema


def test_every_device_attribute_is_bound() -> None:
    assert set(DEVICE_SCHEMA.attributes) == set(DEVICE_ATTRIBUTES)
    assert set(DEVICE_FIELDS) | {"enrollmentProfileName"} == set(DEVICE_ATTRIBUTES)


@pytest.mark.parametrize("name", sorted(DEVICE_FIELDS))
def test_declared_nullability_matches_the_device_column(name: str) -> None:
    column = Device.__table__.c[DEVICE_FIELDS[name]]
    assert DEVICE_ATTRIBUTES[name].nullable is column.nullable


def test_choices_cover_every_stored_value() -> None:
    assert {c.stored for c in DEVICE_ATTRIBUTES["deviceOSType"].choices} == {p.value for p in Platform}
    assert {c.stored for c in DEVICE_ATTRIBUTES["deviceOwnership"].choices} == {o.value for o in Ownership}


def test_the_reference_documents_every_attribute() -> None:
    reference = (Path(__file__).parents[2] / "docs" / "dynamic-groups.md").read_text()
    for attribute in [*DEVICE_ATTRIBUTES.values(), *USER_ATTRIBUTES.values()]:
        assert f"`{attribute.name}`" in reference, attribute.name
    for attribute in DEVICE_ATTRIBUTES.values():
        for choice in attribute.choices:
            assert all(f"`{n}`" in reference for n in choice.names), choice
    assert AttributeType.choice in {a.type for a in DEVICE_ATTRIBUTES.values()}


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("plain", "plain"),
        ("50%", "50\\%"),
        ("a_b", "a\\_b"),
        ("back\\slash", "back\\\\slash"),
        ("\\%_", "\\\\\\%\\_"),
    ],
)
def test_like_escaping(value: str, escaped: str) -> None:
    assert escape_like(value) == escaped


# ------------------------------------------------------------------------------------- regular expressions

PATTERNS = [
    "",
    "abc",
    "^abc$",
    "a.c",
    "a.*c",
    "a.+?c",
    "colou?r",
    "[a-c]x",
    "[^a-c]",
    "[]a]",
    "[a\\]]",
    "[a-]",
    "\\d+",
    "\\D",
    "\\w+\\s\\w+",
    "[\\d.]+",
    "\\.",
    "\\$",
    "a{2}",
    "a{2,}",
    "a{1,3}b",
    "(ab|cd)e",
    "(?:ab)+",
    "(a)\\1",
    "a(?=b)",
    "a(?!b)",
    "(?<=a)b",
    "(?<!a)b",
    "\\Aab",
    "ab\\Z",
    "b$",
    "^b",
    "x.y",
    "\\n",
    "[\\n]",
    "a|",
    "()",
    "ä+",
    "[[a]",
    "^[0-9]+\\.[0-9]+(\\.[0-9]+)?$",
]
SUBJECTS = [
    "",
    "abc",
    "ABC",
    "aac",
    "abd",
    "xcd",
    "abab",
    "aab",
    "ab\n",
    "x\ny",
    "10.0.1",
    "17.5",
    "color",
    "Ä",
    "a]",
    "[x",
]


async def test_accepted_patterns_behave_the_same_in_postgresql_and_python(population: Population) -> None:
    async with population.sessionmaker() as session:
        for pattern in PATTERNS:
            compiled = python_regex(pattern)
            in_sql = (
                await session.execute(
                    select(*[literal(s).regexp_match(pattern, flags="i") for s in SUBJECTS])
                )
            ).one()
            in_python = tuple(compiled.search(s) is not None for s in SUBJECTS)
            assert tuple(in_sql) == in_python, pattern
