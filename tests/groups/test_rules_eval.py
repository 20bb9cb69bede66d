"""The Python evaluator: semantics of every operator, null handling, and the "why" explanation."""

from __future__ import annotations

import uuid

import pytest

from corral.groups.rules import (
    DEVICE_RULES,
    AttributeValue,
    ConditionResult,
    LogicResult,
    evaluate,
    explanation_lines,
    matches,
    parse_rule,
)

DEVICE_ID = uuid.UUID("0b7f4c2e-8f7a-4d53-9d0e-3c1f5a2b6e11")


def values(**overrides: AttributeValue) -> dict[str, AttributeValue]:
    base: dict[str, AttributeValue] = {
        "objectId": DEVICE_ID,
        "deviceId": DEVICE_ID,
        "displayName": "Alice's iPhone",
        "deviceOSType": "ios",
        "deviceOSVersion": "17.5.1",
        "deviceOwnership": "company",
        "deviceManufacturer": "Apple",
        "deviceModel": "iPhone15,2",
        "isRooted": False,
        "enrollmentProfileName": "DEP iPhones",
        "serialNumber": "F2LX1234",
        "cpuArchitecture": "arm64",
    }
    base.update(overrides)
    return base


def check(text: str, **overrides: AttributeValue) -> bool:
    return matches(parse_rule(text, DEVICE_RULES), values(**overrides))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('device.displayName -eq "alice\'s iphone"', True),
        ('device.displayName -eq "Alice"', False),
        ('device.displayName -ne "ALICE\'S IPHONE"', False),
        ('device.displayName -startsWith "ALI"', True),
        ('device.displayName -notStartsWith "ali"', False),
        ('device.displayName -endsWith "PHONE"', True),
        ('device.displayName -notEndsWith "pad"', True),
        ('device.displayName -contains "S IP"', True),
        ('device.displayName -notContains "android"', True),
        ('device.displayName -match "^a.*phone$"', True),
        ('device.displayName -match "IPHONE"', True),  # a search, not a full match
        ('device.displayName -notMatch "^iphone"', True),
        ('device.displayName -in ["x", "ALICE\'S IPHONE"]', True),
        ('device.displayName -notIn ["x", "y"]', True),
        ('device.displayName -contains ""', True),
        ('device.displayName -eq ""', False),
        ('device.deviceOSVersion -startsWith "17."', True),
        ('device.deviceOSVersion -startsWith "17.5.1.0"', False),
        ('device.objectId -eq "0B7F4C2E-8F7A-4D53-9D0E-3C1F5A2B6E11"', True),
        ('device.objectId -eq "0b7f4c2e8f7a4d539d0e3c1f5a2b6e11"', True),  # UUID spellings
        ('device.objectId -ne "00000000-0000-0000-0000-000000000000"', True),
        ('device.deviceId -in ["00000000-0000-0000-0000-000000000000"]', False),
        ("device.objectId -ne null", True),
        ("device.isRooted -eq false", True),
        ("device.isRooted -ne true", True),
        ("device.isRooted -eq true", False),
    ],
)
def test_text_id_and_boolean_operators(text: str, expected: bool) -> None:
    assert check(text) is expected


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ('-eq "x"', False),
        ('-ne "x"', True),
        ('-startsWith ""', False),
        ('-notStartsWith "x"', True),
        ('-endsWith "x"', False),
        ('-notEndsWith "x"', True),
        ('-contains ""', False),
        ('-notContains "x"', True),
        ('-match ".*"', False),
        ('-notMatch "x"', True),
        ('-in ["x"]', False),
        ('-notIn ["x"]', True),
        ("-eq null", True),
        ("-ne null", False),
    ],
)
def test_a_null_value_fails_positive_operators_and_passes_negative_ones(
    operator: str, expected: bool
) -> None:
    assert check(f"device.deviceModel {operator}", deviceModel=None) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("device.isRooted -eq true", False),
        ("device.isRooted -eq false", False),  # unknown is not false
        ("device.isRooted -ne true", True),
        ("device.isRooted -ne false", True),
        ("device.isRooted -eq null", True),
        ("device.isRooted -ne null", False),
    ],
)
def test_an_unknown_boolean_is_neither_true_nor_false(text: str, expected: bool) -> None:
    assert check(text, isRooted=None) is expected


def test_an_empty_string_is_a_value_not_null() -> None:
    assert check('device.deviceModel -eq ""', deviceModel="")
    assert not check("device.deviceModel -eq null", deviceModel="")
    assert check('device.deviceModel -startsWith ""', deviceModel="")


@pytest.mark.parametrize(
    ("text", "stored", "expected"),
    [
        ('device.deviceOSType -eq "iOS"', "ios", True),
        ('device.deviceOSType -eq "iOS"', "ipados", False),  # Entra reports iPads as "iPad"
        ('device.deviceOSType -eq "iPad"', "ipados", True),
        ('device.deviceOSType -eq "IPADOS"', "ipados", True),
        ('device.deviceOSType -eq "iPhone"', "ios", True),
        ('device.deviceOSType -eq "MacMDM"', "macos", True),
        ('device.deviceOSType -eq "macOS"', "macos", True),
        ('device.deviceOSType -eq "AndroidForWork"', "android", True),
        ('device.deviceOSType -eq "AndroidEnterprise"', "android", True),
        ('device.deviceOSType -startsWith "AndroidEnterprise"', "android", True),
        ('device.deviceOSType -startsWith "Android"', "android", True),
        ('device.deviceOSType -notStartsWith "Android"', "android", False),
        ('device.deviceOSType -startsWith "Android"', "linux", False),
        ('device.deviceOSType -contains "mac"', "macos", True),
        ('device.deviceOSType -endsWith "OS"', "ios", True),
        ('device.deviceOSType -endsWith "OS"', "windows", False),
        ('device.deviceOSType -match "^i"', "ipados", True),
        ('device.deviceOSType -notMatch "^i"', "ios", False),
        ('device.deviceOSType -in ["iOS", "iPad"]', "ipados", True),
        ('device.deviceOSType -notIn ["iOS", "iPad"]', "windows", True),
        ('device.deviceOSType -ne "Windows"', "windows", False),
        ('device.deviceOwnership -eq "Corporate"', "company", True),
        ('device.deviceOwnership -eq "company"', "company", True),
        ('device.deviceOwnership -ne "Personal"', "company", True),
    ],
)
def test_choices_match_by_any_of_their_names(text: str, stored: str, expected: bool) -> None:
    attribute = "deviceOSType" if "deviceOSType" in text else "deviceOwnership"
    assert check(text, **{attribute: stored}) is expected


def test_injection_like_values_are_just_text() -> None:
    assert check(
        'device.displayName -eq "\'; DROP TABLE devices; --"', displayName="'; DROP TABLE devices; --"
    )
    assert not check('device.displayName -contains "%"', displayName="anything")
    assert check('device.displayName -contains "%"', displayName="50% off")
    assert not check('device.displayName -eq "a_c"', displayName="abc")
    assert check('device.displayName -startsWith "back\\"', displayName="back\\slash")


def test_missing_attribute_values_are_a_programming_error() -> None:
    rule = parse_rule('device.deviceModel -eq "x"', DEVICE_RULES)
    with pytest.raises(KeyError, match=r"device\.deviceModel"):
        evaluate(rule, {"displayName": "x"})


def test_the_explanation_shows_every_clause_with_its_value() -> None:
    rule = parse_rule(
        '(device.deviceOSType -eq "iOS" -or device.deviceOSType -eq "iPad") '
        "-and -not (device.deviceModel -eq null) -and device.isRooted -ne true",
        DEVICE_RULES,
    )
    explanation = evaluate(rule, values(deviceOSType="ipados", deviceModel=None))
    assert explanation.result is False
    assert isinstance(explanation, LogicResult) and explanation.operator == "-and"
    platform, not_null, rooted = explanation.children
    assert isinstance(platform, LogicResult) and platform.result is True
    first, second = platform.children  # every operand is evaluated, even after the answer is known
    assert isinstance(first, ConditionResult) and isinstance(second, ConditionResult)
    assert (first.attribute, first.actual, first.operator, first.expected, first.result) == (
        "device.deviceOSType",
        "iPad",  # shown by its Entra name, not the stored "ipados"
        "-eq",
        "iOS",
        False,
    )
    assert second.result is True
    assert isinstance(not_null, LogicResult) and not_null.result is False
    assert isinstance(rooted, ConditionResult) and rooted.actual is False and rooted.result is True
    assert explanation_lines(explanation) == [
        "✗ -and: 2 of 3 true",
        "  ✓ -or: 1 of 2 true",
        '    ✗ device.deviceOSType -eq "iOS": device.deviceOSType is "iPad"',
        '    ✓ device.deviceOSType -eq "iPad": device.deviceOSType is "iPad"',
        "  ✗ -not: the condition is true",
        "    ✓ device.deviceModel -eq null: device.deviceModel is null (no value)",
        "  ✓ device.isRooted -ne true: device.isRooted is false",
    ]


def test_the_explanation_serialises_for_an_api() -> None:
    rule = parse_rule('device.deviceModel -in ["a", "b"] -or device.objectId -ne null', DEVICE_RULES)
    assert evaluate(rule, values(deviceModel="B")).to_dict() == {
        "type": "logic",
        "operator": "-or",
        "result": True,
        "children": [
            {
                "type": "condition",
                "attribute": "device.deviceModel",
                "actual": "B",
                "operator": "-in",
                "expected": ["a", "b"],
                "result": True,
                "text": 'device.deviceModel -in ["a", "b"]',
            },
            {
                "type": "condition",
                "attribute": "device.objectId",
                "actual": str(DEVICE_ID),
                "operator": "-ne",
                "expected": None,
                "result": True,
                "text": "device.objectId -ne null",
            },
        ],
    }
