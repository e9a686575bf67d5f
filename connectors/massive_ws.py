"""Massive live WebSocket -> raw Kafka topic, through the real ``massive`` SDK.

The SDK authenticates, subscribes and reconnects; in raw mode it hands us each frame's text
exactly as received, which we encode back to the same UTF-8 bytes and write unchanged, with
receipt time and frame_seq stamped at the moment of receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from massive import WebSocketClient

from connectors.raw_writer import RawWriter
from infra.topics import RAW_MASSIVE_OPTIONS, RAW_MASSIVE_STOCKS
from tickflow.raw import RawSource

log = logging.getLogger(__name__)


@dataclass
class WsConfig:
    """One Massive WebSocket connection. ``api_key`` is never logged or shown in a repr."""

    host: str
    market: str  # "stocks" | "options"
    subscriptions: list[str]
    api_key: str = field(repr=False)
    secure: bool = True

    @property
    def topic(self) -> str:
        return RAW_MASSIVE_OPTIONS if self.market == "options" else RAW_MASSIVE_STOCKS


@dataclass
class WsStats:
    frames: int = 0
    bytes: int = 0
    dropped: int = 0
    written: int = 0


async def run_ws(cfg: WsConfig, kafka_conf: dict[str, Any], duration_s: float | None = None
                 ) -> WsStats:
    """Stream one connection to its raw topic, for ``duration_s`` seconds or until cancelled."""
    writer = RawWriter(kafka_conf, cfg.topic, key=f"massive_ws:{cfg.market}",
                       source=RawSource.MASSIVE_WS, feed=cfg.market)
    stats = WsStats()
    client = WebSocketClient(api_key=cfg.api_key, feed=cfg.host, market=cfg.market, raw=True,
                             secure=cfg.secure, subscriptions=list(cfg.subscriptions),
                             max_reconnects=None)

    async def on_frame(frame: str | bytes) -> None:
        received_ns = time.time_ns()
        data = frame.encode() if isinstance(frame, str) else frame
        stats.frames += 1
        stats.bytes += len(data)
        if not writer.offer(data, received_ns):
            stats.dropped += 1

    task = asyncio.create_task(client.connect(on_frame))
    try:
        if duration_s is None:
            await task
        else:
            done, _ = await asyncio.wait({task}, timeout=duration_s)
            if task in done:
                task.result()  # surface an auth failure or a fatal connection error
    finally:
        if not task.done():
            with contextlib.suppress(Exception):
                await client.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(writer.close)
        stats.written = writer.written
    log.info("massive ws session ended", extra={"market": cfg.market, "frames": stats.frames,
                                                "dropped": stats.dropped})
    return stats
