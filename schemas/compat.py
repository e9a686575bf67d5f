"""Schema compatibility, the rule both the registry and ``tickflow schemas check`` apply:
whether a reader schema can read what a writer schema wrote, and if not, why, in words."""

from __future__ import annotations

import re
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType


def _field_path(schema_json: Any, location: str) -> str:
    """'/fields/1/type' -> "field 'price_e9'", by walking the schema's JSON."""
    node, names = schema_json, []
    parts = [p for p in location.split("/") if p]
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            if i > 0 and parts[i - 1] == "fields" and isinstance(node, dict):
                names.append(str(node.get("name")))
        else:
            break
    return f"field '{'.'.join(names)}'" if names else f"location {location}"


def reader_problems(reader: avro.schema.Schema, writer: avro.schema.Schema) -> list[str]:
    """Why ``reader`` cannot read data written with ``writer`` (empty when it can)."""
    res = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if res.compatibility is SchemaCompatibilityType.compatible:
        return []
    # The checker merges what it finds into unpaired sets, so they are reported side by side.
    kinds = ", ".join(sorted({i.value.upper() for i in res.incompatibilities}))
    # A missing default is reported as the bare field name; every other message is a phrase.
    msgs = "; ".join(f"reader field '{m}' has no default" if re.fullmatch(r"[A-Za-z_]\w*", m)
                     else m for m in sorted(res.messages))
    where = ", ".join(_field_path(reader.to_json(), loc) for loc in sorted(res.locations))
    return [f"{kinds}: {msgs} (at {where})"]
