"""The SCIM filter parser and compiler, without a database: precedence, value paths, PATCH paths, and values
that only ever reach SQL as bound parameters."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects import postgresql

from corral.scim.errors import ScimError
from corral.scim.filters import (
    ENTERPRISE,
    Compare,
    Logical,
    Not,
    Present,
    ValuePath,
    compile_filter,
    parse_filter,
    parse_patch_path,
)
from corral.scim.repository import USER_ATTRIBUTES


def test_and_binds_tighter_than_or_and_keywords_are_case_insensitive() -> None:
    node = parse_filter('userName EQ "a" OR title pr AND not (active eq False)')
    assert node == Logical(
        "or",
        Compare("username", "eq", "a"),
        Logical("and", Present("title"), Not(Compare("active", "eq", False))),
    )


def test_value_paths_and_schema_prefixes() -> None:
    assert parse_filter('emails[type eq "work"]') == ValuePath("emails", Compare("type", "eq", "work"))
    core = parse_filter('urn:ietf:params:scim:schemas:core:2.0:User:userName eq "a"')
    assert core == Compare("username", "eq", "a")
    assert parse_filter(f'{ENTERPRISE}:department eq "x"') == Compare(
        f"{ENTERPRISE.lower()}:department", "eq", "x"
    )


@pytest.mark.parametrize("value", ["x' OR '1'='1", 'a"; DROP TABLE users; --', "100%_\\"])
def test_values_are_bound_parameters_never_sql_text(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    for op in ("eq", "co", "sw"):
        clause = compile_filter(parse_filter(f'userName {op} "{escaped}"'), USER_ATTRIBUTES)
        compiled = clause.compile(dialect=postgresql.dialect())
        assert value.lower() not in str(compiled)
        assert compiled.params, "the value is a parameter"
        if op == "eq":  # co and sw escape LIKE wildcards in the parameter
            assert value.lower() in compiled.params.values()


def test_patch_paths() -> None:
    assert parse_patch_path("name.givenName").sub_attribute == "givenname"
    work = parse_patch_path('emails[type eq "work"].value')
    assert (work.attribute, work.sub_attribute) == ("emails", "value")
    assert work.value_filter == Compare("type", "eq", "work")
    dept = parse_patch_path(f"{ENTERPRISE}:department")
    assert dept.attribute == f"{ENTERPRISE.lower()}:department" and dept.sub_attribute is None
    member = parse_patch_path('members[value eq "2819c223"]')
    assert member.value_filter == Compare("value", "eq", "2819c223")
    with pytest.raises(ScimError) as caught:
        parse_patch_path('members[value eq "x"')
    assert caught.value.scim_type == "invalidPath"
