"""StrikeManager: the option subscriptions follow spot."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from tickflow.strikes import StrikeManager
from tickflow.symbols import parse_option_ticker

E9 = 1_000_000_000
EXP = dt.date(2025, 12, 16)


def test_initial_subscriptions_around_spot() -> None:
    m = StrikeManager("SPY", [EXP], strikes_each_side=2)
    assert m.should_update(676_30 * E9 // 100)
    add, remove = m.get_target_strikes(676_30 * E9 // 100)
    assert remove == set()
    strikes = sorted({parse_option_ticker(c.split(".", 1)[1]).strike for c in add})
    assert strikes == [674.0, 675.0, 676.0, 677.0, 678.0]
    assert "T.O:SPY251216C00676000" in add and "Q.O:SPY251216P00678000" in add
    assert len(add) == 5 * 2 * 2  # strikes x rights x channels


def test_moves_past_threshold_shift_the_window() -> None:
    m = StrikeManager("SPY", [EXP], strikes_each_side=2)
    m.get_target_strikes(676 * E9)
    assert not m.should_update(676 * E9 + 400_000_000)  # 0.40 away: same ATM strike
    assert m.should_update(676 * E9 + 600_000_000)
    add, remove = m.get_target_strikes(677 * E9 + 100_000_000)
    assert {parse_option_ticker(c.split(".", 1)[1]).strike for c in add} == {679.0}
    assert {parse_option_ticker(c.split(".", 1)[1]).strike for c in remove} == {674.0}


@given(st.lists(st.integers(100 * E9, 1000 * E9), min_size=1, max_size=20))
def test_current_always_equals_target(spots: list[int]) -> None:
    m = StrikeManager("SPY", [EXP], strikes_each_side=3)
    subs: set[str] = set()
    for s in spots:
        add, remove = m.get_target_strikes(s)
        assert not (add & remove)
        subs = (subs | add) - remove
        assert subs == m.target(s) == m.current
