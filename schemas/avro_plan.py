"""Avro schemas compiled to the write plans of the ``schemas._avro_writer`` extension.

A plan is nested tuples, one node per Avro type, resolved once per schema (named types,
enum symbol indexes, the null branch of each ``[null, T]`` union), so encoding an event is
one walk with one dict lookup per field. Plans only cover what our contracts use; anything
else raises ``UnsupportedSchema`` and the caller keeps the generic codec.
"""

from __future__ import annotations

import sys
from typing import Any

LONG, INT, STRING, BYTES, BOOLEAN, ENUM, ARRAY, RECORD, NULLABLE, DATE = range(10)
_PRIMITIVE = {"long": LONG, "int": INT, "string": STRING, "bytes": BYTES, "boolean": BOOLEAN}

Plan = tuple[Any, ...]


class UnsupportedSchema(ValueError):
    """A schema construct the compiled writer does not encode."""


def compile_plan(schema: Any, named: dict[str, Plan] | None = None) -> Plan:
    """The write plan of an Avro schema (parsed JSON)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in _PRIMITIVE:
            return (_PRIMITIVE[schema],)
        if schema in named:
            return named[schema]
        raise UnsupportedSchema(f"Avro type {schema!r}")
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        if len(schema) != 2 or len(branches) != 1:
            raise UnsupportedSchema(f"union {schema!r}: only [null, T] is compiled")
        value_index = schema.index(branches[0])
        return (NULLABLE, 1 - value_index, value_index, compile_plan(branches[0], named))
    kind = schema["type"]
    if kind == "int" and schema.get("logicalType") == "date":
        return (DATE,)  # a datetime.date or days since 1970-01-01, as fastavro takes it
    if kind in _PRIMITIVE:  # a primitive written as {"type": ...}
        return (_PRIMITIVE[kind],)
    if kind == "enum":
        plan: Plan = (ENUM, {sys.intern(s): i for i, s in enumerate(schema["symbols"])})
        named[schema["name"]] = plan
        if "namespace" in schema:
            named[f"{schema['namespace']}.{schema['name']}"] = plan
        return plan
    if kind == "array":
        return (ARRAY, compile_plan(schema["items"], named))
    if kind == "record":
        fields = tuple((sys.intern(f["name"]), compile_plan(f["type"], named))
                       for f in schema["fields"])
        plan = (RECORD, fields)
        named[schema["name"]] = plan
        return plan
    raise UnsupportedSchema(f"Avro type {kind!r}")
