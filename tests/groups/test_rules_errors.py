"""Bad rules: each refused with a precise reason, position and excerpt (no database)."""

from __future__ import annotations

import pytest

from corral.groups.rules import DEVICE_RULES, USER_RULES, RuleError, parse_rule


def error_of(text: str) -> RuleError:
    with pytest.raises(RuleError) as caught:
        parse_rule(text, DEVICE_RULES)
    return caught.value


def test_the_issue_example_message() -> None:
    error = error_of('(device.deviceOSTyp -eq "iOS")')
    assert error.message == "Unknown property device.deviceOSTyp at column 2; did you mean deviceOSType?"
    assert (error.offset, error.column, error.line, error.length) == (1, 2, 1, 18)
    assert error.excerpt == '(device.deviceOSTyp -eq "iOS")\n ^^^^^^^^^^^^^^^^^^'
    assert error.reason == "Unknown property device.deviceOSTyp"
    assert error.hint == "did you mean deviceOSType?"
    assert str(error) == error.message


# (rule, the start of the message up to and including the position, the highlighted source text)
CASES = [
    # properties
    ('device.foo -eq "x"', "Unknown property device.foo at column 1", "device.foo"),
    (
        'device.deviceModle -eq "x"',
        "Unknown property device.deviceModle at column 1; did you mean deviceModel?",
        None,
    ),
    ("device.accountEnabled -eq true", "Property device.accountEnabled isn't supported at column 1", None),
    (
        'device.extensionAttribute3 -eq "x"',
        "Property device.extensionAttribute3 isn't supported at column 1",
        None,
    ),
    (
        'device.devicePhysicalIds -any _ -startsWith "[ZTDId]"',
        "Property device.devicePhysicalIds isn't supported",
        None,
    ),
    (
        'devices.displayName -eq "x"',
        "Unknown object devices at column 1; did you mean device?",
        "devices.displayName",
    ),
    ('device. -eq "x"', "Missing property name after device. at column 1", "device."),
    (
        'displayName -eq "x"',
        "Property displayName needs its object at column 1; write device.displayName",
        None,
    ),
    (
        "device.displayName -eq device.deviceModel",
        "Comparing two properties isn't supported at column 24",
        None,
    ),
    ('Direct Reports for "x"', "Direct reports rules aren't supported at column 1", "Direct"),
    # one kind of object per rule
    (
        'user.mail -eq "x"',
        "user.mail is a user property, but this is a rule for devices at column 1",
        "user.mail",
    ),
    (
        'device.displayName -eq "x" -and user.mail -eq "y"',
        "A rule can't mix device and user properties: user.mail at column 33",
        "user.mail",
    ),
    # operators
    ('device.displayName -equals "x"', "Unknown operator -equals at column 20; did you mean -eq?", "-equals"),
    (
        'device.displayName -startWith "x"',
        "Unknown operator -startWith at column 20; did you mean -startsWith?",
        None,
    ),
    (
        'device.displayName -notcontain "x"',
        "Unknown operator -notcontain at column 20; did you mean -notContains?",
        None,
    ),
    ('device.displayName -ge "x"', "Operator -ge isn't supported at column 20", "-ge"),
    ("device.displayName -not null", "-not isn't a comparison operator at column 20", "-not"),
    (
        'device.displayName "x"',
        'Expected an operator such as -eq after device.displayName, found "x" at column 20',
        None,
    ),
    ("device.displayName", "Missing operator after device.displayName at column 19", None),
    ('device.displayName - eq "x"', "Expected an operator name after '-' at column 20", "-"),
    ('-eq "x"', "Missing property before -eq at column 1", "-eq"),
    # values
    ("device.displayName -eq", "Missing value after -eq at column 23", None),
    (
        'device.displayName -eq -and device.deviceModel -eq "x"',
        "Missing value after -eq at column 24",
        "-and",
    ),
    ('device.displayName -eq "x', "Unterminated text value at column 24", '"x'),
    ("device.displayName -eq 'x", "Unterminated text value at column 24", "'x"),
    ('device.displayName -eq "x`"', "Unterminated text value at column 24", '"x`"'),
    ("device.displayName -eq x", 'Unquoted value x at column 24; put text in double quotes: "x"', "x"),
    ("device.deviceOSVersion -eq 9.1", "Unquoted value 9.1 at column 28", "9.1"),
    ("device.deviceOSVersion -eq -1", "Unquoted value -1 at column 28", "-1"),
    ("device.displayName -eq \u201cx\u201d", "Typographic quote \u201c at column 24", "\u201c"),
    ('device.displayName -eq "a\x00b"', "Text values can't contain the NUL character at column 26", None),
    ('device.displayName -eq "x" & device.deviceModel -eq "y"', "Unexpected character '&' at column 28", "&"),
    ('device.displayName -eq "x" $', "Unexpected character '$' at column 28", "$"),
    (
        'device.isRooted -startsWith "t"',
        "Operator -startsWith can't be used with device.isRooted",
        "-startsWith",
    ),
    ('device.isRooted -eq "true"', "device.isRooted is true or false at column 21", '"true"'),
    ("device.displayName -eq true", "device.displayName holds text, not true/false at column 24", "true"),
    ("device.displayName -startsWith null", "null can't be used with -startsWith at column 32", "null"),
    (
        'device.deviceOSType -eq "Blackberry"',
        "Unknown deviceOSType 'Blackberry' at column 25; expected one of",
        None,
    ),
    (
        'device.deviceOSType -in ["iOS", "IOS "]',
        "Unknown deviceOSType 'IOS ' at column 33; did you mean iOS?",
        None,
    ),
    ('device.deviceOwnership -eq "Unknown"', "Unknown deviceOwnership 'Unknown' at column 28", '"Unknown"'),
    ('device.objectId -eq "abc"', "Not a valid object ID: 'abc' at column 21", '"abc"'),
    (
        'device.objectId -startsWith "abc"',
        "Operator -startsWith can't be used with device.objectId, an ID",
        None,
    ),
    # lists
    ("device.displayName -in []", "Empty list at column 24", "[]"),
    ('device.displayName -in ["a",]', "Missing value in the list at column 29", "]"),
    ('device.displayName -in [,"a"]', "Missing value in the list at column 25", ","),
    ('device.displayName -in ["a" "b"]', 'Expected , or ] in the list, found "b" at column 29', '"b"'),
    (
        'device.displayName -in ["a", null]',
        "Lists hold text values in double quotes, found 'null' at column 30",
        None,
    ),
    ('device.displayName -in ["a"', "Unclosed list at column 24", "["),
    ('device.displayName -in "a"', "-in needs a list of values at column 24", '"a"'),
    ('device.displayName -notIn "a"', "-notIn needs a list of values at column 27", '"a"'),
    ('device.displayName -eq ["a"]', "-eq compares with one value, not a list at column 24", '["a"]'),
    # structure
    ('(device.displayName -eq "x"', "Unclosed parenthesis at column 1", "("),
    (
        '((device.displayName -eq "x") -and (device.deviceModel -eq "y")',
        "Unclosed parenthesis at column 1",
        "(",
    ),
    (
        '(device.displayName -eq "x" device.deviceModel -eq "y")',
        "Expected -and, -or or ), found 'device.deviceModel'",
        None,
    ),
    ('device.displayName -eq "x")', "Unmatched closing parenthesis at column 27", ")"),
    (
        'device.displayName -eq "x" garbage',
        "Expected -and, -or or the end of the rule, found 'garbage' at column 28",
        None,
    ),
    (
        'device.displayName -eq "x" "y"',
        'Expected -and, -or or the end of the rule, found "y" at column 28',
        None,
    ),
    ('-and device.displayName -eq "x"', "Expected a condition such as device.displayName", "-and"),
    ('device.displayName -eq "x" -and', "Missing condition after -and at column 32", None),
    ('device.displayName -eq "x" -or -not', "Missing condition after -not at column 36", None),
    ('device.displayName -eq "x" -or ()', "Empty parentheses at column 32", "()"),
    ("", "The rule is empty at column 1", None),
    ("  \n ", "The rule is empty at line 1, column 1", None),
    # regular expressions
    ('device.displayName -match "(a"', "Invalid regular expression: missing ) at column 28", "("),
    ('device.displayName -match "a)"', "Invalid regular expression: unmatched ) at column 29", ")"),
    ('device.displayName -match "[a"', "Invalid regular expression: unterminated [ at column 28", "["),
    (
        'device.displayName -match "*a"',
        "Invalid regular expression: * has nothing to repeat at column 28",
        "*",
    ),
    (
        'device.displayName -match "a**"',
        "Invalid regular expression: * has nothing to repeat at column 30",
        None,
    ),
    ('device.displayName -match "a{,3}"', "Invalid regular expression: { must start a count", "{"),
    (
        'device.displayName -match "a{256}"',
        "Invalid regular expression: repetition counts go up to 255",
        None,
    ),
    (
        'device.displayName -match "a{3,2}"',
        "Invalid regular expression: the counts in {m,n} must have m <= n",
        None,
    ),
    ('device.displayName -match "a++"', "Invalid regular expression: possessive quantifiers", None),
    ('device.displayName -match "\\bword"', "Invalid regular expression: \\b means different things", "\\"),
    ('device.displayName -match "\\x41"', "Invalid regular expression: \\x isn't supported", None),
    ('device.displayName -match "[[:alpha:]]"', "Invalid regular expression: POSIX classes", "["),
    ('device.displayName -match "(?i)a"', "Invalid regular expression: (? is only supported as", None),
    ('device.displayName -match "(?P<n>a)"', "Invalid regular expression: (? is only supported as", None),
    ('device.displayName -match "(a+)+$"', "Invalid regular expression: nested repetition", "+"),
    ('device.displayName -match "((a|b)*c)*"', "Invalid regular expression: nested repetition", None),
    (
        'device.displayName -match "[z-a]"',
        "Invalid regular expression: bad character range z-a at column 27",
        None,
    ),
    ('device.displayName -match "`"(a"', "Invalid regular expression: missing ) at column 27", '"`"(a"'),
    ('device.displayName -notMatch "a\\"', "Invalid regular expression: pattern ends with a backslash", None),
]


@pytest.mark.parametrize(("text", "message", "highlighted"), CASES, ids=[c[0] for c in CASES])
def test_bad_rules_are_refused_with_their_position(text: str, message: str, highlighted: str | None) -> None:
    error = error_of(text)
    assert error.message.startswith(message), error.message
    if highlighted is not None:
        assert text[error.offset : error.offset + error.length] == highlighted


def test_errors_on_later_lines_give_line_and_column() -> None:
    error = error_of('device.displayName -eq "x"\n-and device.foo -eq "y"')
    assert (error.line, error.column, error.offset) == (2, 6, 32)
    assert error.message.startswith("Unknown property device.foo at line 2, column 6")
    assert error.excerpt == '-and device.foo -eq "y"\n     ^^^^^^^^^^'


def test_an_error_at_the_end_points_just_past_the_text() -> None:
    error = error_of("device.displayName -eq")
    assert (error.offset, error.column) == (22, 23)
    assert error.excerpt == "device.displayName -eq\n" + " " * 22 + "^"


def test_the_excerpt_of_a_long_line_is_a_window_around_the_problem() -> None:
    text = " -or ".join(f'device.displayName -eq "{i}"' for i in range(40)) + " -or device.bogus -eq 1"
    error = error_of(text)
    line, caret = error.excerpt.split("\n")
    assert len(line) <= 90
    assert line[caret.index("^") :].startswith("device.bogus")
    assert line.startswith("…")


def test_the_first_problem_is_reported() -> None:
    error = error_of('device.foo -eq "x" -and device.bar -eq')
    assert error.reason == "Unknown property device.foo"


def test_a_device_property_in_a_user_rule() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule('user.department -eq "x" -or device.displayName -eq "y"', USER_RULES)
    assert caught.value.message.startswith("A rule can't mix user and device properties: device.displayName")
    assert caught.value.column == 29


def test_errors_serialise_for_an_api() -> None:
    data = error_of('device.displayName -eq "x" garbage').to_dict()
    assert data == {
        "message": "Expected -and, -or or the end of the rule, found 'garbage' at column 28",
        "reason": "Expected -and, -or or the end of the rule, found 'garbage'",
        "hint": None,
        "offset": 27,
        "length": 7,
        "line": 1,
        "column": 28,
        "excerpt": 'device.displayName -eq "x" garbage\n' + " " * 27 + "^" * 7,
    }


def test_too_many_list_values() -> None:
    values = ",".join(f'"{i}"' for i in range(257))
    error = error_of(f"device.deviceModel -in [{values}]")
    assert error.reason == "The list has more than 256 values"
    assert error.text[error.offset : error.offset + error.length] == '"256"'
