"""The project's own schema gate: refuse a breaking change before it reaches a registry.

Offline, each ``.avsc`` is checked against its previous committed version (the newest commit
in which the file differs from the working tree) with the ``avro`` package's
``ReaderWriterCompatibilityChecker``: BACKWARD means the new schema can read data written
with the old one. Online, the registry's own compatibility endpoint is asked as well.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.model import ALL_EVENTS, SCHEMA_DIR, EventType


@dataclass
class CheckResult:
    subject: str
    against: str  # what the schema was compared with
    compatible: bool
    messages: list[str]


def _name_location(schema: Any, location: str) -> str:
    """'/fields/1/type' -> "field 'price_e9'" by walking the schema's JSON."""
    node: Any = schema
    names: list[str] = []
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


def reader_writer_problems(reader: avro.schema.Schema, writer: avro.schema.Schema) -> list[str]:
    """Why ``reader`` cannot read data written with ``writer``, per the ``avro`` package's
    checker, with each location named by its field (empty when compatible)."""
    res = ReaderWriterCompatibilityChecker().get_compatibility(reader, writer)
    if res.compatibility is SchemaCompatibilityType.compatible:
        return []
    reader_json = reader.to_json()
    where = ", ".join(_name_location(reader_json, loc) for loc in sorted(res.locations)
                      if loc != "/")
    return [f"{m} ({where})" if where else m for m in sorted(res.messages)] or ["incompatible"]


def backward_problems(new: str, old: str) -> list[str]:
    """Why ``new`` cannot read data written with ``old`` (empty when BACKWARD compatible)."""
    return reader_writer_problems(avro.schema.parse(new), avro.schema.parse(old))


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout


def previous_committed(path: Path) -> tuple[str, str] | None:
    """(commit, content) of the newest committed version of ``path`` that differs from the
    file as it is now, or None when there is no such version (new file, no git)."""
    repo = path.parent
    top = _git(repo, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    root = Path(top.strip()).resolve()
    rel = path.resolve().relative_to(root).as_posix()
    current = path.read_text()
    log = _git(root, "log", "--format=%H", "--", rel) or ""
    for commit in log.split():
        content = _git(root, "show", f"{commit}:{rel}")
        if content is not None and content != current:
            return commit[:12], content
    return None


def check_offline(event_types: tuple[EventType, ...] = ALL_EVENTS) -> list[CheckResult]:
    results = []
    for et in event_types:
        prev = previous_committed(et.schema_path)
        if prev is None:
            results.append(CheckResult(et.subject, "no previous version", True, []))
            continue
        commit, old = prev
        problems = backward_problems(et.schema_str, old)
        results.append(CheckResult(et.subject, f"git {commit}", not problems, problems))
    return results


def check_registry(registry_conf: dict[str, Any],
                   event_types: tuple[EventType, ...] = ALL_EVENTS) -> list[CheckResult]:
    """Ask the registry whether each schema may be registered under its subject."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    client = SchemaRegistryClient(registry_conf)
    results = []
    for et in event_types:
        try:
            ok = client.test_compatibility(et.subject, Schema(et.schema_str, "AVRO"))
            results.append(CheckResult(et.subject, "registry", bool(ok),
                                       [] if ok else ["registry reports incompatible"]))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:  # subject not registered yet: nothing to break
                results.append(CheckResult(et.subject, "registry (new subject)", True, []))
            else:
                results.append(CheckResult(et.subject, "registry", False, [str(exc)]))
    return results


__all__ = ["SCHEMA_DIR", "CheckResult", "backward_problems", "check_offline", "check_registry"]
