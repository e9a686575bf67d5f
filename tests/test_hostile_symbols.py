"""Symbols built to attack paths never write outside the lake root, and impossible ones are
dead letters: the whole normalization path, then the real lake writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.lake import LakeBuffer
from tickflow.normalizer import MarketDataNormalizer
from tickflow.symbols import MAX_SYMBOL_LEN, symbol_problem

T_MS = 1_763_049_600_000
RECV = T_MS * 1_000_000 + 2_000_000

PATHLIKE = ["../../etc", "/abs/path", "..", ".", "A B", "a/../../b", "%2e%2e", "~root"]
IMPOSSIBLE = ["A\x00B", "X" * (MAX_SYMBOL_LEN + 1), "ÄPFEL", "\n", "", "SPY\r\n", "\u202eRTL"]


def quote(sym: str, seq: int) -> dict[str, object]:
    return {"ev": "Q", "sym": sym, "bx": 4, "bp": 10.01, "bs": 1, "ax": 7, "ap": 10.02,
            "as": 1, "t": T_MS, "q": seq}


def run(symbols: list[str], root: Path) -> tuple[list[tuple[str, dict]], LakeBuffer]:
    frame = json.dumps([quote(s, i + 1) for i, s in enumerate(symbols)]).encode()
    out = MarketDataNormalizer().on_message(frame, RECV)
    buf = LakeBuffer(root)
    for i, (type_name, ev) in enumerate(out):
        buf.add(type_name, ev, "raw.massive.stocks", 0, i)
    buf.flush_all()
    return out, buf


def assert_inside(root: Path, tmp: Path) -> None:
    assert sorted(p.name for p in tmp.iterdir()) == ["lake"], "something was written beside"
    for p in root.rglob("*"):
        assert p.resolve().is_relative_to(root.resolve()), p


def test_path_like_symbols_stay_inside_and_impossible_ones_are_dead_letters(
        tmp_path: Path) -> None:
    root = tmp_path / "lake"
    out, buf = run(PATHLIKE + IMPOSSIBLE, root)
    published = {ev["symbol"] for t, ev in out if t == "stock_quote"}
    assert published == set(PATHLIKE)
    dead = [ev for t, ev in out if t == "dead_letter"]
    assert len(dead) == len(IMPOSSIBLE)
    assert all(d["reason_code"] == "BAD_VALUE" and d["symbol"] is None for d in dead)
    assert len(buf.files_written) == len(PATHLIKE)
    assert_inside(root, tmp_path)
    # Each path-like symbol got its own folder, named by its escaped form.
    dirs = {p.parent.parent.name for p in buf.files_written}
    assert "symbol=..%2F..%2Fetc" in dirs and "symbol=%2Fabs%2Fpath" in dirs


def test_symbol_rule() -> None:
    assert symbol_problem("O:SPY251216C00676000") is None
    assert symbol_problem("ESZ5 C6000") is None  # CME options carry a space
    assert all(symbol_problem(s) for s in IMPOSSIBLE)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=80), min_size=1, max_size=6))
def test_any_symbol_text_is_published_inside_the_root_or_dead_lettered(
        tmp_path_factory: pytest.TempPathFactory, symbols: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("hostile")
    out, _ = run(symbols, tmp / "lake")
    kept = [ev["symbol"] for t, ev in out if t == "stock_quote"]
    dead = [ev for t, ev in out if t == "dead_letter"]
    assert len(kept) + len(dead) == len(symbols)  # nothing lost, nothing raised
    assert all(symbol_problem(s) is None for s in kept)
    if (tmp / "lake").exists():
        assert_inside(tmp / "lake", tmp)
