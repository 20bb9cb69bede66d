"""The rule language's syntax: tokens, precedence, values, canonical form and limits (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from corral.groups.rules import (
    DEVICE_RULES,
    MAX_LIST_VALUES,
    MAX_NESTING,
    MAX_RULE_LENGTH,
    USER_RULES,
    And,
    BoolValue,
    Comparison,
    EntityKind,
    ListValue,
    Node,
    Not,
    NullValue,
    Operator,
    Or,
    RuleError,
    StringValue,
    format_rule,
    parse_rule,
    tokenize,
)


def shape(node: Node) -> Any:
    """A compact structure: comparisons by attribute name, logic as nested tuples."""
    if isinstance(node, Comparison):
        return node.attribute.name
    if isinstance(node, Not):
        return ("not", shape(node.operand))
    return ("and" if isinstance(node, And) else "or", *(shape(child) for child in node.operands))


def device(text: str) -> Node:
    return parse_rule(text, DEVICE_RULES).root


A = 'device.displayName -eq "a"'
B = 'device.deviceModel -eq "b"'
C = 'device.deviceManufacturer -eq "c"'
D = 'device.serialNumber -eq "d"'


def test_the_issue_example_parses_into_a_tree() -> None:
    rule = parse_rule(
        '(device.deviceOSType -eq "iOS") -and (device.deviceOwnership -eq "Company")', DEVICE_RULES
    )
    assert rule.kind is EntityKind.device
    assert isinstance(rule.root, And)
    first, second = rule.root.operands
    assert isinstance(first, Comparison) and isinstance(second, Comparison)
    assert (first.attribute.name, first.operator, first.value) == (
        "deviceOSType",
        Operator.eq,
        StringValue("iOS"),
    )
    assert (second.attribute.name, second.value) == ("deviceOwnership", StringValue("Company"))
    assert rule.attributes == {"deviceOSType", "deviceOwnership"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{A} -or {B} -and {C}", ("or", "displayName", ("and", "deviceModel", "deviceManufacturer"))),
        (f"{A} -and {B} -or {C}", ("or", ("and", "displayName", "deviceModel"), "deviceManufacturer")),
        (
            f"{A} -and {B} -or {C} -and {D}",
            ("or", ("and", "displayName", "deviceModel"), ("and", "deviceManufacturer", "serialNumber")),
        ),
        (f"-not {A} -and {B}", ("and", ("not", "displayName"), "deviceModel")),
        (f"-not {A} -or {B}", ("or", ("not", "displayName"), "deviceModel")),
        (f"{A} -and -not {B}", ("and", "displayName", ("not", "deviceModel"))),
        (f"-not ({A} -or {B})", ("not", ("or", "displayName", "deviceModel"))),
        (f"({A} -or {B}) -and {C}", ("and", ("or", "displayName", "deviceModel"), "deviceManufacturer")),
        (f"{A} -or {B} -or {C}", ("or", "displayName", "deviceModel", "deviceManufacturer")),
        (f"{A} -and ({B} -and {C})", ("and", "displayName", ("and", "deviceModel", "deviceManufacturer"))),
        (f"-not -not {A}", ("not", ("not", "displayName"))),
        (f"((({A})))", "displayName"),
    ],
)
def test_entra_precedence_comparisons_then_not_then_and_then_or(text: str, expected: Any) -> None:
    assert shape(device(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        'device.deviceOSType -EQ "iOS"',
        'device.deviceOSType -Eq "iOS"',
        'DEVICE.DEVICEOSTYPE -eq "iOS"',
        'device.deviceostype eq "iOS"',  # Entra accepts operators without the hyphen
        'device.deviceOSType \u2013eq "iOS"',  # an en dash pasted from a document
        '  device.deviceOSType\n\t-eq\r\n"iOS"  ',
    ],
)
def test_operators_and_property_names_ignore_case_and_spacing(text: str) -> None:
    assert device(text) == device('device.deviceOSType -eq "iOS"')


def test_logical_operators_ignore_case_and_the_hyphen() -> None:
    expected = shape(device(f"{A} -or -not {B} -and {C}"))
    assert shape(device(f"{A} -OR -Not {B} -AnD {C}")) == expected
    assert shape(device(f"{A} or not {B} and {C}")) == expected


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("-startsWith", Operator.starts_with),
        ("-STARTSWITH", Operator.starts_with),
        ("-notStartsWith", Operator.not_starts_with),
        ("-endswith", Operator.ends_with),
        ("-notEndsWith", Operator.not_ends_with),
        ("-contains", Operator.contains),
        ("-notcontains", Operator.not_contains),
        ("-match", Operator.match),
        ("-NotMatch", Operator.not_match),
        ("-ne", Operator.ne),
    ],
)
def test_every_text_operator_parses(operator: str, expected: Operator) -> None:
    node = device(f'device.displayName {operator} "x"')
    assert isinstance(node, Comparison) and node.operator is expected


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ('"plain"', "plain"),
        ('""', ""),
        ('"say `"hi`""', 'say "hi"'),  # Entra escapes a double quote with a backtick
        ('"`"Sales`""', '"Sales"'),
        ('"tick``tock"', "tick`tock"),
        ('"lone ` tick"', "lone ` tick"),
        ('"back\\slash"', "back\\slash"),  # backslashes are ordinary characters
        ('"\\"', "\\"),
        ("'single'", "single"),
        ("'O''Brien'", "O'Brien"),  # in single quotes, '' is a quote
        ('"it\'s"', "it's"),
        ('"ünïcode ✓"', "ünïcode ✓"),
        ('"-and -or ( ) [ ]"', "-and -or ( ) [ ]"),
        ('"multi\nline"', "multi\nline"),
    ],
)
def test_string_literals_and_their_escapes(literal: str, value: str) -> None:
    node = device(f"device.displayName -eq {literal}")
    assert isinstance(node, Comparison) and node.value == StringValue(value)


def test_a_quote_escape_cannot_break_out_of_the_value() -> None:
    node = device('device.displayName -eq "x`" -or device.objectId -ne null -or `"y"')
    assert isinstance(node, Comparison)
    assert node.value == StringValue('x" -or device.objectId -ne null -or "y')


@pytest.mark.parametrize(
    ("literal", "value"),
    [("null", NullValue()), ("NULL", NullValue()), ("Null", NullValue()), ('"null"', StringValue("null"))],
)
def test_null_is_a_keyword_and_quoted_null_is_text(literal: str, value: object) -> None:
    node = device(f"device.deviceModel -eq {literal}")
    assert isinstance(node, Comparison) and node.value == value


@pytest.mark.parametrize(("literal", "value"), [("true", True), ("TRUE", True), ("False", False)])
def test_booleans(literal: str, value: bool) -> None:
    node = device(f"device.isRooted -eq {literal}")
    assert isinstance(node, Comparison) and node.value == BoolValue(value)


def test_lists_for_in_and_not_in() -> None:
    node = device('device.deviceModel -in ["a", "B",\n  \'c\' , "d`"e"]')
    assert isinstance(node, Comparison) and node.operator is Operator.in_
    assert isinstance(node.value, ListValue) and node.value.values == ("a", "B", "c", 'd"e')
    node = device('device.deviceModel -notIn ["only"]')
    assert isinstance(node, Comparison) and node.operator is Operator.not_in
    assert node.value == ListValue((StringValue("only"),))


def test_a_list_may_hold_the_maximum_number_of_values() -> None:
    values = ",".join(f'"{i}"' for i in range(MAX_LIST_VALUES))
    node = device(f"device.deviceModel -in [{values}]")
    assert isinstance(node, Comparison) and isinstance(node.value, ListValue)
    assert len(node.value.items) == MAX_LIST_VALUES


def test_choice_values_accept_entra_and_corral_spellings_in_any_case() -> None:
    for name in ("iOS", "ios", "IPHONE", "iPad", "ipados", "MacMDM", "macOS", "AndroidForWork", "windows"):
        device(f'device.deviceOSType -eq "{name}"')
    for name in ("Company", "corporate", "PERSONAL"):
        device(f'device.deviceOwnership -eq "{name}"')


def test_user_rules_use_user_properties() -> None:
    rule = parse_rule('user.department -eq "Sales" -and user.accountEnabled -eq true', USER_RULES)
    assert rule.kind is EntityKind.user
    assert rule.attributes == {"department", "accountEnabled"}


def test_spans_point_into_the_text() -> None:
    text = 'device.displayName -eq "x" -and -not device.deviceModel -startsWith "y"'
    node = device(text)
    assert isinstance(node, And)
    first, negation = node.operands
    assert isinstance(first, Comparison) and isinstance(negation, Not)
    assert text[first.span.start : first.span.end] == 'device.displayName -eq "x"'
    assert text[first.property_span.start : first.property_span.end] == "device.displayName"
    assert text[first.value.span.start : first.value.span.end] == '"x"'
    assert text[negation.span.start : negation.span.end] == '-not device.deviceModel -startsWith "y"'


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ('(device.deviceostype -eq "iOS")', 'device.deviceOSType -eq "iOS"'),
        (f"{A} -or ({B} -and {C})", f"{A} -or {B} -and {C}"),
        (f"({A} -or {B}) -and {C}", f"({A} -or {B}) -and {C}"),
        (f"{A} -and ({B} -and {C})", f"{A} -and ({B} -and {C})"),
        (f"-not {A}", f"-not ({A})"),
        (f"not not {A}", f"-not -not ({A})"),
        ("device.displayName -eq 'say \"hi\"'", 'device.displayName -eq "say `"hi`""'),
        ('device.displayName -eq "a``b"', 'device.displayName -eq "a``b"'),
        ("device.deviceModel -in ['a','b']", 'device.deviceModel -in ["a", "b"]'),
        ("device.isRooted -ne TRUE", "device.isRooted -ne true"),
        ("device.deviceModel -eq NULL", "device.deviceModel -eq null"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert format_rule(device(text)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        f"{A} -or {B} -and -not ({C} -or {D})",
        f"(({A} -or {B}) -and ({C} -or -not {D})) -or -not -not {A}",
        'device.displayName -match "^a.*`"b$" -and device.deviceModel -notIn ["x", "y`"", "z``"]',
        "device.deviceOwnership -eq 'Company' -and device.deviceOSType -startsWith \"Android\"",
    ],
)
def test_the_canonical_form_parses_back_to_the_same_tree(text: str) -> None:
    node = device(text)
    assert device(format_rule(node)) == node


def test_rules_up_to_the_length_limit_are_accepted() -> None:
    prefix = 'device.displayName -eq "'
    text = prefix + "x" * (MAX_RULE_LENGTH - len(prefix) - 1) + '"'
    assert len(text) == MAX_RULE_LENGTH
    parse_rule(text, DEVICE_RULES)


def test_one_character_over_the_limit_is_refused() -> None:
    prefix = 'device.displayName -eq "'
    text = prefix + "x" * (MAX_RULE_LENGTH - len(prefix)) + '"'
    with pytest.raises(RuleError) as caught:
        parse_rule(text, DEVICE_RULES)
    assert caught.value.offset == MAX_RULE_LENGTH
    assert caught.value.column == MAX_RULE_LENGTH + 1
    assert caught.value.message.startswith(
        "The rule is longer than 3,072 characters at column 3073; it has 3,073"
    )


def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_refused() -> None:
    depth = MAX_NESTING
    assert shape(device("(" * depth + A + ")" * depth)) == "displayName"
    with pytest.raises(RuleError, match="nested too deeply"):
        device("(" * (depth + 1) + A + ")" * (depth + 1))
    with pytest.raises(RuleError, match="nested too deeply"):
        device("-not " * (depth + 1) + A)


def test_a_pathologically_nested_rule_is_an_error_not_a_crash() -> None:
    with pytest.raises(RuleError, match="nested too deeply"):
        device("(" * 1500 + A + ")" * 1500)


def test_a_long_flat_chain_within_the_limit_parses() -> None:
    text = " -or ".join(f'device.serialNumber -eq "{i:04}"' for i in range(80))
    node = device(text)
    assert isinstance(node, Or) and len(node.operands) == 80


def test_tokens_carry_positions() -> None:
    tokens = tokenize('(device.x -eq "a`"b")')
    assert [(t.kind.value, t.value, t.start, t.end) for t in tokens] == [
        ("(", "(", 0, 1),
        ("word", "device.x", 1, 9),
        ("operator", "eq", 10, 13),
        ("string", 'a"b', 14, 20),
        (")", ")", 20, 21),
        ("end", "", 21, 21),
    ]
