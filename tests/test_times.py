"""Times: one set of forms on every command (ISO 8601 with a zone, a date, UTC ns), exact."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest
import typer

from app.cli import app
from tickflow.times import BadTime, parse_time_ns

T = 1_763_047_800_000_000_000  # 2025-11-13T15:30:00Z


@pytest.mark.parametrize("text, want", [
    ("2025-11-13T15:30:00Z", T),
    ("2025-11-13T10:30:00-05:00", T),
    ("2025-11-13T15:30:00.000000001Z", T + 1),  # beyond datetime's microseconds, exactly
    ("2025-11-13T15:30:00.123456789+00:00", T + 123_456_789),
    ("2025-11-13", T - (15 * 3600 + 1800) * 10**9),
    (str(T), T),
    (T, T),
    (dt.datetime(2025, 11, 13, 15, 30, tzinfo=dt.UTC), T),
])
def test_forms(text: object, want: int) -> None:
    assert parse_time_ns(text) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["2025-11-13T15:30:00", "yesterday", "13/11/2025", ""])
def test_bad_times_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(BadTime, match=r"zone|ISO 8601"):
        parse_time_ns(bad)


def _time_options() -> list[tuple[str, str, Any]]:
    """(command, parameter, its Annotated metadata) of every time parameter of the CLI."""
    out = []

    def walk(t: typer.Typer, path: str) -> None:
        for c in t.registered_commands:
            assert c.callback is not None
            hints = get_type_hints(c.callback, include_extras=True)
            for name, hint in hints.items():
                if name in ("start", "end", "to_datetime") or name.endswith("_ns"):
                    out.append((f"{path} {c.name or c.callback.__name__}".strip(), name, hint))
        for g in t.registered_groups:
            assert g.typer_instance is not None
            walk(g.typer_instance, f"{path} {g.name}".strip())

    walk(app, "")
    return out


def test_every_command_takes_times_in_the_same_forms() -> None:
    opts = _time_options()
    assert len(opts) >= 9, opts  # query, backfill run, dbn replay, replay lake, replay reset
    for cmd, name, hint in opts:
        base, *meta = get_args(hint)
        assert base in (str, str | None), (cmd, name, base)  # parsed by tickflow.times
        helps = [getattr(m, "help", "") or "" for m in meta]
        assert any("ISO 8601 with a zone" in h for h in helps), (cmd, name)


def test_query_takes_each_form(tmp_path: Path) -> None:
    env = {**os.environ, "TICKFLOW_LAKE_ROOT": str(tmp_path)}
    for start in ("2025-11-13T15:30:00Z", "2025-11-13", str(T)):
        run = subprocess.run([sys.executable, "-m", "app.cli", "query", "stock_trade",
                              "--start", start], env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0 and "0 rows" in run.stdout, run.stderr
    run = subprocess.run([sys.executable, "-m", "app.cli", "query", "stock_trade", "--start",
                          "2025-11-13T15:30:00"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "no time zone" in run.stderr
