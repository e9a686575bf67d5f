"""Dynamic option strikes: keep subscriptions within +/- N strikes of the underlying's spot.

``StrikeManager.should_update(spot)`` tells when spot has moved past the threshold since the
last re-centre; ``get_target_strikes(spot)`` returns the channels to add and to remove, so a
connection can change subscriptions live without reconnecting. Pure logic, no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from tickflow.prices import PRICE_SCALE
from tickflow.symbols import option_ticker


class StrikeManager:
    """Option channels (e.g. ``T.O:SPY251216C00676000``) around spot for chosen expiries."""

    def __init__(self, underlying: str, expiries: Iterable[dt.date], strikes_each_side: int = 10,
                 strike_step_e9: int = PRICE_SCALE, threshold_e9: int | None = None,
                 channels: tuple[str, ...] = ("T", "Q"), rights: tuple[str, ...] = ("CALL", "PUT")
                 ) -> None:
        if strikes_each_side < 0 or strike_step_e9 <= 0:
            raise ValueError("strikes_each_side must be >= 0 and strike_step_e9 > 0")
        self.underlying = underlying
        self.expiries = sorted(set(expiries))
        self.n = strikes_each_side
        self.step = strike_step_e9
        # Re-centre once spot is more than half a strike away from the centre strike: that is
        # when the nearest strike changes.
        self.threshold = threshold_e9 if threshold_e9 is not None else strike_step_e9 // 2
        self.channels = channels
        self.rights = rights
        self.center: int | None = None
        self.current: set[str] = set()

    def atm_strike(self, spot_e9: int) -> int:
        return ((spot_e9 + self.step // 2) // self.step) * self.step

    def should_update(self, spot_e9: int) -> bool:
        return self.center is None or abs(spot_e9 - self.center) > self.threshold

    def target(self, spot_e9: int) -> set[str]:
        atm = self.atm_strike(spot_e9)
        out: set[str] = set()
        for k in range(-self.n, self.n + 1):
            strike = atm + k * self.step
            if strike <= 0:
                continue
            for expiry in self.expiries:
                for right in self.rights:
                    ticker = option_ticker(self.underlying, expiry, right, strike)
                    out.update(f"{c}.{ticker}" for c in self.channels)
        return out

    def get_target_strikes(self, spot_e9: int) -> tuple[set[str], set[str]]:
        """(channels to add, channels to remove) for ``spot_e9``; records the new state."""
        want = self.target(spot_e9)
        add, remove = want - self.current, self.current - want
        self.current = want
        self.center = self.atm_strike(spot_e9)
        return add, remove
