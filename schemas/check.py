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

from schemas.compat import reader_problems
from schemas.model import ALL_EVENTS, SCHEMA_DIR, EventType


@dataclass
class CheckResult:
    subject: str
    against: str  # what the schema was compared with
    compatible: bool
    messages: list[str]


def backward_problems(new: str, old: str) -> list[str]:
    """Why ``new`` cannot read data written with ``old`` (empty when BACKWARD compatible)."""
    # One wording for the offline gate and the registry's 409: the registry's own rule.
    return reader_problems(avro.schema.parse(new), avro.schema.parse(old))


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
