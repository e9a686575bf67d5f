"""``python -m infra.simulator``: run the Massive-compatible simulator until SIGTERM / Ctrl-C
(or ``--duration``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import fields, replace

from infra.simulator.market import MarketConfig
from infra.simulator.server import Faults, SimulatorConfig, SimulatorServer


def parse_args(argv: list[str] | None = None) -> SimulatorConfig:
    """The command line as a :class:`SimulatorConfig`."""
    ap = argparse.ArgumentParser(
        prog="python -m infra.simulator",
        description="Massive-compatible market simulator: WebSocket /stocks and /options, "
                    "REST /v3/quotes and /v3/trades, switchable faults")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18765, help="0: ephemeral")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s on each feed")
    ap.add_argument("--api-key", action="append", default=[],
                    help="accepted key (repeatable); default: any non-empty key")
    ap.add_argument("--symbols", default=",".join(MarketConfig.symbols),
                    help="stock symbols, comma-separated")
    ap.add_argument("--start-ms", type=int, default=None,
                    help="anchor event times here (Unix ms) instead of the wall clock")
    ap.add_argument("--duration", type=float, default=None,
                    help="end the streams and exit after this many seconds")
    ap.add_argument("--max-events-per-frame", type=int, default=50)
    ap.add_argument("--one-sided-rate", type=float, default=MarketConfig.one_sided_rate,
                    help="share of stock quotes with one empty side")
    ap.add_argument("--strikes-each-side", type=int, default=MarketConfig.strikes_each_side)
    ap.add_argument("--faults", default="",
                    help="e.g. malformed_every=50,drop_every=100,auth_fail")
    for f in fields(Faults):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            ap.add_argument(flag, action="store_true", default=None)
        else:
            ap.add_argument(flag, type=int, default=None, metavar="N")
    ap.add_argument("-v", "--verbose", action="store_true", help="log connections and auth")
    a = ap.parse_args(argv)

    try:
        faults = Faults.parse(a.faults)
    except ValueError as exc:
        ap.error(str(exc))
    # Individual flags win over --faults.
    faults = replace(faults, **{f.name: getattr(a, f.name) for f in fields(Faults)
                                if getattr(a, f.name) is not None})
    market = replace(MarketConfig(), symbols=tuple(s.strip() for s in a.symbols.split(",")
                                                   if s.strip()),
                     one_sided_rate=a.one_sided_rate, strikes_each_side=a.strikes_each_side)
    if a.start_ms is not None:
        market = replace(market, start_ms=a.start_ms)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return SimulatorConfig(host=a.host, port=a.port, seed=a.seed, rate=a.rate,
                           api_keys=tuple(a.api_key), anchor_to_wall_clock=a.start_ms is None,
                           max_events_per_frame=a.max_events_per_frame,
                           duration_s=a.duration, faults=faults, market=market)


async def serve(cfg: SimulatorConfig) -> None:
    """Serve until SIGTERM / SIGINT, or for ``cfg.duration_s``."""
    server = SimulatorServer(cfg)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"massive simulator on ws://{cfg.host}:{server.port}/stocks|/options "
          f"(seed {cfg.seed}, {cfg.rate:g} events/s, faults: "
          f"{cfg.faults.active() or 'none'})", file=sys.stderr, flush=True)
    with contextlib.suppress(TimeoutError):
        # A little past the duration, so the streams' own close frames go out first.
        await asyncio.wait_for(stop.wait(), None if cfg.duration_s is None
                               else cfg.duration_s + 0.5)
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
