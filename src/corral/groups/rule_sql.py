"""Dynamic-group rules in SQL: a parsed rule becomes one SQLAlchemy boolean expression, so membership of any
number of objects is computed by PostgreSQL (``select(Device.id).where(compile_rule(rule, DEVICE_SCHEMA))``).

Every value travels as a bound parameter. Text comparisons use ``lower()`` on both sides (``LIKE``
patterns escape ``%``, ``_`` and ``\\``), ``-match`` uses ``~*``, and a null attribute never makes a
comparison unknown: positive operators add ``col IS NOT NULL AND …`` and negative ones ``col IS NULL OR NOT
…``, so ``-not`` and ``-ne`` keep rows SQL's three-valued logic would drop. The semantics are those of
``rules.evaluate``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, String, and_, false, func, literal, not_, or_, select
from sqlalchemy.orm import QueryableAttribute

from corral.groups.rules import (
    RULE_SCHEMAS,
    And,
    AttributeType,
    AttributeValue,
    BoolValue,
    Comparison,
    EntityKind,
    ListValue,
    Node,
    Not,
    NullValue,
    Operator,
    Or,
    Rule,
    RuleSchema,
    StringValue,
    choices_matching,
)
from corral.models import Device, EnrollmentToken, User

Column = ColumnElement[Any] | QueryableAttribute[Any]


@dataclass(frozen=True, eq=False)
class EntitySchema(RuleSchema):
    """A rule schema whose attributes are bound to SQL expressions (columns or correlated subqueries)."""

    columns: Mapping[str, ColumnElement[Any]] = field(default_factory=dict)

    def column(self, name: str) -> ColumnElement[Any]:
        return self.columns[name]


def bind_schema(kind: EntityKind | str, columns: Mapping[str, Column]) -> EntitySchema:
    """The rule schema of ``kind`` restricted to the attributes given ``columns``; rules using any other
    attribute of that kind are refused as "isn't supported" (Corral doesn't record it yet)."""
    base = RULE_SCHEMAS[EntityKind(kind)]
    unknown = sorted(set(columns) - set(base.attributes))
    if unknown:
        raise ValueError(f"not {base.kind} attributes: {', '.join(unknown)}")
    unbound = {
        name.lower(): "Corral doesn't record it yet" for name in base.attributes if name not in columns
    }
    return EntitySchema(
        kind=base.kind,
        attributes={name: a for name, a in base.attributes.items() if name in columns},
        unsupported={**base.unsupported, **unbound},
        columns={name: _expression(column) for name, column in columns.items()},
    )


def _expression(column: Column) -> ColumnElement[Any]:
    if isinstance(column, QueryableAttribute):
        expression: ColumnElement[Any] = column.expression
        return expression
    return column


# ------------------------------------------------------------------------------------------------ devices

DEVICE_FIELDS: Mapping[str, str] = {
    "objectId": "id",
    "deviceId": "id",
    "displayName": "name",
    "deviceOSType": "platform",
    "deviceOSVersion": "os_version",
    "deviceOwnership": "ownership",
    "deviceManufacturer": "manufacturer",
    "deviceModel": "model",
    "isRooted": "jailbroken",
    "serialNumber": "serial_number",
    "cpuArchitecture": "cpu_architecture",
}
"""Device attributes read straight from a ``devices`` column (attribute -> Device field)."""

ENROLLMENT_PROFILE_NAME = (
    select(EnrollmentToken.name)
    .where(EnrollmentToken.id == Device.enrollment_token_id)
    .correlate(Device)
    .scalar_subquery()
)

DEVICE_SCHEMA = bind_schema(
    EntityKind.device,
    {
        **{name: getattr(Device, fieldname) for name, fieldname in DEVICE_FIELDS.items()},
        "enrollmentProfileName": ENROLLMENT_PROFILE_NAME,
    },
)


def device_attribute_values(
    device: Device, *, enrollment_profile_name: str | None = None
) -> dict[str, AttributeValue]:
    """A device's attribute values for ``rules.evaluate`` (the enrollment token's name is passed in, so the
    device needs no relationship loaded)."""
    values: dict[str, AttributeValue] = {}
    for name, fieldname in DEVICE_FIELDS.items():
        value = getattr(device, fieldname)
        values[name] = value if value is None or isinstance(value, bool | uuid.UUID) else str(value)
    values["enrollmentProfileName"] = enrollment_profile_name
    return values


# -------------------------------------------------------------------------------------------------- users

USER_FIELDS: Mapping[str, str] = {
    "objectId": "id",
    "accountEnabled": "enabled",
    "userPrincipalName": "user_principal_name",
    "mail": "email",
    "displayName": "display_name",
    "givenName": "given_name",
    "surname": "surname",
    "department": "department",
    "jobTitle": "job_title",
}
"""User attributes Corral records (attribute -> User field); every other Entra user attribute is refused as
"isn't supported … Corral doesn't record it yet"."""

USER_SCHEMA = bind_schema(
    EntityKind.user, {name: getattr(User, fieldname) for name, fieldname in USER_FIELDS.items()}
)


def user_attribute_values(user: User) -> dict[str, AttributeValue]:
    """A user's attribute values for ``rules.evaluate``."""
    values: dict[str, AttributeValue] = {}
    for name, fieldname in USER_FIELDS.items():
        value = getattr(user, fieldname)
        values[name] = value if value is None or isinstance(value, bool | uuid.UUID) else str(value)
    return values


SCHEMAS: Mapping[EntityKind, EntitySchema] = {EntityKind.device: DEVICE_SCHEMA, EntityKind.user: USER_SCHEMA}
"""The bound schema of each kind of dynamic group."""


# ----------------------------------------------------------------------------------------------- compiler


def compile_rule(rule: Rule | Node, schema: EntitySchema) -> ColumnElement[bool]:
    """The rule as a boolean SQL expression over ``schema``'s columns (never null)."""
    if isinstance(rule, Rule):
        if rule.kind is not schema.kind:
            raise ValueError(f"a {rule.kind} rule can't be compiled for {schema.kind}s")
        rule = rule.root
    return _compile(rule, schema)


def _compile(node: Node, schema: EntitySchema) -> ColumnElement[bool]:
    if isinstance(node, Comparison):
        return compile_comparison(node, schema.column(node.attribute.name))
    if isinstance(node, Not):
        return not_(_compile(node.operand, schema))
    parts = [_compile(child, schema) for child in node.operands]
    if isinstance(node, And):
        return and_(*parts)
    assert isinstance(node, Or)
    return or_(*parts)


def compile_comparison(comparison: Comparison, column: ColumnElement[Any]) -> ColumnElement[bool]:
    operator, value, attribute = comparison.operator, comparison.value, comparison.attribute
    if isinstance(value, NullValue):
        return column.is_(None) if operator is Operator.eq else column.is_not(None)
    if isinstance(value, BoolValue):  # IS TRUE / IS NOT TRUE: already two-valued
        return column.is_(value.value) if operator is Operator.eq else column.is_not(value.value)
    assert isinstance(value, StringValue | ListValue)
    positive = _positive(comparison, value, column)
    if not attribute.nullable:
        return not_(positive) if operator.negated else positive
    if operator.negated:
        return or_(column.is_(None), not_(positive))
    return and_(column.is_not(None), positive)


def _positive(
    comparison: Comparison, value: StringValue | ListValue, column: ColumnElement[Any]
) -> ColumnElement[bool]:
    """The comparison's positive operator (-eq for -ne …) on a non-null column."""
    kind, operator = comparison.attribute.type, comparison.operator.positive
    if kind is AttributeType.identifier:
        ids = [uuid.UUID(v) for v in (value.values if isinstance(value, ListValue) else (value.value,))]
        return column == ids[0] if operator is Operator.eq else column.in_(ids)
    if kind is AttributeType.choice:
        stored = sorted(choices_matching(comparison.attribute, operator, value))
        return column.in_(stored) if stored else false()
    lowered = func.lower(column)
    if isinstance(value, ListValue):
        return lowered.in_([func.lower(_text(v)) for v in value.values])
    text = value.value
    if operator is Operator.eq:
        return lowered == func.lower(_text(text))
    if operator is Operator.match:
        return column.regexp_match(_text(text), flags="i")  # renders column ~* :pattern
    pattern = {
        Operator.starts_with: escape_like(text) + "%",
        Operator.ends_with: "%" + escape_like(text),
        Operator.contains: "%" + escape_like(text) + "%",
    }[operator]
    return lowered.like(func.lower(_text(pattern)), escape="\\")


def _text(value: str) -> ColumnElement[str]:
    return literal(value, String())  # a bound parameter, never inlined


def escape_like(value: str) -> str:
    """``value`` with LIKE's wildcards and the escape character escaped (``ESCAPE '\\'``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
