"""Massive's WebSocket protocol (and REST history) over the synthetic market, with faults.

Paths ``/stocks`` and ``/options``. On connect: ``[{"ev":"status","status":"connected",...}]``;
``{"action":"auth","params":KEY}`` -> ``auth_success``, or ``auth_failed`` and a close;
``subscribe`` / ``unsubscribe`` with ``Q.SPY,T.SPY`` (``Q.*`` wildcards) -> one status per
channel. Data frames are JSON arrays of 1..``max_events_per_frame`` events of the subscribed
channels only, sent as the market clock (wall clock since start) reaches them. Plain HTTP
GETs on the same port are Massive REST (``/v3/quotes``, ``/v3/trades``, see ``rest.py``) or,
under ``/_sim/``, a small control API (stats, faults).

Every connection reads the one seeded timeline from "now" on, so two connections (or a
connection and REST) see the same events with the same sequence numbers.

Faults apply to every N-th data frame of a connection, and frame sizes come from a generator
seeded by (seed, feed, connection number), so a run is reproducible up to the timing of the
ticks that cut frames. The API key is never logged, echoed or put in a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import islice
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from infra.simulator.market import FEEDS, Event, MarketConfig, SyntheticMarket
from infra.simulator.rest import handle_rest

log = logging.getLogger("tickflow.simulator")
# websockets logs every frame at DEBUG, client auth frames (API keys) included: never for us.
_ws_log = logging.getLogger("tickflow.simulator.websockets")
_ws_log.setLevel(logging.WARNING)

CATCH_UP_S = 0.5  # market time generated per tick, at most, for a connection running late


@dataclass
class Faults:
    """Switchable faults. 0 / False disables one; N > 0 hits every N-th frame of each
    connection (counted before the fault, so a dropped frame still counts)."""

    malformed_every: int = 0  # the frame's JSON is truncated (undecodable bytes)
    unknown_event_every: int = 0  # an event with ev="XX" is appended to the frame
    duplicate_every: int = 0  # the frame is sent twice, identically
    drop_every: int = 0  # the frame is never sent: its events are lost
    disorder_every: int = 0  # one event arrives after a newer one of its symbol
    disconnect_after_frames: int = 0  # abrupt close (no close frame), once per server
    disconnect_every: int = 0  # abrupt close after every N-th frame of each connection (a storm)
    auth_fail: bool = False  # every key is refused
    # The first N subscribe requests (server-wide) are refused with an error status for each
    # channel, as Massive answers a channel the plan does not include.
    subscribe_fail_first: int = 0
    slow_send_ms: int = 0  # pause before each frame (a slow server / slow consumer)
    http_429_every: int = 0  # every N-th REST request is refused with 429 (rate limit)
    # How REST refuses a bad key, in the vendor's documented shapes: 0 HTTP 401
    # {"status":"NOT_AUTHORIZED"}, 1 HTTP 403 {"status":"ERROR","error":...}, 2 HTTP 401
    # {"status":"ERROR","error":...}, 3 HTTP 403 with a plain-text body.
    auth_error_shape: int = 0

    @classmethod
    def parse(cls, spec: str) -> Faults:
        """``"malformed_every=50,drop_every=100,auth_fail"`` -> Faults (the CLI's --faults)."""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            name, _, raw = item.partition("=")
            name = name.strip().replace("-", "_")
            if name not in known:
                raise ValueError(f"unknown fault {name!r}; known: {', '.join(known)}")
            if known[name] in (bool, "bool"):
                values[name] = raw.strip().lower() in ("", "1", "true", "yes", "on")
            else:
                values[name] = int(raw)
        return cls(**values)

    def active(self) -> dict[str, Any]:
        """The faults switched on."""
        return {k: v for k, v in asdict(self).items() if v}


@dataclass
class SimulatorConfig:
    """How the simulator listens, who it lets in, and what it streams."""

    host: str = "127.0.0.1"
    port: int = 18765  # 0: an ephemeral port (see SimulatorServer.port)
    seed: int = 7
    rate: float = 2000.0  # events per second on each feed (before subscription filtering)
    api_keys: tuple[str, ...] = ()  # empty: any non-empty key is accepted
    anchor_to_wall_clock: bool = True  # event times start now; False: market.start_ms
    max_events_per_frame: int = 50
    duration_s: float | None = None  # streams end (close 1001) this long after start
    tick_s: float = 0.02  # how often due events are framed and sent
    control: bool = True  # serve the /_sim/ control API
    # REST serves history up to the simulator's clock plus this much: a test can ask for a
    # day that is already over (its live frames built from the same market directly).
    rest_ahead_ms: int = 0
    faults: Faults = field(default_factory=Faults)
    market: MarketConfig = field(default_factory=MarketConfig)


def _status(status: str, message: str) -> str:
    return json.dumps([{"ev": "status", "status": status, "message": message}],
                      separators=(",", ":"))


def _dumps(obj: Any) -> str:
    # Compact, like the vendor.
    return json.dumps(obj, separators=(",", ":"))


def _matches(subs: set[str], ev: Event) -> bool:
    ch = ev["ev"]
    return f"{ch}.*" in subs or f"{ch}.{ev['sym']}" in subs


@dataclass
class _Session:
    """One authenticated WebSocket client."""

    feed: str
    number: int
    rng: random.Random  # frame sizes
    subs: set[str] = field(default_factory=set)
    subs_version: int = 0  # bumped on every (un)subscribe, so queued events are re-filtered
    frame_no: int = 0
    held: Event | None = None  # disorder fault: an event waiting to arrive late


class SimulatorServer:
    """The simulator's server. In an event loop: ``await start()`` / ``await stop()``; from
    synchronous code: ``run_in_thread()`` / ``stop_thread()``, or ``with SimulatorServer(cfg)``.

    Public state for tests: ``frames_sent`` (data frames written, duplicates included),
    ``fault_counts``, ``connections``, ``rest_requests``, ``paused`` (stop streaming; resumes
    where it stopped), ``shifts`` (cents added to a stock's prices, its options follow),
    ``live_subscriptions(feed)``, ``anchor_ms``.
    """

    def __init__(self, cfg: SimulatorConfig | None = None) -> None:
        self.cfg = cfg or SimulatorConfig()
        self._server: Server | None = None
        self._disconnected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._rest_lock = threading.Lock()
        self.connections = 0
        self.frames_sent = 0
        self.rest_requests = 0
        self.fault_counts: Counter[str] = Counter()
        self.paused = False
        self.shifts: dict[str, int] = {}
        # Live subscriptions per open connection: (feed, channels), seen from the server.
        self.subscriptions: dict[int, tuple[str, set[str]]] = {}
        self._reset_clock()

    def _reset_clock(self) -> None:
        # One timeline for the server's life: streams and REST history index the same market.
        self.anchor_ms = (time.time_ns() // 1_000_000 if self.cfg.anchor_to_wall_clock
                          else self.cfg.market.start_ms)
        self._t0 = time.monotonic()
        self.market = SyntheticMarket(self.market_config())
        self.market.shifts = self.shifts
        # REST runs in a worker thread: its own market, so no cache is shared across threads.
        self._rest_market = SyntheticMarket(self.market_config())

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._server is None:
            return self.cfg.port
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def start(self) -> None:
        self._reset_clock()
        self._server = await serve(self._handle, self.cfg.host, self.cfg.port,
                                   max_size=None, compression=None, logger=_ws_log,
                                   close_timeout=2,
                                   process_request=self._http)
        log.info("massive simulator listening on %s:%d (seed %d, %.0f events/s, faults %s)",
                 self.cfg.host, self.port, self.cfg.seed, self.cfg.rate,
                 self.cfg.faults.active() or "none")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def run_in_thread(self, timeout: float = 10.0) -> SimulatorServer:
        """Serve from a daemon thread with its own event loop; returns once listening."""
        ready = threading.Event()
        failed: list[BaseException] = []

        def main() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # e.g. the port is taken: re-raised in the caller
                failed.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.stop())
                pending = asyncio.all_tasks(loop)  # e.g. a REST page still in its thread
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=main, name="massive-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"simulator did not start within {timeout:.0f}s")
        if failed:
            raise failed[0]
        return self

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started by :meth:`run_in_thread` and wait for its thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorServer:
        return self.run_in_thread()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_thread()

    # -- clock -----------------------------------------------------------------------------
    def market_config(self) -> MarketConfig:
        return replace(self.cfg.market, seed=self.cfg.seed, rate=self.cfg.rate,
                       start_ms=self.anchor_ms)

    def now_ms(self) -> int:
        """Event time the timeline has reached (the simulator's clock)."""
        return self.anchor_ms + int((time.monotonic() - self._t0) * 1000)

    def _head(self) -> int:
        """Index of the first event the market has not produced yet."""
        return int((time.monotonic() - self._t0) * self.cfg.rate)

    def _finished(self) -> bool:
        d = self.cfg.duration_s
        return d is not None and time.monotonic() - self._t0 >= d

    def live_subscriptions(self, market: str) -> set[str]:
        """Channels subscribed right now on the server's open ``market`` connections."""
        out: set[str] = set()
        for m, subs in list(self.subscriptions.values()):
            if m == market:
                out |= subs
        return out

    # -- HTTP: REST and control ------------------------------------------------------------
    async def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a WebSocket handshake: not ours
        path = urlsplit(request.path).path
        if path.startswith("/_sim/"):
            return self._control(request) if self.cfg.control else _json_response(
                404, {"status": "NOT_FOUND", "message": "control API disabled"})
        self.rest_requests += 1
        auth = request.headers.get("Authorization", "")
        key = auth[7:] if auth.startswith("Bearer ") else parse_qs(
            urlsplit(request.path).query).get("apiKey", [""])[-1]
        if not self._key_ok(key):
            return _auth_refusal(self.cfg.faults.auth_error_shape)
        every = self.cfg.faults.http_429_every
        if every and self.rest_requests % every == 0:
            self.fault_counts["http_429"] += 1
            return _json_response(429, {"status": "ERROR", "error": "You've exceeded the "
                                        "maximum requests per minute"})
        host = request.headers.get("Host", f"{self.cfg.host}:{self.port}")
        now = self.now_ms()

        def run() -> tuple[int, dict[str, Any]]:
            with self._rest_lock:
                return handle_rest(request.path, self._rest_market,
                                   now + self.cfg.rest_ahead_ms, f"http://{host}")

        # A long page scan runs off the event loop, so the streams keep flowing meanwhile.
        status, body = await asyncio.to_thread(run)
        return _json_response(status, body)

    def _control(self, request: Request) -> Response:
        """``/_sim/stats``; ``/_sim/faults?drop_every=5&...`` (sets, then shows, faults);
        ``/_sim/pause?on=1``. GET only: websockets' HTTP parser accepts nothing else."""
        url = urlsplit(request.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/_sim/faults":
            if q:
                q = {k.replace("-", "_"): v for k, v in q.items()}
                try:
                    updates = Faults.parse(",".join(f"{k}={v}" for k, v in q.items()))
                    self.cfg.faults = replace(self.cfg.faults,
                                              **{k: getattr(updates, k) for k in q})
                except ValueError as exc:
                    return _json_response(400, {"status": "ERROR", "error": str(exc)})
                self._disconnected = False  # a new disconnect fault fires once more
            return _json_response(200, {"status": "OK", "faults": asdict(self.cfg.faults)})
        if url.path == "/_sim/pause":
            self.paused = q.get("on", "1") not in ("0", "false", "no", "off")
            return _json_response(200, {"status": "OK", "paused": self.paused})
        if url.path == "/_sim/stats":
            return _json_response(200, {
                "status": "OK", "connections": self.connections,
                "frames_sent": self.frames_sent, "rest_requests": self.rest_requests,
                "fault_counts": dict(self.fault_counts), "paused": self.paused,
                "now_ms": self.now_ms(), "anchor_ms": self.anchor_ms,
                "subscriptions": {f: sorted(self.live_subscriptions(f)) for f in FEEDS}})
        return _json_response(404, {"status": "NOT_FOUND", "message": f"no route {url.path}"})

    # -- WebSocket protocol ----------------------------------------------------------------
    def _key_ok(self, key: object) -> bool:
        return (isinstance(key, str) and bool(key) and not self.cfg.faults.auth_fail
                and (not self.cfg.api_keys or key in self.cfg.api_keys))

    async def _handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path).path if ws.request else "/"
        feed = path.strip("/").split("/")[-1]
        if feed not in FEEDS:
            await ws.close(1008, f"unknown feed {path}")
            return
        self.connections += 1
        number = self.connections
        try:
            await ws.send(_status("connected", "Connected Successfully"))
            if not await self._auth(ws, feed):
                return
            s = _Session(feed, number, random.Random(f"{self.cfg.seed}/frames/{feed}/{number}"))
            self.subscriptions[id(ws)] = (feed, s.subs)
            tasks = {asyncio.create_task(self._read_commands(ws, s)),
                     asyncio.create_task(self._stream(ws, s))}
            try:
                # Either side ending (client gone, fault, duration) ends the session.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                for r in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(r, Exception) and not isinstance(r, ConnectionClosed):
                        log.error("simulator session failed: %r", r)
        except ConnectionClosed:
            pass
        finally:
            self.subscriptions.pop(id(ws), None)

    async def _auth(self, ws: ServerConnection, feed: str) -> bool:
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        except (TimeoutError, ValueError):
            await ws.close(1008, "expected an auth message")
            return False
        key = msg.get("params") if isinstance(msg, dict) and msg.get("action") == "auth" else None
        if not self._key_ok(key):
            log.info("auth failed on /%s from %s", feed, ws.remote_address)  # no key, ever
            await ws.send(_status("auth_failed", "authentication failed"))
            # The massive SDK raises AuthError without closing its side: do not wait the
            # default 10 s for a close frame that never comes.
            ws.close_timeout = 1
            await ws.close()
            return False
        await ws.send(_status("auth_success", "authenticated"))
        return True

    async def _read_commands(self, ws: ServerConnection, s: _Session) -> None:
        async for raw in ws:
            try:
                msg = json.loads(raw)
                action, params = msg["action"], str(msg.get("params", ""))
            except (ValueError, KeyError, TypeError):
                await ws.send(_status("error", "invalid message"))
                continue
            channels = [c.strip() for c in params.split(",") if c.strip()]
            refusing = self.fault_counts["subscribe_refused"] < self.cfg.faults.subscribe_fail_first
            if action == "subscribe" and refusing:
                self.fault_counts["subscribe_refused"] += 1
                await ws.send(_dumps([{"ev": "status", "status": "error",
                                       "message": f"not authorized to subscribe to {c}"}
                                      for c in channels]))
                continue
            if action in ("subscribe", "unsubscribe"):
                reply = []
                for c in channels:
                    if "." not in c:
                        reply.append({"ev": "status", "status": "error",
                                      "message": f"invalid subscription: {c}"})
                        continue
                    if action == "subscribe":
                        s.subs.add(c)
                    else:
                        s.subs.discard(c)
                    s.subs_version += 1
                    reply.append({"ev": "status", "status": "success",
                                  "message": f"{action}d to: {c}"})
            elif action == "auth":
                reply = [{"ev": "status", "status": "error", "message": "already authenticated"}]
            else:
                reply = [{"ev": "status", "status": "error",
                          "message": f"unknown action: {str(action)[:40]}"}]
            if reply:
                await ws.send(_dumps(reply))

    async def _stream(self, ws: ServerConnection, s: _Session) -> None:
        cfg = self.cfg
        cursor = self._head()  # a new connection starts at "now"; history is REST's
        source = self.market.stream(s.feed, cursor)
        pending: list[Event] = []
        version = s.subs_version
        while True:
            if self._finished():
                await ws.close(1001, "simulation finished")
                return
            if not self.paused:
                due = min(self._head() - cursor, max(1, int(cfg.rate * CATCH_UP_S)))
                if due > 0:
                    pending.extend(e for e in islice(source, due) if _matches(s.subs, e))
                    cursor += due
                while pending and not self.paused:
                    if version != s.subs_version:
                        # Nothing of a channel goes out after its "unsubscribed to" ack.
                        version = s.subs_version
                        pending = [e for e in pending if _matches(s.subs, e)]
                        continue
                    n = s.rng.randint(1, cfg.max_events_per_frame)
                    chunk, pending = pending[:n], pending[n:]
                    if not await self._send_frame(ws, s, chunk):
                        return
            await asyncio.sleep(cfg.tick_s)

    async def _send_frame(self, ws: ServerConnection, s: _Session, chunk: list[Event]
                          ) -> bool:
        """Send one data frame through the fault switches; False once the connection is cut."""
        f = self.cfg.faults
        s.frame_no += 1
        k = s.frame_no

        def hit(every: int, name: str) -> bool:
            if every > 0 and k % every == 0:
                self.fault_counts[name] += 1
                return True
            return False

        if s.held is not None and any(e["sym"] == s.held["sym"] for e in chunk):
            chunk.append(s.held)  # after a newer event of its symbol: q and t regress
            s.held = None
        if hit(f.disorder_every, "disorder"):
            chunk = self._disorder(s, chunk)
            if not chunk:
                return True
        if hit(f.unknown_event_every, "unknown_event"):
            chunk.append({"ev": "XX", "sym": chunk[0]["sym"], "t": chunk[0]["t"]})
        text = _dumps(chunk)
        if hit(f.malformed_every, "malformed"):
            text = text[: len(text) // 2]  # truncated JSON, still valid UTF-8 text
        if hit(f.drop_every, "drop"):
            return True
        if f.slow_send_ms:
            await asyncio.sleep(f.slow_send_ms / 1000)
        await ws.send(text)
        self.frames_sent += 1
        if hit(f.duplicate_every, "duplicate"):
            await ws.send(text)
            self.frames_sent += 1
        once = (f.disconnect_after_frames and not self._disconnected
                and k >= f.disconnect_after_frames)
        if once or hit(f.disconnect_every, "disconnect_storm"):
            if once:
                self._disconnected = True
                self.fault_counts["disconnect"] += 1
            await asyncio.sleep(0.05)  # what was sent reaches the client first
            ws.transport.abort()  # abrupt: no close frame, like a network drop
            return False
        return True

    @staticmethod
    def _disorder(s: _Session, chunk: list[Event]) -> list[Event]:
        """Deliver one real event late (nothing invented, nothing lost while connected):
        moved behind a newer event of its symbol in this frame, or else held for a later
        frame that has one."""
        last = {e["sym"]: j for j, e in enumerate(chunk)}
        for j, e in enumerate(chunk):
            if last[e["sym"]] > j:
                return chunk[:j] + chunk[j + 1:] + [e]
        if s.held is None:
            s.held = chunk[0]
            return chunk[1:]
        return chunk


def _auth_refusal(shape: int) -> Response:
    """A refused key, in one of the vendor's shapes (see Faults.auth_error_shape)."""
    if shape == 1:
        return _json_response(403, {"status": "ERROR", "request_id": "sim",
                                    "error": "You are not entitled to this data."})
    if shape == 2:
        return _json_response(401, {"status": "ERROR", "request_id": "sim",
                                    "error": "Unknown API Key"})
    if shape == 3:
        data = b"Forbidden"
        return Response(403, "Forbidden", Headers({"Content-Type": "text/plain",
                                                  "Content-Length": str(len(data))}), data)
    return _json_response(401, {"status": "NOT_AUTHORIZED", "message": "Unknown API Key"})


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
              404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
    return Response(status, reason, Headers({"Content-Type": "application/json",
                                             "Content-Length": str(len(data))}), data)
