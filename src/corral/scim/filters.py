"""SCIM filters (RFC 7644 §3.4.2.2) and attribute paths: a small parser to an AST, and a compiler of that AST
to a SQLAlchemy expression over the attributes a resource maps to columns (values always bound parameters).
Pure logic, no database access."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, not_, or_, true

from corral.scim.errors import ScimError

COMPARE_OPS = frozenset({"eq", "ne", "co", "sw", "ew", "gt", "lt", "ge", "le"})
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
CORE_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
CORE_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
MAX_FILTER = 2048


# ----------------------------------------------------------------------------------------------- the AST
@dataclass(frozen=True)
class Compare:
    path: str  # lower case, dotted: "username", "emails.value", "<enterprise urn>:department"
    op: str
    value: Any


@dataclass(frozen=True)
class Present:
    path: str


@dataclass(frozen=True)
class Logical:
    op: str  # "and" | "or"
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    inner: Node


@dataclass(frozen=True)
class ValuePath:
    """``emails[type eq "work"]``: the inner filter applies to the sub-attributes of ``path``."""

    path: str
    inner: Node


Node = Compare | Present | Logical | Not | ValuePath


# --------------------------------------------------------------------------------------------- the parser
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<lparen>\() | (?P<rparen>\)) | (?P<lbracket>\[) | (?P<rbracket>\])
      | (?P<word>[A-Za-z0-9_$:.\-+]+)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ScimError(
                400, f"Unexpected character at position {pos + 1} of the filter.", "invalidFilter"
            )
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def normalise_path(path: str) -> str:
    """An attribute path in lower case; the core schema URN prefix dropped, the extension's kept."""
    lowered = path.lower()
    for urn in (CORE_USER.lower(), CORE_GROUP.lower()):
        if lowered.startswith(urn + ":"):
            return lowered[len(urn) + 1 :]
    return lowered


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_FILTER:
            raise ScimError(400, "The filter is too long.", "invalidFilter")
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ScimError(400, "The filter ends too early.", "invalidFilter")
        self.pos += 1
        return token

    def expect(self, kind: str) -> None:
        got = self.take()
        if got[0] != kind:
            raise ScimError(400, f"Expected {kind} in the filter, found {got[1]!r}.", "invalidFilter")

    def keyword(self, *words: str) -> str | None:
        token = self.peek()
        if token and token[0] == "word" and token[1].lower() in words:
            self.pos += 1
            return token[1].lower()
        return None

    def parse(self) -> Node:
        node = self.or_()
        if self.peek() is not None:
            raise ScimError(400, f"Unexpected {self.peek()[1]!r} in the filter.", "invalidFilter")  # type: ignore[index]
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.keyword("or"):
            node = Logical("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.unary()
        while self.keyword("and"):
            node = Logical("and", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.keyword("not"):
            self.expect("lparen")
            inner = self.or_()
            self.expect("rparen")
            return Not(inner)
        token = self.peek()
        if token and token[0] == "lparen":
            self.take()
            inner = self.or_()
            self.expect("rparen")
            return inner
        return self.attribute_expression()

    def attribute_expression(self) -> Node:
        kind, text = self.take()
        if kind != "word":
            raise ScimError(
                400, f"Expected an attribute name in the filter, found {text!r}.", "invalidFilter"
            )
        path = normalise_path(text)
        token = self.peek()
        if token and token[0] == "lbracket":
            self.take()
            inner = self.or_()
            self.expect("rbracket")
            return ValuePath(path, inner)
        if self.keyword("pr"):
            return Present(path)
        op_token = self.take()
        op = op_token[1].lower()
        if op_token[0] != "word" or op not in COMPARE_OPS:
            raise ScimError(400, f"Unknown filter operator {op_token[1]!r}.", "invalidFilter")
        return Compare(path, op, self.value())

    def value(self) -> Any:
        kind, text = self.take()
        if kind == "string":
            try:
                return json.loads(text)
            except ValueError:
                raise ScimError(400, "A string in the filter is malformed.", "invalidFilter") from None
        if kind == "word":
            lowered = text.lower()
            if lowered in {"true", "false"}:
                return lowered == "true"
            if lowered == "null":
                return None
            try:
                return json.loads(text)
            except ValueError:
                pass
        raise ScimError(400, f"Expected a value in the filter, found {text!r}.", "invalidFilter")


def parse_filter(text: str) -> Node:
    return _Parser(text).parse()


# ------------------------------------------------------------------------------------------- the compiler
@dataclass(frozen=True)
class Attribute:
    """How one filterable attribute maps to SQL: a column expression (text, boolean or timestamp), or a
    callable building the condition itself (multi-valued attributes kept in other tables)."""

    column: Any = None
    kind: str = "string"  # "string" | "boolean" | "datetime" | "uuid"
    case_exact: bool = False
    condition: Callable[[str, Any], ColumnElement[bool]] | None = None


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _compare_string(attr: Attribute, op: str, value: Any) -> ColumnElement[bool]:
    if value is None:
        empty: ColumnElement[bool] = attr.column.is_(None) if op == "eq" else attr.column.isnot(None)
        return empty
    if not isinstance(value, str):
        raise ScimError(400, "This attribute is compared with a string.", "invalidFilter")
    column: Any = attr.column if attr.case_exact else func.lower(attr.column)
    needle = value if attr.case_exact else value.lower()
    if op == "eq":
        equal: ColumnElement[bool] = column == needle
        return equal
    if op == "ne":
        return or_(attr.column.is_(None), column != needle)
    if op in {"co", "sw", "ew"}:
        pattern = _like_escape(needle)
        pattern = {"co": f"%{pattern}%", "sw": f"{pattern}%", "ew": f"%{pattern}"}[op]
        like: ColumnElement[bool] = column.like(pattern, escape="\\")
        return like
    ordered: dict[str, ColumnElement[bool]] = {
        "gt": column > needle,
        "lt": column < needle,
        "ge": column >= needle,
        "le": column <= needle,
    }
    return ordered[op]


def _compare(attr: Attribute, node: Compare) -> ColumnElement[bool]:
    if attr.condition is not None:
        return attr.condition(node.op, node.value)
    if attr.kind == "boolean":
        value = node.value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            value = value.lower() == "true"
        if not isinstance(value, bool) or node.op not in {"eq", "ne"}:
            raise ScimError(
                400, "A boolean attribute is compared with eq or ne and true or false.", "invalidFilter"
            )
        return attr.column.is_(value) if node.op == "eq" else attr.column.isnot(value)  # type: ignore[no-any-return]
    if attr.kind == "uuid":
        if node.op not in {"eq", "ne"} or not isinstance(node.value, str):
            raise ScimError(400, "An id is compared with eq or ne and a string.", "invalidFilter")
        import uuid

        try:
            wanted = uuid.UUID(node.value)
        except ValueError:
            return false() if node.op == "eq" else true()
        return attr.column == wanted if node.op == "eq" else attr.column != wanted  # type: ignore[no-any-return]
    if attr.kind == "datetime":
        from datetime import datetime

        if not isinstance(node.value, str) or node.op in {"co", "sw", "ew"}:
            raise ScimError(400, "A date is compared with eq, ne, gt, ge, lt or le.", "invalidFilter")
        try:
            when = datetime.fromisoformat(node.value.replace("Z", "+00:00"))
        except ValueError:
            raise ScimError(400, f"{node.value!r} is not a date and time.", "invalidFilter") from None
        column = attr.column
        return {  # type: ignore[no-any-return]
            "eq": column == when,
            "ne": column != when,
            "gt": column > when,
            "lt": column < when,
            "ge": column >= when,
            "le": column <= when,
        }[node.op]
    return _compare_string(attr, node.op, node.value)


def compile_filter(node: Node, attributes: Mapping[str, Attribute], prefix: str = "") -> ColumnElement[bool]:
    """The filter as SQL over ``attributes`` (keys: lower-case dotted paths). An attribute the resource does
    not have is an invalidFilter error."""

    def lookup(path: str) -> Attribute:
        full = prefix + path
        attr = attributes.get(full)
        if attr is None:
            raise ScimError(400, f"Filtering on {full!r} is not supported.", "invalidFilter")
        return attr

    if isinstance(node, Logical):
        left = compile_filter(node.left, attributes, prefix)
        right = compile_filter(node.right, attributes, prefix)
        return and_(left, right) if node.op == "and" else or_(left, right)
    if isinstance(node, Not):
        return not_(compile_filter(node.inner, attributes, prefix))
    if isinstance(node, ValuePath):
        if prefix:
            raise ScimError(400, "Value paths cannot nest.", "invalidFilter")
        return compile_filter(node.inner, attributes, node.path + ".")
    if isinstance(node, Present):
        attr = lookup(node.path)
        if attr.condition is not None:
            return attr.condition("pr", None)
        if attr.kind == "string":
            return and_(attr.column.isnot(None), attr.column != "")
        return attr.column.isnot(None)  # type: ignore[no-any-return]
    return _compare(lookup(node.path), node)


# -------------------------------------------------------------------------- PATCH paths (RFC 7644 §3.5.2)
@dataclass(frozen=True)
class PatchPath:
    attribute: str  # lower case; an extension attribute keeps its URN: "<urn>:department"
    value_filter: Node | None = None
    sub_attribute: str | None = None


def parse_patch_path(text: str) -> PatchPath:
    """``attr``, ``attr.sub``, ``urn:…:attr``, ``attr[filter]`` or ``attr[filter].sub``."""
    raw = text.strip()
    if not raw:
        raise ScimError(400, "The PATCH path is empty.", "invalidPath")
    value_filter: Node | None = None
    sub: str | None = None
    head = raw
    if "[" in raw:
        start = raw.index("[")
        end = raw.rfind("]")
        if end < start:
            raise ScimError(400, f"The PATCH path {raw!r} is malformed.", "invalidPath")
        head = raw[:start]
        try:
            value_filter = parse_filter(raw[start + 1 : end])
        except ScimError as exc:
            raise ScimError(400, f"The PATCH path {raw!r} has a malformed filter.", "invalidPath") from exc
        rest = raw[end + 1 :]
        if rest:
            if not rest.startswith(".") or len(rest) < 2:
                raise ScimError(400, f"The PATCH path {raw!r} is malformed.", "invalidPath")
            sub = rest[1:].lower()
    path = normalise_path(head)
    if not re.fullmatch(r"[a-z0-9_$:.\-]+", path):
        raise ScimError(400, f"The PATCH path {raw!r} is malformed.", "invalidPath")
    if value_filter is None and ":" not in path and "." in path:
        path, sub = path.split(".", 1)
    elif value_filter is None and ":" in path:
        # "<urn>:attr" or "<urn>:attr.sub"
        urn, _, attr = path.rpartition(":")
        if "." in attr:
            attr, sub = attr.split(".", 1)
        path = f"{urn}:{attr}"
    return PatchPath(path, value_filter, sub)


def matches(node: Node, item: Mapping[str, Any]) -> bool:
    """Evaluate a value-path filter against one element of a multi-valued attribute (PATCH targets)."""
    if isinstance(node, Logical):
        left, right = matches(node.left, item), matches(node.right, item)
        return (left and right) if node.op == "and" else (left or right)
    if isinstance(node, Not):
        return not matches(node.inner, item)
    if isinstance(node, ValuePath):
        return False
    lowered = {str(k).lower(): v for k, v in item.items()}
    value = lowered.get(node.path)
    if isinstance(node, Present):
        return value not in (None, "", [])
    wanted = node.value
    if isinstance(value, str) and isinstance(wanted, str):
        value, wanted = value.lower(), wanted.lower()
    if node.op == "eq":
        return bool(value == wanted)
    if node.op == "ne":
        return bool(value != wanted)
    if isinstance(value, str) and isinstance(wanted, str):
        if node.op == "co":
            return wanted in value
        if node.op == "sw":
            return value.startswith(wanted)
        if node.op == "ew":
            return value.endswith(wanted)
    return False
