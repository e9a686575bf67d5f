"""Massive (formerly Polygon.io) WebSocket frames -> canonical events.

Fast path: the whole frame is decoded by msgspec straight into typed structs (a tagged union
on ``ev``), which validates field types in C. If anything in the frame is off, the slow path
decodes it generically and converts event by event, so one bad event goes to the dead-letter
topic with its index while the rest of the frame is kept.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.model import OPTION_QUOTE, OPTION_TRADE, STOCK_QUOTE, STOCK_TRADE, Event
from tickflow.identity import QUOTE, TRADE, massive_event_id
from tickflow.normalize.base import (
    BAD_TICKER,
    BAD_VALUE,
    SCHEMA,
    UNDECODABLE,
    UNKNOWN_EVENT,
    Normalized,
    Reject,
)
from tickflow.prices import px_e9
from tickflow.symbols import BadTicker, parse_option_ticker

NS_PER_MS = 1_000_000
# Live events must be stamped near their receipt: ahead of it by more than a clock skew, or
# behind it by more than any delayed-data plan, the timestamp is impossible (BAD_VALUE).
# Smaller drifts are the clock monitor's business (tickflow.latency).
MAX_AHEAD_NS = 60 * 1_000_000_000
MAX_BEHIND_NS = 24 * 3600 * 1_000_000_000
LIVE_SOURCES = frozenset({"MASSIVE_WS"})  # replays and backfills are late by design

# SEC Market Data Infrastructure: Massive stock quote sizes are round lots (100 shares)
# before 2025-11-03 and shares from then on. The boundary is that date's midnight in New York
# (EST, UTC-5): 2025-11-03T05:00:00Z.
ROUND_LOT_CUTOFF_NS = 1_762_146_000 * 1_000_000_000
ROUND_LOT = 100


class _Status(msgspec.Struct, tag_field="ev", tag="status"):
    status: str = ""
    message: str = ""


class _StockQuote(msgspec.Struct, tag_field="ev", tag="Q", gc=False):
    sym: str
    t: int
    q: int
    bp: float = 0.0
    bs: int = 0
    ap: float = 0.0
    as_: int = msgspec.field(name="as", default=0)
    bx: int | None = None
    ax: int | None = None
    c: int | None = None
    i: list[int] | None = None
    z: int | None = None


class _StockTrade(msgspec.Struct, tag_field="ev", tag="T", gc=False):
    sym: str
    t: int
    q: int
    p: float
    s: int
    x: int | None = None
    i: str | None = None
    c: list[int] | None = None
    z: int | None = None
    trfi: int | None = None
    trft: int | None = None


class _OptionQuote(msgspec.Struct, tag_field="ev", tag="Q", gc=False):
    sym: str
    t: int
    q: int
    bp: float = 0.0
    bs: int = 0
    ap: float = 0.0
    as_: int = msgspec.field(name="as", default=0)
    bx: int | None = None
    ax: int | None = None


class _OptionTrade(msgspec.Struct, tag_field="ev", tag="T", gc=False):
    sym: str
    t: int
    q: int
    p: float
    s: int
    x: int | None = None
    c: list[int] | None = None


_StockMsg = _StockQuote | _StockTrade | _Status
_OptionMsg = _OptionQuote | _OptionTrade | _Status
_STOCK_DECODER = msgspec.json.Decoder(list[_StockMsg])
_OPTION_DECODER = msgspec.json.Decoder(list[_OptionMsg])
_ANY_DECODER = msgspec.json.Decoder()


def spread_state(bid: int | None, ask: int | None) -> str:
    """Classify a quote's two sides (prices already fixed-point; None = empty side)."""
    if bid is None and ask is None:
        return "EMPTY"
    if bid is None or ask is None:
        return "ONE_SIDED"
    if bid < ask:
        return "NORMAL"
    return "LOCKED" if bid == ask else "CROSSED"


def _side(price: float, size: float, what: str) -> tuple[int | None, int]:
    """(price_e9 or None for an empty side, size); raises ValueError on impossible values."""
    if price == 0 and size == 0:
        return None, 0
    if price <= 0:
        raise ValueError(f"{what} price {price} is not positive")
    if size < 0:
        raise ValueError(f"{what} size {size} is negative")
    return px_e9(price), int(size)


def quote_sides(bid: float, bid_size: float, ask: float, ask_size: float
                ) -> tuple[int | None, int, int | None, int]:
    """The quote rule for every Massive source: a side with 0 price and 0 size is empty (a
    one-sided quote is valid), both sides empty or a non-positive price is impossible."""
    if bid > 0 and ask > 0 and bid_size >= 0 and ask_size >= 0:
        # Two sane sides, nearly every quote: what the per-side checks below would return.
        return px_e9(bid), int(bid_size), px_e9(ask), int(ask_size)
    bid_px, bid_sz = _side(bid, bid_size, "bid")
    ask_px, ask_sz = _side(ask, ask_size, "ask")
    if bid_px is None and ask_px is None:
        raise ValueError("quote has no price on either side")
    return bid_px, bid_sz, ask_px, ask_sz


def _envelope(sym: str, kind: str, t_ms: int, seq: int, recv_ns: int, source: str) -> Event:
    ts = t_ms * NS_PER_MS
    return {
        "event_id": massive_event_id(sym, kind, ts, seq),
        "symbol": sym,
        "ts_event_ns": ts,
        "ts_recv_ns": recv_ns,
        "latency_ns": recv_ns - ts,
        "source": source,
        "sequence": seq,
    }


def _sides(m: _StockQuote | _OptionQuote) -> tuple[int | None, int, int | None, int]:
    return quote_sides(m.bp, m.bs, m.ap, m.as_)


def _stock_quote(m: _StockQuote, recv_ns: int, source: str) -> Event:
    ev = _envelope(m.sym, QUOTE, m.t, m.q, recv_ns, source)
    bid, bid_sz, ask, ask_sz = _sides(m)
    if ev["ts_event_ns"] < ROUND_LOT_CUTOFF_NS:
        bid_sz *= ROUND_LOT
        ask_sz *= ROUND_LOT
    ev["bid_px_e9"] = bid
    ev["bid_size"] = bid_sz
    ev["bid_exchange"] = m.bx
    ev["ask_px_e9"] = ask
    ev["ask_size"] = ask_sz
    ev["ask_exchange"] = m.ax
    ev["conditions"] = [] if m.c is None else [m.c]
    ev["indicators"] = m.i or []
    ev["tape"] = m.z
    ev["spread_state"] = spread_state(bid, ask)
    return ev


def trade_price(price: float, size: float) -> int:
    """The trade rule for every Massive source: price_e9 of a positive price, size >= 0."""
    if price <= 0:
        raise ValueError(f"trade price {price} is not positive")
    if size < 0:
        raise ValueError(f"trade size {size} is negative")
    return px_e9(price)


def _stock_trade(m: _StockTrade, recv_ns: int, source: str) -> Event:
    ev = _envelope(m.sym, TRADE, m.t, m.q, recv_ns, source)
    ev["price_e9"] = trade_price(m.p, m.s)
    ev["size"] = m.s
    ev["exchange"] = m.x
    ev["trade_id"] = m.i
    ev["conditions"] = m.c or []
    ev["tape"] = m.z
    ev["trf_id"] = m.trfi
    ev["trf_ts_ns"] = None if m.trft is None else m.trft * NS_PER_MS
    ev["correction"] = None
    return ev


def _option_fields(ev: Event, sym: str) -> None:
    c = parse_option_ticker(sym)
    ev["underlying"] = c.underlying
    ev["expiry"] = c.expiry
    ev["right"] = c.right
    ev["strike_e9"] = c.strike_e9


def _option_quote(m: _OptionQuote, recv_ns: int, source: str) -> Event:
    ev = _envelope(m.sym, QUOTE, m.t, m.q, recv_ns, source)
    _option_fields(ev, m.sym)
    bid, bid_sz, ask, ask_sz = _sides(m)
    ev["bid_px_e9"] = bid
    ev["bid_size"] = bid_sz
    ev["bid_exchange"] = m.bx
    ev["ask_px_e9"] = ask
    ev["ask_size"] = ask_sz
    ev["ask_exchange"] = m.ax
    ev["spread_state"] = spread_state(bid, ask)
    return ev


def _option_trade(m: _OptionTrade, recv_ns: int, source: str) -> Event:
    ev = _envelope(m.sym, TRADE, m.t, m.q, recv_ns, source)
    _option_fields(ev, m.sym)
    ev["price_e9"] = trade_price(m.p, m.s)
    ev["size"] = m.s
    ev["exchange"] = m.x
    ev["conditions"] = m.c or []
    # The contract's NBBO and the aggressor are filled in by the per-contract state,
    # which holds its recent quotes by event time (tickflow.state).
    ev["opt_bid_px_e9"] = None
    ev["opt_ask_px_e9"] = None
    ev["aggressor"] = "MID"
    ev["nbbo_ts_ns"] = None
    return ev


_STOCK_BUILDERS: dict[type, tuple[Any, str]] = {
    _StockQuote: (_stock_quote, STOCK_QUOTE.name),
    _StockTrade: (_stock_trade, STOCK_TRADE.name),
}
_OPTION_BUILDERS: dict[type, tuple[Any, str]] = {
    _OptionQuote: (_option_quote, OPTION_QUOTE.name),
    _OptionTrade: (_option_trade, OPTION_TRADE.name),
}


def normalize_ws_frame(value: bytes, received_ns: int, source: str, options: bool) -> Normalized:
    """One Massive WebSocket frame (a JSON array) -> canonical events and rejects.

    ``source`` is the Avro Source symbol to stamp (MASSIVE_WS, or REPLAY for replays);
    ``options`` selects the options feed's message layouts.
    """
    decoder = _OPTION_DECODER if options else _STOCK_DECODER
    builders = _OPTION_BUILDERS if options else _STOCK_BUILDERS
    out = Normalized()
    try:
        msgs: list[Any] = decoder.decode(value)
    except msgspec.DecodeError:
        return _slow_path(value, received_ns, source, options, out)
    for idx, m in enumerate(msgs):
        _build_one(m, idx, builders, received_ns, source, out)
    return out


def _build_one(
    m: Any, idx: int, builders: dict[type, tuple[Any, str]], recv_ns: int, source: str,
    out: Normalized,
) -> None:
    entry = builders.get(type(m))
    if entry is None:  # a status message: connection chatter, not market data
        return
    build, type_name = entry
    try:
        ev = build(m, recv_ns, source)
        if source in LIVE_SOURCES:
            _check_receipt_time(ev["ts_event_ns"], recv_ns)
    except BadTicker as exc:
        out.rejects.append(Reject(BAD_TICKER, str(exc), m.sym, idx, m.t * NS_PER_MS))
        return
    except ValueError as exc:
        out.rejects.append(Reject(BAD_VALUE, str(exc), m.sym, idx, m.t * NS_PER_MS))
        return
    out.events.append((m.sym, type_name, ev, m.q))


def _check_receipt_time(ts_event_ns: int, recv_ns: int) -> None:
    lag = recv_ns - ts_event_ns
    if lag < -MAX_AHEAD_NS:
        raise ValueError(f"event time is {-lag / 1e9:.3f}s after its receipt")
    if lag > MAX_BEHIND_NS:
        raise ValueError(f"event time is {lag / 3.6e12:.1f}h before its receipt")


def _slow_path(value: bytes, recv_ns: int, source: str, options: bool,
               out: Normalized) -> Normalized:
    try:
        items = _ANY_DECODER.decode(value)
    except msgspec.DecodeError as exc:
        out.rejects.append(Reject(UNDECODABLE, f"frame is not valid JSON: {exc}"))
        return out
    if not isinstance(items, list):
        out.rejects.append(Reject(SCHEMA, f"frame is a JSON {type(items).__name__}, not an array"))
        return out
    union = _OptionMsg if options else _StockMsg
    builders = _OPTION_BUILDERS if options else _STOCK_BUILDERS
    for idx, item in enumerate(items):
        sym = item.get("sym") if isinstance(item, dict) else None
        sym = sym if isinstance(sym, str) else None
        try:
            m = msgspec.convert(item, union)
        except msgspec.ValidationError as exc:
            ev_tag = item.get("ev") if isinstance(item, dict) else None
            if isinstance(ev_tag, str) and ev_tag not in ("Q", "T", "status"):
                out.rejects.append(Reject(UNKNOWN_EVENT, f"unknown event type ev={ev_tag!r}",
                                          sym, idx))
            else:
                out.rejects.append(Reject(SCHEMA, f"event does not match its layout: {exc}",
                                          sym, idx))
            continue
        _build_one(m, idx, builders, recv_ns, source, out)
    return out
