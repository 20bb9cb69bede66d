"""Field types for request bodies that take JSON's types as they are.

Pydantic's lax mode reads ``true`` as the integer 1 and ``0`` as false; the OpenAPI document says
``integer`` and ``boolean``, and a client sending the other type has made a mistake worth a 422. Text is still
converted where the portal's forms pass it (a number typed into a form)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Strict


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("Input should be a valid integer, not true or false")
    return value


Integer = Annotated[int, BeforeValidator(_not_a_boolean)]
Boolean = Annotated[bool, Strict()]  # true or false only (the portal passes Python booleans)
