"""``python -m infra.simulator``: run the Massive-compatible simulator."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from infra.simulator.server import Faults, SimulatorConfig, SimulatorServer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Massive-compatible market simulator (WebSocket "
                                 "/stocks and /options)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s per connection")
    ap.add_argument("--api-key", action="append", default=[],
                    help="accepted key (repeatable); default: any non-empty key")
    for name in ("malformed-every", "unknown-event-every", "duplicate-every", "drop-every",
                 "disorder-every", "disconnect-after-frames", "slow-send-ms", "http-429-every"):
        ap.add_argument(f"--{name}", type=int, default=0)
    ap.add_argument("--auth-fail", action="store_true", help="refuse every key")
    a = ap.parse_args(argv)
    faults = Faults(a.malformed_every, a.unknown_event_every, a.duplicate_every, a.drop_every,
                    a.disorder_every, a.disconnect_after_frames, a.auth_fail, a.slow_send_ms,
                    a.http_429_every)
    cfg = SimulatorConfig(a.host, a.port, a.seed, a.rate, tuple(a.api_key), faults=faults)

    async def run() -> None:
        server = SimulatorServer(cfg)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        print(f"massive simulator on ws://{a.host}:{server.port}/stocks|/options",
              file=sys.stderr)
        await stop.wait()
        await server.stop()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
