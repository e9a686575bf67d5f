"""Dynamic strikes on a live connection: the stocks feed moves spot, the options connection
follows (``StrikeManager``), subscribing and unsubscribing without reconnecting."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from connectors.massive_ws import MassiveWsConnector, WsConfig, WsStats, run_ws
from tickflow.prices import px_e9
from tickflow.strikes import StrikeManager

log = logging.getLogger(__name__)


class _Tick(msgspec.Struct):
    ev: str = ""
    sym: str = ""
    bp: float = 0.0
    ap: float = 0.0
    p: float = 0.0


_TICKS = msgspec.json.Decoder(list[_Tick])


class StrikeFollower:
    """Feed it the stocks connection's frames; it keeps the options subscriptions around
    spot of ``manager.underlying``."""

    def __init__(self, manager: StrikeManager, options: MassiveWsConnector) -> None:
        self.manager = manager
        self.options = options
        self.spot_e9: int | None = None
        self.updates = 0

    def spot_from(self, frame: bytes) -> int | None:
        """Latest spot of the underlying in a stocks frame: quote mid, else trade price."""
        try:
            ticks = _TICKS.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # malformed frames are the dataflow's business, not ours
        spot = None
        for t in ticks:
            if t.sym != self.manager.underlying:
                continue
            if t.ev == "Q" and t.bp > 0 and t.ap > 0:
                spot = px_e9((t.bp + t.ap) / 2)
            elif t.ev == "T" and t.p > 0:
                spot = px_e9(t.p)
        return spot

    async def on_stock_frame(self, frame: bytes) -> None:
        spot = self.spot_from(frame)
        if spot is None:
            return
        self.spot_e9 = spot
        if not self.manager.should_update(spot):
            return
        add, remove = self.manager.get_target_strikes(spot)
        self.updates += 1
        log.info("re-centring option strikes", extra={"spot": spot / 1e9, "add": len(add),
                                                       "remove": len(remove)})
        if add:
            await self.options.subscribe(*sorted(add))
        if remove:
            await self.options.unsubscribe(*sorted(remove))


async def run_live(stocks: WsConfig, options: WsConfig, manager: StrikeManager,
                   kafka_conf: dict[str, Any], duration_s: float | None = None,
                   stop: asyncio.Event | None = None) -> tuple[WsStats, WsStats]:
    """Both connections of a live session; option strikes follow the stocks feed's spot.
    ``stop`` ends both."""
    holder: dict[str, MassiveWsConnector] = {}
    ready = asyncio.Event()

    def on_options(c: MassiveWsConnector) -> None:
        holder["options"] = c
        ready.set()

    opt_task = asyncio.create_task(run_ws(options, kafka_conf, duration_s,
                                          connector_hook=on_options, stop=stop))
    await ready.wait()
    follower = StrikeFollower(manager, holder["options"])

    def on_stocks(c: MassiveWsConnector) -> None:
        c.frame_hook = follower.on_stock_frame

    stk_task = asyncio.create_task(run_ws(stocks, kafka_conf, duration_s,
                                          connector_hook=on_stocks, stop=stop))
    s_stats, o_stats = await asyncio.gather(stk_task, opt_task)
    return s_stats, o_stats
