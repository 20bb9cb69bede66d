"""The rule language of dynamic groups: Entra ID dynamic membership rules over device or user attributes.

``parse_rule(text, schema)`` tokenizes, parses (Entra precedence: comparisons, then -not, -and, -or) and
validates a rule against an attribute schema in one pass, returning an immutable tree or raising
:class:`RuleError` with the offset, line and column of the first problem. ``evaluate(rule, values)`` answers
"does this object match, and why?" in Python; ``corral.groups.rule_sql.compile_rule`` turns the same tree into
SQL, and both follow the same semantics (docs/dynamic-groups.md):

* text comparisons ignore case; ``-match`` is a case-insensitive regular-expression search, limited to the
  subset of syntax that PostgreSQL and Python read the same way;
* every comparison is true or false, never unknown: a missing (null) value satisfies no positive operator
  and every negative one (``-ne``, ``-notStartsWith``, ``-notIn`` …), so ``-notX`` is always ``-not (-X)``;
* ``-eq null`` / ``-ne null`` test for a missing value.

Pure: no database or web imports.
"""

from __future__ import annotations

import difflib
import re
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from functools import lru_cache
from typing import Any, Literal, NoReturn, TypeAlias

MAX_RULE_LENGTH = 3072
"""Entra's limit on the length of a membership rule, in characters."""
MAX_LIST_VALUES = 256
"""The most values an ``-in`` / ``-notIn`` list may hold."""
MAX_NESTING = 32
"""The deepest nesting of parentheses and -not a rule may use."""
MAX_REGEX_REPEAT = 255
"""PostgreSQL's largest repetition count in ``{m,n}``."""

# --------------------------------------------------------------------------------------------------- errors


class RuleError(ValueError):
    """A rule that can't be used, with where the problem is.

    ``offset`` is 0-based into the rule text; ``line`` and ``column`` are 1-based; ``length`` is how many
    characters to highlight. ``message`` reads e.g. "Unknown property device.deviceOSTyp at column 2; did
    you mean deviceOSType?"; ``excerpt`` is the offending line with a caret under the problem."""

    def __init__(self, reason: str, text: str, offset: int, length: int = 1, hint: str | None = None) -> None:
        self.reason = reason
        self.hint = hint
        self.text = text
        self.offset = max(0, min(offset, len(text)))
        self.length = max(1, length)
        self.line = text.count("\n", 0, self.offset) + 1
        self.column = self.offset - (text.rfind("\n", 0, self.offset) + 1) + 1
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"line {self.line}, column {self.column}" if "\n" in self.text else f"column {self.column}"
        return f"{self.reason} at {where}" + (f"; {self.hint}" if self.hint else "")

    @property
    def excerpt(self) -> str:
        """The line holding the problem (at most about 80 characters of it) and a caret line under it."""
        start = self.text.rfind("\n", 0, self.offset) + 1
        end = self.text.find("\n", self.offset)
        end = len(self.text) if end == -1 else end
        col = self.offset - start
        left = max(start, self.offset - 40)
        right = min(end, max(self.offset + self.length, left + 80))
        prefix = "…" if left > start else ""
        suffix = "…" if right < end else ""
        line = prefix + self.text[left:right] + suffix
        caret_at = len(prefix) + (col - (left - start))
        width = max(1, min(self.length, right - self.offset))
        return f"{line}\n{' ' * caret_at}{'^' * width}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "reason": self.reason,
            "hint": self.hint,
            "offset": self.offset,
            "length": self.length,
            "line": self.line,
            "column": self.column,
            "excerpt": self.excerpt,
        }


class RegexError(ValueError):
    """A ``-match`` pattern outside the supported subset; ``position`` is 0-based within the pattern."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        super().__init__(reason)


# --------------------------------------------------------------------------------------------------- schema


class EntityKind(StrEnum):
    device = "device"
    user = "user"


class AttributeType(StrEnum):
    string = "string"
    choice = "choice"  # a string with a fixed set of values (stored as Corral's own spelling)
    boolean = "boolean"
    identifier = "identifier"  # a UUID (objectId)


@dataclass(frozen=True)
class Choice:
    """One value of a choice attribute: how Corral stores it and the names a rule may use for it.
    The first name is how Corral shows it (Entra's spelling)."""

    stored: str
    names: tuple[str, ...]

    @property
    def display(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class Attribute:
    kind: EntityKind
    name: str
    type: AttributeType
    nullable: bool
    description: str
    choices: tuple[Choice, ...] = ()
    corral_extension: bool = False  # not an Entra attribute

    @property
    def qualified(self) -> str:
        return f"{self.kind}.{self.name}"

    def choice_named(self, name: str) -> Choice | None:
        folded = name.casefold()
        return next((c for c in self.choices if any(n.casefold() == folded for n in c.names)), None)

    def choice_stored(self, stored: str) -> Choice | None:
        return next((c for c in self.choices if c.stored == stored), None)


@dataclass(frozen=True, eq=False)
class RuleSchema:
    """The attributes a rule for one kind of object may use, and why others are refused."""

    kind: EntityKind
    attributes: Mapping[str, Attribute]
    unsupported: Mapping[str, str] = field(default_factory=dict)  # lower-cased name -> reason
    _index: Mapping[str, Attribute] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, attribute in self.attributes.items():
            assert name == attribute.name and attribute.kind is self.kind, name
        object.__setattr__(self, "_index", {n.lower(): a for n, a in self.attributes.items()})

    def lookup(self, name: str) -> Attribute | None:
        """The attribute called ``name``, whatever its case."""
        return self._index.get(name.lower())

    def unsupported_reason(self, name: str) -> str | None:
        lowered = name.lower()
        if lowered in self.unsupported:
            return self.unsupported[lowered]
        if re.fullmatch(r"extensionattribute\d+|extension_\w+", lowered):
            return "extension attributes aren't supported"
        return None


def _attributes(*items: Attribute) -> dict[str, Attribute]:
    return {a.name: a for a in items}


_DEVICE = EntityKind.device
_USER = EntityKind.user
_S = AttributeType.string

OS_TYPES = (
    Choice("windows", ("Windows",)),
    Choice("ios", ("iOS", "iPhone")),
    Choice("ipados", ("iPad", "iPadOS")),
    Choice("macos", ("MacMDM", "macOS", "Mac")),
    Choice("android", ("Android", "AndroidForWork", "AndroidEnterprise")),
    Choice("linux", ("Linux",)),
)
OWNERSHIPS = (Choice("company", ("Company", "Corporate")), Choice("personal", ("Personal",)))

DEVICE_ATTRIBUTES: Mapping[str, Attribute] = _attributes(
    Attribute(_DEVICE, "objectId", AttributeType.identifier, False, "Corral's device ID"),
    Attribute(_DEVICE, "deviceId", AttributeType.identifier, False, "Corral's device ID (same as objectId)"),
    Attribute(_DEVICE, "displayName", _S, False, "Device name"),
    Attribute(_DEVICE, "deviceOSType", AttributeType.choice, False, "Platform", OS_TYPES),
    Attribute(_DEVICE, "deviceOSVersion", _S, True, "Operating system version, e.g. 10.0.22631 or 17.5.1"),
    Attribute(_DEVICE, "deviceOwnership", AttributeType.choice, False, "Ownership", OWNERSHIPS),
    Attribute(_DEVICE, "deviceManufacturer", _S, True, "Manufacturer"),
    Attribute(_DEVICE, "deviceModel", _S, True, "Model"),
    Attribute(_DEVICE, "isRooted", AttributeType.boolean, True, "Jailbroken or rooted, as last reported"),
    Attribute(_DEVICE, "enrollmentProfileName", _S, True, "Name of the enrollment token the device used"),
    Attribute(_DEVICE, "serialNumber", _S, False, "Serial number", corral_extension=True),
    Attribute(
        _DEVICE, "cpuArchitecture", _S, True, "CPU architecture, e.g. x64, arm64", corral_extension=True
    ),
)

_NOT_RECORDED = "Corral doesn't record it"
DEVICE_UNSUPPORTED: Mapping[str, str] = {
    "accountenabled": "Corral devices have no directory account; retired and wiped devices leave groups",
    "devicecategory": "Corral has no device categories yet",
    "devicemanagementappid": "every Corral device is managed by Corral",
    "managementtype": "every Corral device is managed by Corral",
    "devicetrusttype": "Corral doesn't join devices to a directory",
    "devicephysicalids": "multi-valued properties (-any/-all) aren't supported",
    "memberof": "rules can't refer to other groups",
    "profiletype": _NOT_RECORDED,
    "systemlabels": _NOT_RECORDED,
    "organizationalunit": _NOT_RECORDED,
}

USER_ATTRIBUTES: Mapping[str, Attribute] = _attributes(
    Attribute(_USER, "objectId", AttributeType.identifier, False, "Corral's user ID"),
    Attribute(_USER, "accountEnabled", AttributeType.boolean, True, "The account may sign in"),
    Attribute(_USER, "userPrincipalName", _S, True, "Sign-in name"),
    Attribute(_USER, "mail", _S, True, "Email address"),
    Attribute(_USER, "mailNickname", _S, True, "Mail alias"),
    Attribute(_USER, "displayName", _S, True, "Display name"),
    Attribute(_USER, "givenName", _S, True, "Given name"),
    Attribute(_USER, "surname", _S, True, "Surname"),
    Attribute(_USER, "department", _S, True, "Department"),
    Attribute(_USER, "jobTitle", _S, True, "Job title"),
    Attribute(_USER, "companyName", _S, True, "Company name"),
    Attribute(_USER, "employeeId", _S, True, "Employee ID"),
    Attribute(_USER, "physicalDeliveryOfficeName", _S, True, "Office"),
    Attribute(_USER, "city", _S, True, "City"),
    Attribute(_USER, "state", _S, True, "State or province"),
    Attribute(_USER, "country", _S, True, "Country or region"),
    Attribute(_USER, "usageLocation", _S, True, "Usage location (two-letter country code)"),
    Attribute(_USER, "userType", _S, True, "Member or Guest"),
)

USER_UNSUPPORTED: Mapping[str, str] = {
    "assignedplans": "multi-valued properties (-any/-all) aren't supported",
    "proxyaddresses": "multi-valued properties (-any/-all) aren't supported",
    "othermails": "multi-valued properties (-any/-all) aren't supported",
    "memberof": "rules can't refer to other groups",
    "employeehiredate": "date properties aren't supported",
    "dirsyncenabled": _NOT_RECORDED,
    "passwordpolicies": _NOT_RECORDED,
}

DEVICE_RULES = RuleSchema(EntityKind.device, DEVICE_ATTRIBUTES, DEVICE_UNSUPPORTED)
USER_RULES = RuleSchema(EntityKind.user, USER_ATTRIBUTES, USER_UNSUPPORTED)
RULE_SCHEMAS: Mapping[EntityKind, RuleSchema] = {EntityKind.device: DEVICE_RULES, EntityKind.user: USER_RULES}

# ------------------------------------------------------------------------------------------------ operators


class Operator(StrEnum):
    eq = "-eq"
    ne = "-ne"
    starts_with = "-startsWith"
    not_starts_with = "-notStartsWith"
    ends_with = "-endsWith"
    not_ends_with = "-notEndsWith"
    contains = "-contains"
    not_contains = "-notContains"
    match = "-match"
    not_match = "-notMatch"
    in_ = "-in"
    not_in = "-notIn"

    @property
    def negated(self) -> bool:
        return self in _POSITIVE_OF

    @property
    def positive(self) -> Operator:
        """The operator this one negates (itself when it isn't a negation)."""
        return _POSITIVE_OF.get(self, self)


_POSITIVE_OF: dict[Operator, Operator] = {
    Operator.ne: Operator.eq,
    Operator.not_starts_with: Operator.starts_with,
    Operator.not_ends_with: Operator.ends_with,
    Operator.not_contains: Operator.contains,
    Operator.not_match: Operator.match,
    Operator.not_in: Operator.in_,
}
_OPERATOR_BY_NAME: dict[str, Operator] = {op.value[1:].lower(): op for op in Operator}
_LOGICAL = ("and", "or", "not")
_LIST_OPERATORS = (Operator.in_, Operator.not_in)
_OPERATORS_FOR: Mapping[AttributeType, tuple[Operator, ...]] = {
    AttributeType.string: tuple(Operator),
    AttributeType.choice: tuple(Operator),
    AttributeType.boolean: (Operator.eq, Operator.ne),
    AttributeType.identifier: (Operator.eq, Operator.ne, Operator.in_, Operator.not_in),
}
_OPERATOR_MISSPELLINGS: Mapping[str, str] = {
    "equals": "eq",
    "equal": "eq",
    "is": "eq",
    "notequals": "ne",
    "notequal": "ne",
    "neq": "ne",
    "isnot": "ne",
    "regex": "match",
    "notregex": "notMatch",
    "nin": "notIn",
}
_UNSUPPORTED_OPERATORS: Mapping[str, str] = {
    "le": "-le and -ge compare dates, and Corral rules have no date properties",
    "ge": "-le and -ge compare dates, and Corral rules have no date properties",
    "lt": "use -eq, -startsWith or -match; there are no numeric or date properties",
    "gt": "use -eq, -startsWith or -match; there are no numeric or date properties",
    "any": "-any and -all apply to multi-valued properties, which Corral rules don't have",
    "all": "-any and -all apply to multi-valued properties, which Corral rules don't have",
    "plus": "date arithmetic isn't supported",
    "like": "use -startsWith, -endsWith, -contains or -match",
}

# ---------------------------------------------------------------------------------------------------- tree


@dataclass(frozen=True)
class Span:
    start: int
    end: int


_NO_SPAN = Span(0, 0)


@dataclass(frozen=True)
class StringValue:
    value: str
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class BoolValue:
    value: bool
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class NullValue:
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class ListValue:
    items: tuple[StringValue, ...]
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(i.value for i in self.items)


Value: TypeAlias = StringValue | BoolValue | NullValue | ListValue


@dataclass(frozen=True)
class Comparison:
    attribute: Attribute
    operator: Operator
    value: Value
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)
    property_span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    operand: Node
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]
    span: Span = field(default=_NO_SPAN, compare=False, repr=False)


Node: TypeAlias = Comparison | Not | And | Or


@dataclass(frozen=True)
class Rule:
    """A parsed, validated rule: ``text`` as written, the kind of object it selects, and its tree."""

    text: str
    kind: EntityKind
    root: Node

    @property
    def attributes(self) -> frozenset[str]:
        """The attribute names the rule reads (to know which changes can alter membership)."""
        return frozenset(c.attribute.name for c in comparisons(self.root))

    @property
    def canonical(self) -> str:
        return format_rule(self.root)


def comparisons(node: Node) -> list[Comparison]:
    """Every comparison in the tree, left to right."""
    if isinstance(node, Comparison):
        return [node]
    if isinstance(node, Not):
        return comparisons(node.operand)
    return [c for child in node.operands for c in comparisons(child)]


# ---------------------------------------------------------------------------------------------- tokenizer


class TokenKind(Enum):
    word = "word"  # device.deviceOSType, null, true, and (bare operators)
    operator = "operator"  # -eq, -and (value: the lower-cased name without the hyphen)
    string = "string"
    number = "number"
    lparen = "("
    rparen = ")"
    lbracket = "["
    rbracket = "]"
    comma = ","
    end = "end"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    value: str
    start: int
    end: int
    raw: str

    def describe(self) -> str:
        if self.kind is TokenKind.end:
            return "the end of the rule"
        raw = self.raw if len(self.raw) <= 40 else self.raw[:39] + "…"
        return f"'{raw}'" if self.kind is not TokenKind.string else raw


_HYPHENS = "-\u2013\u2014\u2212"  # hyphen, en dash, em dash, minus sign (pasted from documents)
_TYPOGRAPHIC_QUOTES = "\u201c\u201d\u201e\u2018\u2019"
_PUNCTUATION = {
    "(": TokenKind.lparen,
    ")": TokenKind.rparen,
    "[": TokenKind.lbracket,
    "]": TokenKind.rbracket,
    ",": TokenKind.comma,
}


def _is_word_start(c: str) -> bool:
    return c.isalpha() or c == "_"


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c in "_."


def tokenize(text: str) -> list[Token]:
    """The rule's tokens, ending with an ``end`` token; RuleError on a character no token starts with."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _PUNCTUATION:
            tokens.append(Token(_PUNCTUATION[c], c, i, i + 1, c))
            i += 1
        elif c in "\"'":
            token = _read_string(text, i)
            tokens.append(token)
            i = token.end
        elif c in _HYPHENS:
            j = i + 1
            while j < n and text[j].isalpha():
                j += 1
            if j == i + 1:
                if j < n and text[j].isdigit():
                    j = _skip_number(text, j)
                    tokens.append(Token(TokenKind.number, text[i:j], i, j, text[i:j]))
                    i = j
                    continue
                raise RuleError("Expected an operator name after '-'", text, i, hint="e.g. -eq or -and")
            tokens.append(Token(TokenKind.operator, text[i + 1 : j].lower(), i, j, text[i:j]))
            i = j
        elif _is_word_start(c):
            j = i + 1
            while j < n and _is_word_char(text[j]):
                j += 1
            tokens.append(Token(TokenKind.word, text[i:j], i, j, text[i:j]))
            i = j
        elif c.isdigit():
            j = _skip_number(text, i)
            tokens.append(Token(TokenKind.number, text[i:j], i, j, text[i:j]))
            i = j
        elif c in _TYPOGRAPHIC_QUOTES:
            raise RuleError(f"Typographic quote {c}", text, i, hint='use straight double quotes (")')
        else:
            shown = repr(c) if not c.isprintable() else f"'{c}'"
            raise RuleError(f"Unexpected character {shown}", text, i)
    tokens.append(Token(TokenKind.end, "", n, n, ""))
    return tokens


def _skip_number(text: str, i: int) -> int:
    while i < len(text) and (text[i].isalnum() or text[i] in ".:"):
        i += 1
    return i


def _read_string(text: str, start: int) -> Token:
    """A quoted string. In double quotes a backtick escapes: `" is a quote and `` a backtick (Entra's
    PowerShell-style escape); in single quotes '' is a quote. Backslashes are ordinary characters."""
    quote = text[start]
    out: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == "\x00":
            raise RuleError("Text values can't contain the NUL character", text, i)
        if quote == '"' and c == "`" and i + 1 < n and text[i + 1] in '"`':
            out.append(text[i + 1])
            i += 2
        elif c == quote:
            if quote == "'" and i + 1 < n and text[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            return Token(TokenKind.string, "".join(out), start, i + 1, text[start : i + 1])
        else:
            out.append(c)
            i += 1
    closing = '`"' if quote == '"' else "''"
    raise RuleError(
        "Unterminated text value",
        text,
        start,
        n - start,
        hint=f"close it with {quote}; write {closing} for a {quote} inside the value",
    )


# ------------------------------------------------------------------------------------------------- parser


def parse_rule(text: str, schema: RuleSchema) -> Rule:
    """Parse and validate ``text`` as a rule for ``schema.kind``; raise RuleError at the first problem."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(
            f"The rule is longer than {MAX_RULE_LENGTH:,} characters",
            text,
            MAX_RULE_LENGTH,
            len(text) - MAX_RULE_LENGTH,
            hint=f"it has {len(text):,}; -in [...] is shorter than many -or conditions",
        )
    if not text.strip():
        raise RuleError(
            "The rule is empty", text, 0, hint=f'write a condition such as {schema.kind}.displayName -eq "x"'
        )
    parser = _Parser(text, tokenize(text), schema)
    return Rule(text, schema.kind, parser.parse())


def _suggest(word: str, candidates: Sequence[str]) -> str | None:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


class _Parser:
    def __init__(self, text: str, tokens: list[Token], schema: RuleSchema) -> None:
        self.text = text
        self.tokens = tokens
        self.schema = schema
        self.i = 0
        self.depth = 0
        self.own_kind_seen = False

    # -- helpers
    def peek(self) -> Token:
        return self.tokens[self.i]

    def previous(self) -> Token | None:
        return self.tokens[self.i - 1] if self.i else None

    def advance(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def fail(self, reason: str, token: Token | Span, hint: str | None = None) -> NoReturn:
        start, end = (token.start, token.end)
        raise RuleError(reason, self.text, start, end - start, hint)

    def is_logical(self, name: str) -> bool:
        token = self.peek()
        return token.kind in (TokenKind.operator, TokenKind.word) and token.value.lower() == name

    # -- grammar: or := and (-or and)* ; and := unary (-and unary)* ; unary := -not unary | primary
    def parse(self) -> Node:
        node = self.parse_or()
        token = self.peek()
        if token.kind is TokenKind.rparen:
            self.fail("Unmatched closing parenthesis", token, hint="remove it or add a matching (")
        if token.kind is not TokenKind.end:
            self.fail(f"Expected -and, -or or the end of the rule, found {token.describe()}", token)
        return node

    def parse_or(self) -> Node:
        operands = [self.parse_and()]
        while self.is_logical("or"):
            self.advance()
            operands.append(self.parse_and())
        if len(operands) == 1:
            return operands[0]
        return Or(tuple(operands), Span(operands[0].span.start, operands[-1].span.end))

    def parse_and(self) -> Node:
        operands = [self.parse_unary()]
        while self.is_logical("and"):
            self.advance()
            operands.append(self.parse_unary())
        if len(operands) == 1:
            return operands[0]
        return And(tuple(operands), Span(operands[0].span.start, operands[-1].span.end))

    def nest(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            self.fail("The rule is nested too deeply", token, hint=f"use at most {MAX_NESTING} levels")

    def parse_unary(self) -> Node:
        if self.is_logical("not"):
            token = self.advance()
            self.nest(token)
            operand = self.parse_unary()
            self.depth -= 1
            return Not(operand, Span(token.start, operand.span.end))
        return self.parse_primary()

    def parse_primary(self) -> Node:
        token = self.peek()
        if token.kind is TokenKind.lparen:
            self.advance()
            self.nest(token)
            node = self.parse_or()
            self.depth -= 1
            closing = self.peek()
            if closing.kind is TokenKind.end:
                self.fail("Unclosed parenthesis", token, hint="add a ) to close it")
            if closing.kind is not TokenKind.rparen:
                self.fail(f"Expected -and, -or or ), found {closing.describe()}", closing)
            self.advance()
            return node
        return self.parse_comparison()

    # -- comparisons
    def parse_comparison(self) -> Comparison:
        token = self.peek()
        if token.kind is not TokenKind.word or "." not in token.value:
            self.fail_expected_condition(token)
        self.advance()
        attribute = self.resolve_property(token)
        operator = self.parse_operator(token)
        op_token = self.tokens[self.i - 1]
        value = self.parse_value(op_token)
        self.check(attribute, operator, value, op_token)
        return Comparison(
            attribute, operator, value, Span(token.start, value.span.end), Span(token.start, token.end)
        )

    def fail_expected_condition(self, token: Token) -> NoReturn:
        kind = self.schema.kind
        example = f'{kind}.displayName -eq "x"'
        before = self.previous()
        after = f" after {before.raw}" if before is not None and before.kind is TokenKind.operator else ""
        if token.kind is TokenKind.end:
            self.fail(f"Missing condition{after}", token, hint=f"expected something like {example}")
        if token.kind is TokenKind.rparen and before is not None and before.kind is TokenKind.lparen:
            self.fail(
                "Empty parentheses",
                Span(before.start, token.end),
                hint=f"put a condition inside, e.g. {example}",
            )
        if token.kind is TokenKind.operator and token.value in _OPERATOR_BY_NAME:
            self.fail(f"Missing property before {token.raw}", token, hint=f"e.g. {example}")
        if token.kind is TokenKind.word:
            word = token.value
            if word.lower() == "direct":
                self.fail("Direct reports rules aren't supported", token)
            if word == "_":
                self.fail(
                    "Collection conditions (_) aren't supported", token, hint=_UNSUPPORTED_OPERATORS["any"]
                )
            attribute = self.schema.lookup(word)
            if attribute is not None:
                self.fail(f"Property {word} needs its object", token, hint=f"write {attribute.qualified}")
        self.fail(f"Expected a condition such as {example}, found {token.describe()}", token)

    def resolve_property(self, token: Token) -> Attribute:
        entity, _, name = token.value.partition(".")
        kinds = [k.value for k in EntityKind]
        if entity.lower() not in kinds:
            suggestion = _suggest(entity, kinds)
            self.fail(
                f"Unknown object {entity}",
                token,
                hint=f"did you mean {suggestion}?"
                if suggestion
                else "properties start with device. or user.",
            )
        kind = EntityKind(entity.lower())
        if not name:
            self.fail(f"Missing property name after {token.value}", token)
        if kind is not self.schema.kind:
            if self.own_kind_seen:
                self.fail(
                    f"A rule can't mix {self.schema.kind} and {kind} properties: {token.value}",
                    token,
                    hint="a group holds devices or users, never both",
                )
            self.fail(
                f"{token.value} is a {kind} property, but this is a rule for {self.schema.kind}s",
                token,
                hint=f"use {self.schema.kind}.* properties",
            )
        attribute = self.schema.lookup(name)
        if attribute is not None:
            self.own_kind_seen = True
            return attribute
        reason = self.schema.unsupported_reason(name)
        if reason is not None:
            self.fail(f"Property {token.value} isn't supported", token, hint=reason)
        suggestion = _suggest(name, list(self.schema.attributes))
        self.fail(
            f"Unknown property {token.value}",
            token,
            hint=f"did you mean {suggestion}?" if suggestion else f"see the list of {kind} properties",
        )

    def parse_operator(self, prop: Token) -> Operator:
        token = self.peek()
        if token.kind is TokenKind.end:
            self.fail(f"Missing operator after {prop.value}", token, hint="e.g. -eq")
        if token.kind not in (TokenKind.operator, TokenKind.word):
            self.fail(f"Expected an operator such as -eq after {prop.value}, found {token.describe()}", token)
        name = token.value.lower()
        if name in _OPERATOR_BY_NAME:  # Entra also accepts operators without the hyphen
            self.advance()
            return _OPERATOR_BY_NAME[name]
        if token.kind is TokenKind.word:
            self.fail(f"Expected an operator such as -eq after {prop.value}, found {token.describe()}", token)
        if name == "not":
            self.fail(
                "-not isn't a comparison operator",
                token,
                hint="use -ne, -notStartsWith, -notContains … or put -not before the condition",
            )
        if name in _LOGICAL:
            self.fail(f"Missing operator and value after {prop.value}", token, hint='e.g. -eq "x"')
        if name in _UNSUPPORTED_OPERATORS:
            self.fail(f"Operator {token.raw} isn't supported", token, hint=_UNSUPPORTED_OPERATORS[name])
        suggestion = _OPERATOR_MISSPELLINGS.get(name) or _suggest(name, [op.value[1:] for op in Operator])
        self.fail(
            f"Unknown operator {token.raw}",
            token,
            hint=f"did you mean -{suggestion}?" if suggestion else "see the list of operators",
        )

    def parse_value(self, op_token: Token) -> Value:
        token = self.peek()
        if token.kind is TokenKind.string:
            self.advance()
            return StringValue(token.value, Span(token.start, token.end))
        if token.kind is TokenKind.lbracket:
            return self.parse_list(op_token)
        if token.kind is TokenKind.word:
            lowered = token.value.lower()
            if lowered == "null":
                self.advance()
                return NullValue(Span(token.start, token.end))
            if lowered in ("true", "false"):
                self.advance()
                return BoolValue(lowered == "true", Span(token.start, token.end))
            if "." in token.value and token.value.split(".", 1)[0].lower() in ("device", "user"):
                self.fail("Comparing two properties isn't supported", token, hint="compare with a value")
            if lowered in _LOGICAL:
                self.fail(f"Missing value after {op_token.raw}", token)
            self.unquoted(token)
        if token.kind is TokenKind.number:
            self.unquoted(token)
        if token.kind in (TokenKind.end, TokenKind.operator, TokenKind.rparen):
            self.fail(
                f"Missing value after {op_token.raw}",
                token,
                hint='e.g. "text", null, true, or ["a", "b"] for -in',
            )
        self.fail(f"Expected a value after {op_token.raw}, found {token.describe()}", token)

    def unquoted(self, token: Token) -> NoReturn:
        self.fail(f"Unquoted value {token.raw}", token, hint=f'put text in double quotes: "{token.raw}"')

    def parse_list(self, op_token: Token) -> ListValue:
        opening = self.advance()
        items: list[StringValue] = []
        while True:
            token = self.peek()
            if token.kind is TokenKind.rbracket and not items:
                self.fail("Empty list", Span(opening.start, token.end), hint="give at least one value")
            if token.kind is TokenKind.end:
                self.fail("Unclosed list", opening, hint="add a ] to close it")
            if token.kind is not TokenKind.string:
                if token.kind in (TokenKind.rbracket, TokenKind.comma):
                    self.fail("Missing value in the list", token)
                self.fail(f"Lists hold text values in double quotes, found {token.describe()}", token)
            if len(items) == MAX_LIST_VALUES:
                self.fail(f"The list has more than {MAX_LIST_VALUES} values", token)
            self.advance()
            items.append(StringValue(token.value, Span(token.start, token.end)))
            separator = self.peek()
            if separator.kind is TokenKind.rbracket:
                self.advance()
                return ListValue(tuple(items), Span(opening.start, separator.end))
            if separator.kind is TokenKind.end:
                self.fail("Unclosed list", opening, hint="add a ] to close it")
            if separator.kind is not TokenKind.comma:
                self.fail(f"Expected , or ] in the list, found {separator.describe()}", separator)
            self.advance()

    # -- types
    def check(self, attribute: Attribute, operator: Operator, value: Value, op_token: Token) -> None:
        name = attribute.qualified
        allowed = _OPERATORS_FOR[attribute.type]
        if operator not in allowed:
            described = {
                AttributeType.boolean: "a true/false property",
                AttributeType.identifier: "an ID",
            }.get(attribute.type, "")
            self.fail(
                f"Operator {operator.value} can't be used with {name}, {described}",
                op_token,
                hint="use " + ", ".join(op.value for op in allowed),
            )
        if isinstance(value, ListValue) and operator not in _LIST_OPERATORS:
            self.fail(f"{operator.value} compares with one value, not a list", value.span, hint="use -in")
        if operator in _LIST_OPERATORS and not isinstance(value, ListValue):
            self.fail(f"{operator.value} needs a list of values", value.span, hint='e.g. ["a", "b"]')
        if isinstance(value, NullValue):
            if operator not in (Operator.eq, Operator.ne):
                self.fail(
                    f"null can't be used with {operator.value}", value.span, hint="use -eq null or -ne null"
                )
            return
        if attribute.type is AttributeType.boolean:
            if not isinstance(value, BoolValue):
                self.fail(f"{name} is true or false", value.span, hint="write true or false without quotes")
            return
        if isinstance(value, BoolValue):
            self.fail(
                f"{name} holds text, not true/false", value.span, hint=f'write "{str(value.value).lower()}"'
            )
        items = (
            value.items
            if isinstance(value, ListValue)
            else (value,)
            if isinstance(value, StringValue)
            else ()
        )
        if attribute.type is AttributeType.identifier:
            for item in items:
                if not _is_uuid(item.value):
                    self.fail(
                        f"Not a valid object ID: {item.value!r}",
                        item.span,
                        hint="IDs look like 8-4-4-4-12 hex",
                    )
        if attribute.type is AttributeType.choice and operator.positive in (Operator.eq, Operator.in_):
            for item in items:
                if attribute.choice_named(item.value) is None:
                    names = [n for c in attribute.choices for n in c.names]
                    suggestion = _suggest(item.value, names)
                    known = ", ".join(c.display for c in attribute.choices)
                    hint = f"did you mean {suggestion}?" if suggestion else f"expected one of {known}"
                    self.fail(f"Unknown {attribute.name} {item.value!r}", item.span, hint=hint)
        if operator.positive is Operator.match:
            assert isinstance(value, StringValue)
            try:
                python_regex(value.value)
            except RegexError as exc:
                span = value.span
                if exc.position is not None and _verbatim(self.text, value):  # else escapes shift positions
                    offset = value.span.start + 1 + exc.position
                    span = Span(offset, offset + 1)
                self.fail(f"Invalid regular expression: {exc.reason}", span)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def _verbatim(text: str, value: StringValue) -> bool:
    """Whether the value's characters appear in the source one for one (no escapes inside the quotes)."""
    return text[value.span.start + 1 : value.span.end - 1] == value.value


# ------------------------------------------------------------------------------------- regular expressions

_CLASS_ESCAPES = "dDsSwW"
_CHARACTER_ESCAPES = "ntrfv"
_FLAGS = re.IGNORECASE | re.DOTALL


@lru_cache(maxsize=512)
def python_regex(pattern: str) -> re.Pattern[str]:
    """The compiled Python equivalent of a ``-match`` pattern, or RegexError.

    Accepted: the syntax PostgreSQL's regular expressions (ARE) and Python read the same way — literals,
    ``.``, ``^``, ``$``, ``[...]`` sets, ``\\d \\s \\w`` (and capitals), ``\\n \\t`` …, escaped punctuation,
    groups ``( )``, ``(?: )``, lookaround, ``|``, quantifiers ``* + ? {m} {m,} {m,n}`` (lazy too),
    back-references ``\\1`` to ``\\9``. Refused: possessive quantifiers, atomic and named groups, inline
    flags, ``\\b`` (a word boundary in Python, a backspace in PostgreSQL), POSIX classes ``[[:alpha:]]``,
    ``\\x``/``\\u`` escapes, counts above 255, and nested repetition such as ``(a+)+`` (exponential time)."""
    translated = _translate_regex(pattern)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile(translated, _FLAGS)
    except re.error as exc:
        raise RegexError(exc.msg, None) from None
    except FutureWarning as exc:
        raise RegexError(f"ambiguous character set ({exc})", None) from None


def _translate_regex(pattern: str) -> str:
    """Check ``pattern`` against the supported subset; return the Python spelling (``$`` becomes ``\\Z``: in
    PostgreSQL ``$`` matches only at the very end, in Python also before a final newline)."""
    out: list[str] = []
    groups: list[tuple[int, bool, bool]] = []  # (start, is_lookaround, contains repetition)
    repeats_here = [False]  # per nesting level: something inside repeats
    previous: Literal["start", "atom", "group", "quantifier", "anchor"] = "start"
    closed_group_repeats = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            out.append(_regex_escape(pattern, i))
            previous = "anchor" if pattern[i + 1] in "AZ" else "atom"
            i += 2
        elif c == "[":
            translated, i = _regex_set(pattern, i)
            out.append(translated)
            previous = "atom"
        elif c == "(":
            prefix = "("
            if pattern.startswith("(?", i):
                prefix = next(
                    (p for p in ("(?:", "(?=", "(?!", "(?<=", "(?<!") if pattern.startswith(p, i)), ""
                )
                if not prefix:
                    raise RegexError("(? is only supported as (?: (?= (?! (?<= or (?<!", i)
            groups.append((i, prefix not in ("(", "(?:"), False))
            repeats_here.append(False)
            out.append(prefix)
            i += len(prefix)
            previous = "start"
        elif c == ")":
            if not groups:
                raise RegexError("unmatched )", i)
            _start, lookaround, _ = groups.pop()
            closed_group_repeats = repeats_here.pop()
            repeats_here[-1] = repeats_here[-1] or closed_group_repeats
            out.append(")")
            previous = "anchor" if lookaround else "group"
            i += 1
        elif c in "*+?{":
            text, repeats, i = _regex_quantifier(pattern, i, previous)
            if previous == "group" and repeats and closed_group_repeats:
                raise RegexError(
                    "nested repetition such as (a+)+ can take exponential time; simplify it", i - 1
                )
            repeats_here[-1] = repeats_here[-1] or repeats
            out.append(text)
            previous = "quantifier"
        elif c == "}":
            raise RegexError("write \\} for a literal }", i)
        elif c == "|":
            out.append("|")
            previous = "start"
            i += 1
        elif c == "$":
            out.append(r"\Z")
            previous = "anchor"
            i += 1
        elif c == "^":
            out.append("^")
            previous = "anchor"
            i += 1
        else:
            out.append(c)  # "." and literal characters (no other specials remain outside sets)
            previous = "atom"
            i += 1
    if groups:
        raise RegexError("missing )", groups[-1][0])
    return "".join(out)


def _regex_escape(pattern: str, i: int) -> str:
    if i + 1 >= len(pattern):
        raise RegexError("pattern ends with a backslash", i)
    d = pattern[i + 1]
    if not d.isalnum():
        return "\\" + d
    if d in _CLASS_ESCAPES or d in _CHARACTER_ESCAPES or d in "AZ":
        return "\\" + d
    if d in "123456789":
        if i + 2 < len(pattern) and pattern[i + 2].isdigit():
            raise RegexError("back-references above \\9 aren't supported", i)
        return "\\" + d
    if d in "bB":
        raise RegexError(
            f"\\{d} means different things to PostgreSQL and other engines; it isn't supported", i
        )
    raise RegexError(f"\\{d} isn't supported", i)


def _regex_set(pattern: str, i: int) -> tuple[str, int]:
    """A bracket expression starting at ``i``: its Python spelling and the index after it."""
    out = ["["]
    j, n = i + 1, len(pattern)
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    if j < n and pattern[j] == "]":
        out.append("\\]")
        j += 1
    while j < n and pattern[j] != "]":
        c = pattern[j]
        if c == "[":
            if j + 1 < n and pattern[j + 1] in ":.=":
                raise RegexError(
                    "POSIX classes such as [[:alpha:]] aren't supported; use \\w, \\d, \\s or a-z", j
                )
            out.append("\\[")
        elif c == "\\":
            if j + 1 >= n:
                break
            d = pattern[j + 1]
            if d.isalnum() and d not in "dsw" + _CHARACTER_ESCAPES:
                raise RegexError(f"\\{d} isn't supported inside [...]", j)
            out.append("\\" + d)
            j += 2
            continue
        else:
            out.append(c)
        j += 1
    if j >= n:
        raise RegexError("unterminated [", i)
    out.append("]")
    return "".join(out), j + 1


_BOUND = re.compile(r"\{(\d+)(,(\d*))?\}")


def _regex_quantifier(pattern: str, i: int, previous: str) -> tuple[str, bool, int]:
    """The quantifier at ``i``: its text, whether it may match more than once, and the index after it."""
    if previous in ("start", "quantifier", "anchor"):
        raise RegexError(f"{pattern[i]} has nothing to repeat", i)
    c = pattern[i]
    if c == "{":
        bound = _BOUND.match(pattern, i)
        if bound is None:
            raise RegexError("{ must start a count such as {2} or {1,3}; write \\{ for a literal {", i)
        low = int(bound.group(1))
        high = None if bound.group(2) and not bound.group(3) else int(bound.group(3) or bound.group(1))
        if low > MAX_REGEX_REPEAT or (high is not None and high > MAX_REGEX_REPEAT):
            raise RegexError(f"repetition counts go up to {MAX_REGEX_REPEAT}", i)
        if high is not None and high < low:
            raise RegexError("the counts in {m,n} must have m <= n", i)
        text, end, repeats = bound.group(0), bound.end(), high is None or high > 1
    else:
        text, end, repeats = c, i + 1, c in "*+"
    if end < len(pattern) and pattern[end] == "?":
        return text + "?", repeats, end + 1
    if end < len(pattern) and pattern[end] == "+":
        raise RegexError("possessive quantifiers (*+, ++, ?+) aren't supported", end)
    return text, repeats, end


# ---------------------------------------------------------------------------------------------- evaluation

AttributeValue: TypeAlias = str | bool | uuid.UUID | None
Expected: TypeAlias = str | bool | tuple[str, ...] | None


def _text_positive(operator: Operator, actual: str, value: Value) -> bool:
    """A positive text operator on a non-null value (case-insensitive)."""
    folded = actual.lower()
    if isinstance(value, ListValue):
        return folded in {v.lower() for v in value.values}
    assert isinstance(value, StringValue), value
    expected = value.value.lower()
    if operator is Operator.eq:
        return folded == expected
    if operator is Operator.starts_with:
        return folded.startswith(expected)
    if operator is Operator.ends_with:
        return folded.endswith(expected)
    if operator is Operator.contains:
        return expected in folded
    if operator is Operator.match:
        return python_regex(value.value).search(actual) is not None
    raise AssertionError(operator)


@lru_cache(maxsize=1024)
def choices_matching(
    attribute: Attribute, operator: Operator, value: StringValue | ListValue
) -> frozenset[str]:
    """The stored values of a choice attribute that satisfy the positive ``operator``: a choice matches when
    any of its names does (``-startsWith "Android"`` matches android through "AndroidForWork" as well)."""
    positive = operator.positive
    return frozenset(
        c.stored for c in attribute.choices if any(_text_positive(positive, name, value) for name in c.names)
    )


def _positive(comparison: Comparison, actual: AttributeValue) -> bool:
    attribute, value = comparison.attribute, comparison.value
    operator = comparison.operator.positive
    if isinstance(value, NullValue):
        return actual is None
    if actual is None:
        return False
    if isinstance(value, BoolValue):
        return actual is value.value
    assert isinstance(value, StringValue | ListValue)
    if attribute.type is AttributeType.identifier:
        wanted = value.values if isinstance(value, ListValue) else (value.value,)
        return uuid.UUID(str(actual)) in {uuid.UUID(v) for v in wanted}
    if attribute.type is AttributeType.choice:
        return str(actual) in choices_matching(attribute, operator, value)
    if attribute.type is AttributeType.boolean:  # a boolean compared with text cannot pass validation
        raise AssertionError(comparison)
    return _text_positive(operator, str(actual), value)


def compare(comparison: Comparison, actual: AttributeValue) -> bool:
    positive = _positive(comparison, actual)
    return not positive if comparison.operator.negated else positive


def expected_of(value: Value) -> Expected:
    if isinstance(value, StringValue | BoolValue):
        return value.value
    if isinstance(value, ListValue):
        return value.values
    return None


def display_value(attribute: Attribute, actual: AttributeValue) -> AttributeValue:
    """The value as a rule author sees it: a choice by its Entra name, an ID as text."""
    if actual is None:
        return None
    if attribute.type is AttributeType.choice:
        choice = attribute.choice_stored(str(actual))
        return choice.display if choice is not None else str(actual)
    if isinstance(actual, uuid.UUID):
        return str(actual)
    return actual


@dataclass(frozen=True)
class ConditionResult:
    """One comparison, the value it saw and its outcome."""

    node: Comparison
    actual: AttributeValue
    result: bool

    @property
    def attribute(self) -> str:
        return self.node.attribute.qualified

    @property
    def operator(self) -> str:
        return self.node.operator.value

    @property
    def expected(self) -> Expected:
        return expected_of(self.node.value)

    def describe(self) -> str:
        return f"{format_rule(self.node)}: {self.attribute} is {_show(self.actual)}"

    def to_dict(self) -> dict[str, Any]:
        expected = self.expected
        return {
            "type": "condition",
            "attribute": self.attribute,
            "actual": self.actual,
            "operator": self.operator,
            "expected": list(expected) if isinstance(expected, tuple) else expected,
            "result": self.result,
            "text": format_rule(self.node),
        }


@dataclass(frozen=True)
class LogicResult:
    """An -and, -or or -not and the results of its operands (all of them: nothing is skipped)."""

    node: And | Or | Not
    result: bool
    children: tuple[Explanation, ...]

    @property
    def operator(self) -> str:
        return {And: "-and", Or: "-or", Not: "-not"}[type(self.node)]

    def describe(self) -> str:
        count = sum(child.result for child in self.children)
        if isinstance(self.node, Not):
            return "-not: the condition is " + ("false" if self.result else "true")
        return f"{self.operator}: {count} of {len(self.children)} true"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "logic",
            "operator": self.operator,
            "result": self.result,
            "children": [child.to_dict() for child in self.children],
        }


Explanation: TypeAlias = ConditionResult | LogicResult


def evaluate(rule: Rule | Node, values: Mapping[str, AttributeValue]) -> Explanation:
    """Whether an object with these attribute values (keyed by attribute name, e.g. "deviceOSType"; choices
    by their stored value, e.g. "ios") matches, with the outcome of every clause. Raises KeyError when the
    rule reads an attribute ``values`` lacks."""
    node = rule.root if isinstance(rule, Rule) else rule
    if isinstance(node, Comparison):
        name = node.attribute.name
        if name not in values:
            raise KeyError(f"no value given for {node.attribute.qualified}")
        actual = values[name]
        return ConditionResult(node, display_value(node.attribute, actual), compare(node, actual))
    if isinstance(node, Not):
        inner = evaluate(node.operand, values)
        return LogicResult(node, not inner.result, (inner,))
    children = tuple(evaluate(child, values) for child in node.operands)
    combine = all if isinstance(node, And) else any
    return LogicResult(node, combine(c.result for c in children), children)


def matches(rule: Rule | Node, values: Mapping[str, AttributeValue]) -> bool:
    return evaluate(rule, values).result


def explanation_lines(explanation: Explanation, depth: int = 0) -> list[str]:
    """The explanation as indented lines, each starting with ✓ or ✗."""
    mark = "✓" if explanation.result else "✗"
    lines = [f"{'  ' * depth}{mark} {explanation.describe()}"]
    if isinstance(explanation, LogicResult):
        for child in explanation.children:
            lines.extend(explanation_lines(child, depth + 1))
    return lines


def _show(value: AttributeValue) -> str:
    if value is None:
        return "null (no value)"
    if isinstance(value, bool):
        return str(value).lower()
    return _quote(str(value))


# ---------------------------------------------------------------------------------------------- formatting


def _quote(text: str) -> str:
    return '"' + text.replace("`", "``").replace('"', '`"') + '"'


def format_value(value: Value) -> str:
    if isinstance(value, StringValue):
        return _quote(value.value)
    if isinstance(value, BoolValue):
        return "true" if value.value else "false"
    if isinstance(value, NullValue):
        return "null"
    return "[" + ", ".join(_quote(v) for v in value.values) + "]"


def format_rule(node: Rule | Node) -> str:
    """The canonical text of a rule: canonical property and operator spellings, double quotes, and only the
    parentheses precedence needs (plus around the operand of -not). Parsing it gives the same tree."""
    if isinstance(node, Rule):
        node = node.root
    if isinstance(node, Comparison):
        return f"{node.attribute.qualified} {node.operator.value} {format_value(node.value)}"
    if isinstance(node, Not):
        inner = format_rule(node.operand)
        return f"-not {inner}" if isinstance(node.operand, Not) else f"-not ({inner})"
    if isinstance(node, And):
        return " -and ".join(
            f"({format_rule(child)})" if isinstance(child, Or | And) else format_rule(child)
            for child in node.operands
        )
    return " -or ".join(
        f"({format_rule(child)})" if isinstance(child, Or) else format_rule(child) for child in node.operands
    )
