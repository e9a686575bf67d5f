"""Imports run one way: contracts (schemas/) <- domain rules (tickflow/) <- adapters
(connectors/) <- dataflows (flows/) <- the application (app/) and the embedded stack (infra/).
Every import is checked, those inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("schemas", "tickflow", "connectors", "flows", "infra", "app")
# What each package may import (a package or a module prefix), of ours and of the engines the
# rules must not know.
ALLOWED = {
    # The registry client only: subjects and versions are the contract's own governance.
    "schemas": {"confluent_kafka.schema_registry"},
    "tickflow": {"schemas"},
    "connectors": {"schemas", "tickflow", "confluent_kafka", "bytewax"},
    "flows": {"schemas", "tickflow", "connectors", "confluent_kafka", "bytewax"},
    "infra": {"schemas", "tickflow", "connectors", "confluent_kafka"},
    "app": {"schemas", "tickflow", "connectors", "flows", "infra", "confluent_kafka"},
}
WATCHED = (*OURS, "confluent_kafka", "bytewax")


def imports_of(package: str) -> list[tuple[str, int, str]]:
    """(file, line, imported top-level package) for every import of a watched package."""
    found = []
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no modules under {package}/"
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            else:
                continue
            for m in mods:
                top = m.split(".")[0]
                if top in WATCHED and top != package:
                    found.append((str(f.relative_to(ROOT)), node.lineno, m))
    return found


@pytest.mark.parametrize("package", OURS)
def test_imports_run_one_way(package: str) -> None:
    wrong = [f"{f}:{line} imports {m}" for f, line, m in imports_of(package)
             if not any(m == a or m.startswith(a + ".") for a in ALLOWED[package])]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports() -> None:
    """The rule is not vacuous: the packages that must import others are seen doing so."""
    assert {m.split(".")[0] for _, _, m in imports_of("app")} >= {"flows", "connectors", "infra"}
    assert any(m.startswith("bytewax") for _, _, m in imports_of("flows"))
    assert any(m.startswith("schemas") for _, _, m in imports_of("tickflow"))
