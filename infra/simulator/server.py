"""Massive's WebSocket protocol over the synthetic market, with switchable faults.

Paths ``/stocks`` and ``/options``. On connect: ``[{"ev":"status","status":"connected",...}]``;
``{"action":"auth","params":KEY}`` -> ``auth_success`` or ``auth_failed`` (then close);
``subscribe`` / ``unsubscribe`` with ``Q.SPY,T.SPY`` (``Q.*`` wildcards) -> one status per
channel. Data frames are JSON arrays of 1..50 events of subscribed channels only.

Faults (every N-th frame of a connection, so they are deterministic): malformed JSON, an
unknown event type, a duplicated frame, a dropped frame, a sequence regression; a one-time
abrupt disconnect after N frames; auth failure; slow sends. The API key is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.simulator.rest import handle_rest

log = logging.getLogger("tickflow.simulator")
# websockets logs frames at DEBUG, client auth frames (API keys) included: never for us.
_ws_log = logging.getLogger("tickflow.simulator.websockets")
_ws_log.setLevel(logging.INFO)

TICK_S = 0.02


@dataclass
class Faults:
    """0 disables a fault; N > 0 applies it to every N-th frame of each connection."""

    malformed_every: int = 0
    unknown_event_every: int = 0
    duplicate_every: int = 0
    drop_every: int = 0
    disorder_every: int = 0
    disconnect_after_frames: int = 0  # once per server, then the client may reconnect
    auth_fail: bool = False
    slow_send_ms: int = 0  # pause before each frame (a slow server / slow consumer)
    http_429_every: int = 0  # every N-th REST request is refused with 429 (rate limit)


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 18765
    seed: int = 7
    rate: float = 2000.0  # events per second per connection (before subscription filter)
    api_keys: tuple[str, ...] = ()  # empty: any non-empty key is accepted
    anchor_to_wall_clock: bool = True  # event times start now (live-looking data)
    max_events_per_frame: int = 50
    faults: Faults = field(default_factory=Faults)
    market: MarketConfig = field(default_factory=MarketConfig)


def _status(status: str, message: str) -> str:
    return json.dumps([{"ev": "status", "status": status, "message": message}],
                      separators=(",", ":"))


def _matches(subs: set[str], ev: dict[str, Any]) -> bool:
    ch = ev["ev"]
    return f"{ch}.*" in subs or f"{ch}.{ev['sym']}" in subs


class SimulatorServer:
    """The simulator's WebSocket server. ``await start()`` / ``await stop()`` in an event loop,
    or ``run_in_thread()`` / ``stop_thread()`` from synchronous code."""

    def __init__(self, cfg: SimulatorConfig) -> None:
        self.cfg = cfg
        self._server: Server | None = None
        self._disconnected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.connections = 0
        self.frames_sent = 0
        self.rest_requests = 0
        self.paused = False  # stop streaming (tests: let in-flight frames land, then count)
        self.shifts: dict[str, int] = {}  # cents added to a stock's prices (move the market)
        # Live subscriptions per open connection: (market, channels), seen from the server.
        self.subscriptions: dict[int, tuple[str, set[str]]] = {}
        # One timeline for the server's life: WebSocket streams and REST history both draw
        # from a market anchored here, so REST returns exactly what the socket sent.
        self.anchor_ms = (time.time_ns() // 1_000_000 if cfg.anchor_to_wall_clock
                          else cfg.market.start_ms)
        self._t0 = time.monotonic()

    @property
    def port(self) -> int:
        if self._server is None:
            return self.cfg.port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> None:
        self._server = await serve(self._handle, self.cfg.host, self.cfg.port,
                                   max_size=None, compression=None, logger=_ws_log,
                                   process_request=self._http)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def run_in_thread(self) -> SimulatorServer:
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self.stop())
            self._loop.close()

        self._thread = threading.Thread(target=main, name="massive-simulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def live_subscriptions(self, market: str) -> set[str]:
        """Channels subscribed right now on the server's open ``market`` connections."""
        out: set[str] = set()
        for m, subs in list(self.subscriptions.values()):
            if m == market:
                out |= subs
        return out

    def market_config(self) -> MarketConfig:
        return replace(self.cfg.market, seed=self.cfg.seed, rate=self.cfg.rate,
                       start_ms=self.anchor_ms)

    def now_ms(self) -> int:
        """Event time the timeline has reached (the simulator's clock)."""
        return self.anchor_ms + int((time.monotonic() - self._t0) * 1000)

    # -- REST ----------------------------------------------------------------------------
    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a WebSocket handshake: not ours
        self.rest_requests += 1
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else parse_qs(
            urlsplit(request.path).query).get("apiKey", [""])[-1]
        if not key or self.cfg.faults.auth_fail or (self.cfg.api_keys
                                                    and key not in self.cfg.api_keys):
            return _json_response(401, {"status": "NOT_AUTHORIZED",
                                        "message": "Unknown API Key"})
        every = self.cfg.faults.http_429_every
        if every and self.rest_requests % every == 0:
            return _json_response(429, {"status": "ERROR", "error": "You've exceeded the "
                                        "maximum requests per minute"})
        host = request.headers.get("Host", f"{self.cfg.host}:{self.port}")
        status, body = handle_rest(request.path, self.market_config(), self.now_ms(),
                                   f"http://{host}")
        return _json_response(status, body)

    # -- protocol ------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        market = path.strip("/").split("/")[-1]
        if market not in ("stocks", "options"):
            await ws.close(1008, f"unknown feed {path}")
            return
        self.connections += 1
        await ws.send(_status("connected", "Connected Successfully"))
        try:
            if not await self._auth(ws):
                return
            subs: set[str] = set()
            self.subscriptions[id(ws)] = (market, subs)
            reader = asyncio.create_task(self._read_commands(ws, subs))
            try:
                await self._stream(ws, market, subs)
            finally:
                reader.cancel()
                self.subscriptions.pop(id(ws), None)
        except ConnectionClosed:
            return

    async def _auth(self, ws: ServerConnection) -> bool:
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        except (TimeoutError, ValueError):
            await ws.close(1008, "expected an auth message")
            return False
        key = msg.get("params") if isinstance(msg, dict) and msg.get("action") == "auth" else None
        ok = (isinstance(key, str) and bool(key) and not self.cfg.faults.auth_fail
              and (not self.cfg.api_keys or key in self.cfg.api_keys))
        if not ok:
            await ws.send(_status("auth_failed", "authentication failed"))
            await ws.close()
            return False
        await ws.send(_status("auth_success", "authenticated"))
        return True

    async def _read_commands(self, ws: ServerConnection, subs: set[str]) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                    action, params = msg["action"], str(msg.get("params", ""))
                except (ValueError, KeyError, TypeError):
                    await ws.send(_status("error", "invalid message"))
                    continue
                channels = [c.strip() for c in params.split(",") if c.strip()]
                if action == "subscribe":
                    subs.update(channels)
                    reply = [{"ev": "status", "status": "success",
                              "message": f"subscribed to: {c}"} for c in channels]
                elif action == "unsubscribe":
                    subs.difference_update(channels)
                    reply = [{"ev": "status", "status": "success",
                              "message": f"unsubscribed to: {c}"} for c in channels]
                else:
                    reply = [{"ev": "status", "status": "error",
                              "message": f"unknown action {action!r}"}]
                await ws.send(json.dumps(reply, separators=(",", ":")))

    async def _stream(self, ws: ServerConnection, market: str, subs: set[str]) -> None:
        mkt = SyntheticMarket(self.market_config())
        mkt.shifts = self.shifts
        # Skip the history before this connection: it was "sent" to nobody (REST has it).
        mkt.events(int((time.monotonic() - self._t0) * self.cfg.rate), market)
        f = self.cfg.faults
        frame_no = 0
        while True:
            if self.paused:
                try:  # idle, but notice a closed connection (server shutdown) at once
                    await asyncio.wait_for(ws.wait_closed(), TICK_S)
                    return
                except TimeoutError:
                    continue
            # Generate what the market produced up to now; send it in frames.
            due = int((time.monotonic() - self._t0) * self.cfg.rate) - mkt.drawn
            events = [e for e in mkt.events(max(0, due), market) if _matches(subs, e)]
            while events:
                n = mkt.rng.randint(1, self.cfg.max_events_per_frame)
                chunk, events = events[:n], events[n:]
                frame_no += 1
                if f.disorder_every and frame_no % f.disorder_every == 0:
                    late = dict(chunk[-1])
                    late["q"] -= 1  # sequences step by >= 2, so q - 1 was never sent
                    chunk.append(late)
                if f.unknown_event_every and frame_no % f.unknown_event_every == 0:
                    chunk.append({"ev": "XX", "sym": chunk[0]["sym"], "t": chunk[0]["t"]})
                text = json.dumps(chunk, separators=(",", ":"))
                if f.malformed_every and frame_no % f.malformed_every == 0:
                    text = text[: len(text) // 2]  # truncated JSON
                if f.drop_every and frame_no % f.drop_every == 0:
                    continue
                if f.slow_send_ms:
                    await asyncio.sleep(f.slow_send_ms / 1000)
                if self.paused:
                    break
                await ws.send(text)
                self.frames_sent += 1
                if f.duplicate_every and frame_no % f.duplicate_every == 0:
                    await ws.send(text)
                    self.frames_sent += 1
                if (f.disconnect_after_frames and not self._disconnected
                        and frame_no >= f.disconnect_after_frames):
                    self._disconnected = True
                    await asyncio.sleep(0.05)  # what was sent reaches the client first
                    ws.transport.abort()  # abrupt: no close frame, like a network drop
                    return
            await asyncio.sleep(TICK_S)


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              429: "Too Many Requests"}.get(status, "Error")
    return Response(status, reason, Headers({"Content-Type": "application/json",
                                             "Content-Length": str(len(data))}), data)
