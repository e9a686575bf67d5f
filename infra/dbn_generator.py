# mypy: disable-error-code="arg-type,return-value"
# (databento-dbn's stubs declare its enum members as plain str; the runtime wants the enums.)
"""Synthetic but realistic Databento DBN files for ES futures (GLBX.MDP3), seeded.

Written with ``databento-dbn``'s own encoder (``Metadata.encode`` and the record types), in
the directory layout of a Databento batch download::

    <root>/trades/glbx-mdp3-YYYYMMDD.trades.dbn.zst
    <root>/MBP-10/glbx-mdp3-YYYYMMDD.mbp-10.dbn.zst
    <root>/{trades,MBP-10}/symbology.json, metadata.json

The book: a random walk on the 0.25 tick around 6800, ten levels a side with occasional empty
(UNDEF_PRICE) deep levels, a snapshot (F_SNAPSHOT) at the start, then incremental updates;
several records can share a packet (same sequence and ts_recv). Trades print at the touch
with the aggressor's side. Files are written in streaming fashion (bounded memory).
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import databento_dbn as dbn
import zstandard

DATASET = "GLBX.MDP3"
SYMBOL = "ES.c.0"
INSTRUMENT_ID = 4916
PUBLISHER_ID = 1  # GLBX.MDP3
TICK = 250_000_000  # 0.25 index points in 1e-9 units
START_PRICE = 6800 * 1_000_000_000
SESSION_START = dt.time(14, 30)  # 09:30 New York (EST): the generated day's first record

SCHEMA_DIRS = {"trades": "trades", "mbp-10": "MBP-10"}


@dataclass
class GeneratedDay:
    trades: Path
    mbp10: Path
    n_trades: int
    n_mbp10: int


def file_name(day: dt.date, schema: str) -> str:
    return f"glbx-mdp3-{day:%Y%m%d}.{schema}.dbn.zst"


def _metadata(day: dt.date, schema: dbn.Schema, start_ns: int,
              dataset: str = DATASET) -> bytes:
    interval = SimpleNamespace(start_date=day, end_date=day + dt.timedelta(days=1),
                               symbol=str(INSTRUMENT_ID))
    mapping = SimpleNamespace(raw_symbol=SYMBOL, intervals=[interval])
    md = dbn.Metadata(dataset=dataset, start=start_ns, stype_in=dbn.SType.CONTINUOUS,
                      stype_out=dbn.SType.INSTRUMENT_ID, schema=schema, symbols=[SYMBOL],
                      mappings=[mapping], end=start_ns + 86_400 * 1_000_000_000)
    return bytes(md.encode())


class _Book:
    """Ten price levels a side on the tick grid, around a walking mid."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.best_bid = START_PRICE
        self.sizes_bid = [rng.randint(5, 200) for _ in range(10)]
        self.sizes_ask = [rng.randint(5, 200) for _ in range(10)]
        self.depth = 10  # levels present; a thin book leaves deep levels empty

    def levels(self) -> list[dbn.BidAskPair]:
        out = []
        for i in range(10):
            if i < self.depth:
                out.append(dbn.BidAskPair(
                    bid_px=self.best_bid - i * TICK, ask_px=self.best_bid + (i + 1) * TICK,
                    bid_sz=self.sizes_bid[i], ask_sz=self.sizes_ask[i],
                    bid_ct=max(1, self.sizes_bid[i] // 10), ask_ct=max(1, self.sizes_ask[i] // 10)))
            else:
                out.append(dbn.BidAskPair(bid_px=dbn.UNDEF_PRICE, ask_px=dbn.UNDEF_PRICE))
        return out

    def step(self) -> tuple[dbn.Action, dbn.Side, int, int, int]:
        """Change the book; returns (action, side, depth, price, size) of the update."""
        r = self.rng.random()
        if r < 0.03:
            self.best_bid += self.rng.choice((-TICK, TICK))
        if r < 0.01:
            self.depth = self.rng.randint(6, 10)
        elif r < 0.05:
            self.depth = 10
        side_bid = self.rng.random() < 0.5
        level = min(self.rng.randint(0, 9), self.depth - 1)
        sizes = self.sizes_bid if side_bid else self.sizes_ask
        action = self.rng.choice((dbn.Action.ADD, dbn.Action.CANCEL, dbn.Action.MODIFY))
        delta = self.rng.randint(1, 20)
        sizes[level] = max(1, sizes[level] + (delta if action == dbn.Action.ADD else -delta))
        price = (self.best_bid - level * TICK) if side_bid else (self.best_bid + (level + 1) * TICK)
        return action, dbn.Side.BID if side_bid else dbn.Side.ASK, level, price, sizes[level]


def _records(day: dt.date, seed: int, n_trades: int, n_mbp10: int
             ) -> tuple[Iterator[bytes], Iterator[bytes]]:
    """Two record streams drawn from one market: trades and MBP-10 updates."""
    start_ns = int(dt.datetime.combine(day, SESSION_START, dt.UTC).timestamp()) * 1_000_000_000
    rng = random.Random(seed)
    book = _Book(rng)
    trades: deque[bytes] = deque()
    mbps: deque[bytes] = deque()

    def gen() -> Iterator[tuple[str, bytes]]:
        ts = start_ns
        seq = 1000
        # The book snapshot opens the day: one packet, F_SNAPSHOT on every record.
        for i in range(10):
            flags = dbn.F_SNAPSHOT | (dbn.F_LAST if i == 9 else 0)
            yield "mbp", bytes(dbn.MBP10Msg(
                PUBLISHER_ID, INSTRUMENT_ID, ts, book.best_bid - i * TICK, book.sizes_bid[i],
                dbn.Action.ADD, dbn.Side.BID, i, ts + 5000, flags=flags, ts_in_delta=3000,
                sequence=seq, levels=book.levels()))
        made_t, made_m = 0, 10
        while made_t < n_trades or made_m < n_mbp10:
            ts += rng.randint(20_000, 2_000_000)
            seq += rng.randint(1, 3)
            recv = ts + rng.randint(3_000, 40_000)
            packet = rng.choice((1, 1, 1, 2, 3))
            trade_now = made_t < n_trades and (made_m >= n_mbp10 or rng.random() < 0.25)
            if trade_now:
                aggressor = rng.choice((dbn.Side.BID, dbn.Side.ASK, dbn.Side.BID, dbn.Side.NONE))
                price = book.best_bid + (TICK if aggressor == dbn.Side.BID else 0)
                size = rng.choice((1, 1, 2, 3, 5, 10, 25))
                made_t += 1
                yield "trade", bytes(dbn.TradeMsg(PUBLISHER_ID, INSTRUMENT_ID, ts, price, size,
                                                  dbn.Action.TRADE, aggressor, 0, recv,
                                                  flags=dbn.F_LAST, ts_in_delta=2500,
                                                  sequence=seq))
            for k in range(packet):
                if made_m >= n_mbp10:
                    break
                action, side, depth, price, size = book.step()
                flags = dbn.F_MBP | (dbn.F_LAST if k == packet - 1 else 0)
                made_m += 1
                yield "mbp", bytes(dbn.MBP10Msg(PUBLISHER_ID, INSTRUMENT_ID, ts, price, size,
                                                action, side, depth, recv, flags=flags,
                                                ts_in_delta=2500, sequence=seq,
                                                levels=book.levels()))

    stream = gen()

    def take(kind: str, buf: deque[bytes], other: deque[bytes]) -> Iterator[bytes]:
        while True:
            if buf:
                yield buf.popleft()
                continue
            try:
                k, rec = next(stream)
            except StopIteration:
                return
            (buf if k == kind else other).append(rec)

    # The two files are written one after the other, so the second stream is buffered
    # while the first is drained; callers generate MBP-10 first (the larger) to keep the
    # buffered side (trades) small.
    return take("trade", trades, mbps), take("mbp", mbps, trades)


def _write(path: Path, header: bytes, records: Iterator[bytes]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as z:
        z.write(header)
        block: list[bytes] = []
        for rec in records:
            block.append(rec)
            n += 1
            if len(block) >= 4096:
                z.write(b"".join(block))
                block.clear()
        z.write(b"".join(block))
    tmp.replace(path)
    return n


def generate_day(root: Path, day: dt.date, seed: int = 7, n_trades: int = 2000,
                 n_mbp10: int = 10000, dataset: str = DATASET) -> GeneratedDay:
    """Write one day of ES trades and MBP-10 under ``root`` (Databento download layout).
    ``dataset`` labels the files (another one than GLBX.MDP3 tests the refusal of venues
    the product does not cover)."""
    start_ns = int(dt.datetime.combine(day, SESSION_START, dt.UTC).timestamp()) * 1_000_000_000
    trades_it, mbp_it = _records(day, seed, n_trades, n_mbp10)
    mbp_path = root / SCHEMA_DIRS["mbp-10"] / file_name(day, "mbp-10")
    trades_path = root / SCHEMA_DIRS["trades"] / file_name(day, "trades")
    n_m = _write(mbp_path, _metadata(day, dbn.Schema.MBP_10, start_ns, dataset), mbp_it)
    n_t = _write(trades_path, _metadata(day, dbn.Schema.TRADES, start_ns, dataset), trades_it)
    for schema, d in SCHEMA_DIRS.items():
        sym = {"result": {SYMBOL: [{"d0": day.isoformat(),
                                    "d1": (day + dt.timedelta(days=1)).isoformat(),
                                    "s": str(INSTRUMENT_ID)}]},
               "symbols": [SYMBOL], "stype_in": "continuous", "stype_out": "instrument_id",
               "partial": [], "not_found": [], "message": "OK", "status": 0}
        (root / d / "symbology.json").write_text(json.dumps(sym, indent=2))
        (root / d / "metadata.json").write_text(json.dumps({
            "query": {"dataset": DATASET, "schema": schema, "symbols": [SYMBOL],
                      "stype_in": "continuous", "stype_out": "instrument_id",
                      "start": day.isoformat(), "end": (day + dt.timedelta(days=1)).isoformat(),
                      "encoding": "dbn", "compression": "zstd"},
            "generator": "tickflow infra.dbn_generator (synthetic)"}, indent=2))
    return GeneratedDay(trades_path, mbp_path, n_t, n_m)
