"""The -match pattern subset that PostgreSQL (~*) and Python read alike (no database; the agreement on real
PostgreSQL is in test_rules_sql.py)."""

from __future__ import annotations

import time

import pytest

from corral.groups.rules import RegexError, python_regex


def test_dollar_matches_only_at_the_very_end_as_in_postgresql() -> None:
    assert python_regex("b$").search("ab")
    assert not python_regex("b$").search("ab\n")  # Python's own $ would match before a final newline


def test_dot_matches_a_newline_as_in_postgresql() -> None:
    assert python_regex("x.y").search("x\ny")


def test_matching_ignores_case() -> None:
    assert python_regex("^ipad").search("iPad Air")
    assert python_regex("gerät").search("GERÄT")


@pytest.mark.parametrize(
    "pattern",
    [
        "a*?",
        "a{2,5}?",
        "[\\w.-]+@example\\.com",
        "^10\\.0\\.(19|22)[0-9]{3}",
        "(?:iPhone|iPad)\\d+,\\d+",
        "[a\\-z]",
        "\\t\\r\\f\\v",
        "(a|b)?c",
        "(a+)?",
        "a{0}",
        "(ab){1}",
    ],
)
def test_portable_patterns_are_accepted(pattern: str) -> None:
    python_regex(pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("a\\", "pattern ends with a backslash"),
        ("\\B", "\\B means different things"),
        ("\\y", "\\y isn't supported"),
        ("\\u00e9", "\\u isn't supported"),
        ("\\10", "back-references above \\9"),
        ("[\\D]", "\\D isn't supported inside [...]"),
        ("[[.a.]]", "POSIX classes"),
        ("[[=a=]]", "POSIX classes"),
        ("(?>a)", "(? is only supported as"),
        ("(?#comment)", "(? is only supported as"),
        ("a}", "write \\} for a literal }"),
        ("a{1", "{ must start a count"),
        ("a?+", "possessive"),
        ("a{2}+", "possessive"),
        ("^*", "has nothing to repeat"),
        ("(?=a)*", "has nothing to repeat"),
        ("a|*", "has nothing to repeat"),
        ("(a*)*", "nested repetition"),
        ("(a{2,})+", "nested repetition"),
        ("(\\d+\\.)+", "nested repetition"),
        ("(?<=a+)b", "look-behind requires fixed-width pattern"),
        ("[a&&b]", "ambiguous character set"),
        ("[a--]", "ambiguous character set"),
    ],
)
def test_patterns_outside_the_subset_are_refused(pattern: str, reason: str) -> None:
    with pytest.raises(RegexError) as caught:
        python_regex(pattern)
    assert reason in caught.value.reason


def test_refusing_nested_repetition_keeps_the_evaluator_fast() -> None:
    """(a|aa)+ style blow-ups aside, the classic catastrophic patterns never reach the backtracking engine."""
    with pytest.raises(RegexError):
        python_regex("^(a+)+$")
    started = time.perf_counter()
    assert not python_regex("^(a|b)+c$").search("ab" * 5000)
    assert time.perf_counter() - started < 1
