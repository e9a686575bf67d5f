"""Massive REST v3 pages (``/v3/quotes``, ``/v3/trades``) -> canonical events.

The page bytes are the raw record; the request (ticker, endpoint, window) travels in the
``provenance`` header, because results do not repeat the ticker. Quotes and trades share the
WebSocket events' identity (symbol, sequence number), so a backfill overlapping live data is
deduplicated by the same rule. The last page of a request carries ``complete``: the window is
then covered, and the dataflow may close the symbol's gap.
"""

from __future__ import annotations

import msgspec

from schemas.model import OPTION_QUOTE, OPTION_TRADE, STOCK_QUOTE, STOCK_TRADE, Event
from tickflow.identity import QUOTE, TRADE, massive_event_id
from tickflow.normalize.base import (
    BAD_TICKER,
    BAD_VALUE,
    SCHEMA,
    UNDECODABLE,
    Fill,
    Normalized,
    Reject,
)
from tickflow.normalize.massive import (
    ROUND_LOT,
    ROUND_LOT_CUTOFF_NS,
    quote_sides,
    spread_state,
    trade_price,
)
from tickflow.symbols import BadTicker, parse_option_ticker


class RestProvenance(msgspec.Struct, frozen=True):
    """The ``provenance`` header of a REST page: what was asked, by what."""

    vendor: str
    endpoint: str  # "quotes" | "trades"
    ticker: str
    params: dict[str, str | int]
    page: int
    complete: bool
    window_start_ns: int | None = None
    window_end_ns: int | None = None
    sdk_version: str = ""
    tool_version: str = ""


class _Quote(msgspec.Struct):
    sip_timestamp: int
    sequence_number: int
    bid_price: float = 0.0
    bid_size: float = 0
    ask_price: float = 0.0
    ask_size: float = 0
    bid_exchange: int | None = None
    ask_exchange: int | None = None
    conditions: list[int] | None = None
    indicators: list[int] | None = None
    tape: int | None = None


class _Trade(msgspec.Struct):
    sip_timestamp: int
    sequence_number: int
    price: float
    size: float
    exchange: int | None = None
    id: str | None = None
    conditions: list[int] | None = None
    tape: int | None = None
    trf_id: int | None = None
    trf_timestamp: int | None = None
    correction: int | None = None


class _QuotePage(msgspec.Struct):
    results: list[_Quote] = []


class _TradePage(msgspec.Struct):
    results: list[_Trade] = []


PROVENANCE_DECODER = msgspec.json.Decoder(RestProvenance)
PROVENANCE_ENCODER = msgspec.json.Encoder()
_QUOTES = msgspec.json.Decoder(_QuotePage)
_TRADES = msgspec.json.Decoder(_TradePage)


def _base(sym: str, kind: str, ts: int, seq: int, recv: int, source: str) -> Event:
    return {"event_id": massive_event_id(sym, kind, ts, seq), "symbol": sym, "ts_event_ns": ts,
            "ts_recv_ns": recv, "latency_ns": recv - ts, "source": source, "sequence": seq}


def normalize_rest_page(value: bytes, prov: RestProvenance, recv: int, source: str
                        ) -> Normalized:
    out = Normalized()
    sym = prov.ticker
    option = sym.startswith("O:")
    try:
        contract = parse_option_ticker(sym) if option else None
    except BadTicker as exc:
        out.rejects.append(Reject(BAD_TICKER, str(exc), None))
        return out
    results: list[_Quote | _Trade]
    try:
        if prov.endpoint == "quotes":
            results = list(_QUOTES.decode(value).results)
        else:
            results = list(_TRADES.decode(value).results)
    except msgspec.ValidationError as exc:
        out.rejects.append(Reject(SCHEMA, f"REST page does not match its layout: {exc}", sym))
        return out
    except msgspec.DecodeError as exc:
        out.rejects.append(Reject(UNDECODABLE, f"REST page is not valid JSON: {exc}", sym))
        return out
    kind = QUOTE if prov.endpoint == "quotes" else TRADE
    for idx, r in enumerate(results):
        ev = _base(sym, kind, r.sip_timestamp, r.sequence_number, recv, source)
        if contract is not None:
            ev.update(underlying=contract.underlying, expiry=contract.expiry,
                      right=contract.right, strike_e9=contract.strike_e9)
        try:
            if isinstance(r, _Quote):
                bid, bs, ask, as_ = quote_sides(r.bid_price, r.bid_size, r.ask_price,
                                                r.ask_size)
                if not option and r.sip_timestamp < ROUND_LOT_CUTOFF_NS:
                    bs, as_ = bs * ROUND_LOT, as_ * ROUND_LOT
                ev.update(bid_px_e9=bid, bid_size=bs, bid_exchange=r.bid_exchange,
                          ask_px_e9=ask, ask_size=as_, ask_exchange=r.ask_exchange,
                          spread_state=spread_state(bid, ask))
                if not option:
                    ev.update(conditions=r.conditions or [], indicators=r.indicators or [],
                              tape=r.tape)
                type_name = OPTION_QUOTE.name if option else STOCK_QUOTE.name
            else:
                ev.update(price_e9=trade_price(r.price, r.size), size=int(r.size),
                          exchange=r.exchange,
                          conditions=r.conditions or [])
                if option:
                    ev.update(opt_bid_px_e9=None, opt_ask_px_e9=None, aggressor="MID",
                              nbbo_ts_ns=None)
                else:
                    ev.update(trade_id=r.id, tape=r.tape, trf_id=r.trf_id,
                              trf_ts_ns=r.trf_timestamp, correction=r.correction)
                type_name = OPTION_TRADE.name if option else STOCK_TRADE.name
        except ValueError as exc:
            out.rejects.append(Reject(BAD_VALUE, str(exc), sym, idx, r.sip_timestamp))
            continue
        out.events.append((sym, type_name, ev, r.sequence_number))
    if prov.complete and prov.window_start_ns is not None and prov.window_end_ns is not None:
        out.fills.append(Fill(sym, prov.window_start_ns, prov.window_end_ns, prov.endpoint))
    return out
