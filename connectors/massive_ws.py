"""Massive live WebSocket -> raw Kafka topic.

Our own client over ``websockets`` speaking Massive's protocol, because the connector needs
what the ``massive`` SDK's client does not expose: the moment a connection drops and comes
back (to report the exact loss window), a validated auth and subscribe exchange, and changes
of subscriptions on the live connection (StrikeManager).

* auth: the server must answer ``auth_success``; ``auth_failed`` is an ``AuthFailed`` error
  with the server's words (never the key), retried with exponential backoff 1 s .. 60 s with
  jitter, like every other connection failure;
* a refused subscription (an error status) is a ``SubscribeFailed`` error with the server's
  words, and the connection is made again with the same backoff;
* every reconnect re-subscribes everything current, and reports the window between the last
  frame before the drop and the moment the new connection was subscribed as a loss window
  for all of the connection's symbols, so the dataflow marks a gap;
* each frame is written raw, byte-exact, with receipt time and frame_seq stamped on
  arrival; the reader never blocks on Kafka (``RawWriter``'s bounded queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from connectors.raw_writer import DEFAULT_QUEUE_SIZE, RawWriter
from schemas.topics import RAW_MASSIVE_OPTIONS, RAW_MASSIVE_STOCKS
from tickflow.raw import RawSource

log = logging.getLogger(__name__)
# websockets logs every frame at DEBUG, the auth frame (with the API key) included. Its logger
# for our connections is pinned to INFO, so no log level setting can make the key appear.
_ws_log = logging.getLogger(f"{__name__}.websockets")
_ws_log.setLevel(logging.INFO)

_STATUS_PREFIX = b'[{"ev":"status"'
# A frame above this closes the connection (websockets answers 1009) instead of filling
# memory; reconnecting reports the loss window. Frames between the raw topic's limit and
# this one are refused by the raw writer, which reports them lost and carries on.
WS_MAX_FRAME_BYTES = 64 * 1024 * 1024


class AuthFailed(RuntimeError):
    """The server refused the API key (the key itself is never part of the message)."""


class SubscribeFailed(RuntimeError):
    """The server refused a subscription (or sent another error status); the connection is
    dropped and made again with backoff, re-subscribing everything."""


@dataclass
class WsConfig:
    """One Massive WebSocket connection. ``api_key`` is never logged or shown in a repr."""

    host: str
    market: str  # "stocks" | "options"
    subscriptions: list[str]
    api_key: str = field(repr=False)
    secure: bool = True
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    queue_size: int = DEFAULT_QUEUE_SIZE
    # Frames the broker cannot take while it is unreachable wait here (bounded, in order).
    spool_path: Path | None = None
    # Records librdkafka may hold while the broker is away, before the spool takes over.
    producer_buffer: int = 20_000

    @property
    def topic(self) -> str:
        return RAW_MASSIVE_OPTIONS if self.market == "options" else RAW_MASSIVE_STOCKS

    @property
    def url(self) -> str:
        return f"ws{'s' if self.secure else ''}://{self.host}/{self.market}"


@dataclass
class WsStats:
    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    written: int = 0
    connects: int = 0
    disconnects: int = 0
    auth_failures: int = 0
    subscribe_errors: int = 0
    loss_windows: int = 0


def channel_symbol(channel: str) -> str:
    """``Q.SPY`` -> ``SPY``; ``T.O:SPY251216C00676000`` -> the contract; ``Q.*`` -> ``*``."""
    return channel.split(".", 1)[1] if "." in channel else channel


async def handshake(ws: ClientConnection, cfg: WsConfig, subs: set[str]) -> None:
    """Massive's opening: the server's greeting, auth (``AuthFailed`` with the server's
    words if refused, never the key), then one subscribe of ``subs``."""
    hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
    if not any(m.get("status") == "connected" for m in hello):
        raise ConnectionError(f"unexpected greeting from {cfg.url}: {hello!r}"[:300])
    await ws.send(json.dumps({"action": "auth", "params": cfg.api_key}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    statuses = {m.get("status") for m in reply if isinstance(m, dict)}
    if "auth_success" not in statuses:
        msg = "; ".join(str(m.get("message", m.get("status"))) for m in reply)
        raise AuthFailed(f"Massive refused the API key for {cfg.url}: {msg}")
    if subs:
        await ws.send(json.dumps({"action": "subscribe", "params": ",".join(sorted(subs))}))


def status_errors(data: bytes) -> list[dict[str, Any]]:
    """The error statuses of a status frame (a refused subscription, a server notice)."""
    try:
        msgs = json.loads(data)
    except ValueError:
        return []
    return [m for m in msgs if isinstance(m, dict) and m.get("ev") == "status"
            and m.get("status") not in ("success", "connected", "auth_success")]


def subscribe_failed(url: str, errors: list[dict[str, Any]]) -> SubscribeFailed:
    words = "; ".join(str(m.get("message", m.get("status"))) for m in errors)
    return SubscribeFailed(f"Massive refused a subscription on {url}: {words}")


class MassiveWsConnector:
    """A resilient connection that writes every frame to the raw topic."""

    def __init__(self, cfg: WsConfig, writer: RawWriter, rng: random.Random | None = None
                 ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.subs: set[str] = set(cfg.subscriptions)
        self.stats = WsStats()
        self._ws: ClientConnection | None = None
        self._last_frame_ns: int | None = None
        self._rng = rng or random.Random()
        # Optional consumer of each frame after it is queued (e.g. a StrikeFollower).
        self.frame_hook: Callable[[bytes], Awaitable[None]] | None = None

    def symbols(self) -> list[str]:
        return sorted({channel_symbol(c) for c in self.subs})

    def backoff(self, attempt: int) -> float:
        """Exponential from backoff_min_s to backoff_max_s, with jitter (50-100 %)."""
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_min_s * (2 ** max(0, attempt - 1)))
        return base * (0.5 + 0.5 * self._rng.random())

    async def subscribe(self, *channels: str) -> None:
        """Add channels; sent on the live connection at once (and after every reconnect)."""
        new = [c for c in channels if c not in self.subs]
        self.subs.update(new)
        if new and self._ws is not None:
            await self._ws.send(json.dumps({"action": "subscribe", "params": ",".join(new)}))

    async def unsubscribe(self, *channels: str) -> None:
        gone = [c for c in channels if c in self.subs]
        self.subs.difference_update(gone)
        if gone and self._ws is not None:
            await self._ws.send(json.dumps({"action": "unsubscribe", "params": ",".join(gone)}))

    async def _handshake(self, ws: ClientConnection) -> None:
        await handshake(ws, self.cfg, self.subs)

    def _check_status(self, data: bytes) -> None:
        """Status frames (subscribe answers, server notices): an error is counted and raised
        as ``SubscribeFailed`` with the server's words, and the connection starts over."""
        errors = status_errors(data)
        if errors:
            self.stats.subscribe_errors += len(errors)
            raise subscribe_failed(self.cfg.url, errors)

    async def run(self, stop: asyncio.Event | None = None) -> WsStats:
        """Connect, stream and reconnect until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        attempt = 0
        while not stop.is_set():
            try:
                async with connect(self.cfg.url, max_size=WS_MAX_FRAME_BYTES, open_timeout=10,
                                   close_timeout=1, logger=_ws_log) as ws:
                    await self._handshake(ws)
                    self._ws = ws
                    self.stats.connects += 1
                    attempt = 0
                    if self._last_frame_ns is not None:
                        now = time.time_ns()
                        self.writer.report_loss(self._last_frame_ns, now, "disconnect",
                                                self.symbols() or ["*"])
                        self.stats.loss_windows += 1
                    await self._read(ws, stop)
            except AuthFailed as exc:
                self.stats.auth_failures += 1
                log.error("%s", exc)
            except SubscribeFailed as exc:
                self.stats.disconnects += 1
                log.error("%s; reconnecting", exc)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError,
                    ConnectionError, ValueError) as exc:
                self.stats.disconnects += 1
                log.warning("massive connection lost", extra={"url": self.cfg.url,
                                                              "error": type(exc).__name__})
            finally:
                self._ws = None
            if stop.is_set():
                break
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.backoff(attempt))
        return self.stats

    async def _read(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        writer, stats = self.writer, self.stats
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                recv = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    return
                frame = recv.result()
                received_ns = time.time_ns()
                data = frame.encode() if isinstance(frame, str) else frame
                stats.frames += 1
                stats.bytes += len(data)
                if not writer.offer(data, received_ns):  # the raw log keeps status frames too
                    stats.dropped += 1
                self._last_frame_ns = received_ns
                if data.startswith(_STATUS_PREFIX):
                    self._check_status(data)
                if self.frame_hook is not None:
                    await self.frame_hook(data)
        finally:
            stopper.cancel()


@dataclass
class CheckResult:
    """What ``check_connection`` saw: how long the opening took (the server's greeting, then
    the auth request and its answer: one round trip after the greeting), and the first events
    parsed into canonical events (type name, event)."""

    url: str
    handshake_ms: float
    subscribed: list[str]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    frames: int = 0


async def check_connection(cfg: WsConfig, messages: int = 5, timeout_s: float = 15.0
                           ) -> CheckResult:
    """Connect, authenticate and subscribe as the connector does, parse the first
    ``messages`` events and disconnect; no broker. Raises ``AuthFailed`` or
    ``SubscribeFailed`` with the server's words (never the key), ``TimeoutError`` when no
    event came in ``timeout_s``."""
    from tickflow.normalize.massive import normalize_ws_frame

    subs = set(cfg.subscriptions)
    async with connect(cfg.url, max_size=WS_MAX_FRAME_BYTES, open_timeout=10,
                       close_timeout=1, logger=_ws_log) as ws:
        t0 = time.perf_counter()
        await handshake(ws, cfg, subs)
        result = CheckResult(cfg.url, (time.perf_counter() - t0) * 1000, sorted(subs))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(result.events) < messages:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no events from {cfg.url} in {timeout_s:.0f} s for "
                                   f"{', '.join(result.subscribed) or 'no channels'}")
            frame = await asyncio.wait_for(ws.recv(), left)
            data = frame.encode() if isinstance(frame, str) else frame
            result.frames += 1
            if data.startswith(_STATUS_PREFIX):
                errors = status_errors(data)
                if errors:
                    raise subscribe_failed(cfg.url, errors)
                continue
            norm = normalize_ws_frame(data, time.time_ns(), "MASSIVE_WS",
                                      options=cfg.market == "options")
            result.events += [(t, ev) for _, t, ev, _ in norm.events]
        del result.events[messages:]
    return result


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop``: connections end the clean way (the session's end
    written, everything acknowledged). Through the event loop's own handlers: an interrupt
    raised at an arbitrary point could be swallowed inside the WebSocket library, leaving
    the connector running."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_ws(cfg: WsConfig, kafka_conf: dict[str, Any], duration_s: float | None = None,
                 connector_hook: Any = None, stop: asyncio.Event | None = None) -> WsStats:
    """Stream one connection to its raw topic for ``duration_s`` seconds, until ``stop`` is
    set, or until cancelled."""
    writer = RawWriter(kafka_conf, cfg.topic, key=f"massive_ws:{cfg.market}",
                       source=RawSource.MASSIVE_WS, feed=cfg.market, queue_size=cfg.queue_size,
                       spool_path=cfg.spool_path, producer_buffer=cfg.producer_buffer)
    conn = MassiveWsConnector(cfg, writer)
    writer.overflow_symbols = conn.symbols() or ["*"]
    if connector_hook is not None:
        connector_hook(conn)
    stop = stop if stop is not None else asyncio.Event()
    task = asyncio.create_task(conn.run(stop))
    try:
        if duration_s is None:
            await task
        else:
            done, _ = await asyncio.wait({task}, timeout=duration_s)
            if task in done:
                task.result()
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(writer.close)
    stats = conn.stats
    stats.written = writer.written
    log.info("massive ws session ended", extra={"market": cfg.market, "frames": stats.frames,
                                                "dropped": stats.dropped})
    return stats
