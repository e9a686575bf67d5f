"""Golden tests: Massive WebSocket bytes in -> exact canonical events out."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import given
from hypothesis import strategies as st

from tickflow.normalize import normalize_record
from tickflow.normalize.massive import ROUND_LOT_CUTOFF_NS, normalize_ws_frame
from tickflow.normalizer import MarketDataNormalizer
from tickflow.raw import RawRecord
from tickflow.symbols import BadTicker, option_ticker, parse_option_ticker

RECV = 1_763_000_000_130_000_000  # 2025-11-13, after the round-lot change

QUOTE = (b'{"ev":"Q","sym":"SPY","bx":4,"bp":676.25,"bs":300,"ax":7,"ap":676.27,"as":500,'
         b'"c":1,"i":[604],"t":1763000000123,"q":100,"z":2}')
TRADE = (b'{"ev":"T","sym":"SPY","x":4,"i":"52983525029461","z":2,"p":676.26,"s":100,'
         b'"c":[12,37],"t":1763000000124,"q":101,"trfi":202,"trft":1763000000120}')


def frame(*events: bytes) -> bytes:
    return b"[" + b",".join(events) + b"]"


def test_stock_quote_and_trade_golden() -> None:
    out = normalize_ws_frame(frame(QUOTE, TRADE), RECV, "MASSIVE_WS", options=False)
    assert out.rejects == []
    assert out.events == [
        ("SPY", "stock_quote", {
            "event_id": "SPY|Q|2025-11-12|100", "symbol": "SPY",
            "ts_event_ns": 1763000000123000000, "ts_recv_ns": RECV, "latency_ns": 7_000_000,
            "source": "MASSIVE_WS", "sequence": 100,
            "bid_px_e9": 676_250_000_000, "bid_size": 300, "bid_exchange": 4,
            "ask_px_e9": 676_270_000_000, "ask_size": 500, "ask_exchange": 7,
            "conditions": [1], "indicators": [604], "tape": 2, "spread_state": "NORMAL"}, 100),
        ("SPY", "stock_trade", {
            "event_id": "SPY|T|2025-11-12|101", "symbol": "SPY",
            "ts_event_ns": 1763000000124000000, "ts_recv_ns": RECV, "latency_ns": 6_000_000,
            "source": "MASSIVE_WS", "sequence": 101, "price_e9": 676_260_000_000, "size": 100,
            "exchange": 4, "trade_id": "52983525029461", "conditions": [12, 37], "tape": 2,
            "trf_id": 202, "trf_ts_ns": 1763000000120000000, "correction": None}, 101),
    ]


def test_one_sided_quote_is_valid() -> None:
    q = b'{"ev":"Q","sym":"SPY","bp":0,"bs":0,"ap":676.27,"as":200,"t":1763000000123,"q":5}'
    [(_, _, ev, _)] = normalize_ws_frame(frame(q), RECV, "MASSIVE_WS", options=False).events
    assert ev["bid_px_e9"] is None and ev["bid_size"] == 0
    assert ev["ask_px_e9"] == 676_270_000_000
    assert ev["spread_state"] == "ONE_SIDED"


def test_round_lot_sizes_before_2025_11_03_become_shares() -> None:
    before_ms = ROUND_LOT_CUTOFF_NS // 1_000_000 - 1
    q = (b'{"ev":"Q","sym":"SPY","bp":600.1,"bs":3,"ap":600.12,"as":5,"t":%d,"q":7}'
         % before_ms)
    recv = ROUND_LOT_CUTOFF_NS + 5_000_000  # received live, 5 ms after the cutoff
    [(_, _, ev, _)] = normalize_ws_frame(frame(q), recv, "MASSIVE_WS", options=False).events
    assert (ev["bid_size"], ev["ask_size"]) == (300, 500)
    at_cutoff = q.replace(b"%d" % before_ms, b"%d" % (before_ms + 1))
    [(_, _, ev2, _)] = normalize_ws_frame(frame(at_cutoff), recv, "MASSIVE_WS",
                                       options=False).events
    assert (ev2["bid_size"], ev2["ask_size"]) == (3, 5)


def test_live_event_time_far_from_receipt_is_a_bad_value() -> None:
    ahead = RECV - 61_000_000_000  # received 61 s before the quote's own time
    behind = 1_763_000_000_123_000_000 + 25 * 3600 * 1_000_000_000  # 25 h after it
    for recv, words in ((ahead, "after its receipt"), (behind, "before its receipt")):
        out = normalize_ws_frame(frame(QUOTE, TRADE), recv, "MASSIVE_WS", options=False)
        assert out.events == [] and [r.reason_code for r in out.rejects] == ["BAD_VALUE"] * 2
        assert words in out.rejects[0].reason and out.rejects[0].event_index == 0
    # A replay is late by design: the same frame replayed days later is fine.
    assert len(normalize_ws_frame(frame(QUOTE), behind, "REPLAY", options=False).events) == 1


def test_option_quote_and_trade() -> None:
    oq = (b'{"ev":"Q","sym":"O:SPY251216C00676000","bx":1,"ax":1,"bp":2.5,"ap":2.6,'
          b'"bs":10,"as":12,"t":1763000000200,"q":9}')
    ot = (b'{"ev":"T","sym":"O:SPY251216C00676000","x":65,"p":2.6,"s":3,"c":[227],'
          b'"t":1763000000300,"q":10}')
    n = MarketDataNormalizer()
    out = n.on_message(frame(oq, ot), RECV, feed="options")
    by_type = {t: ev for t, ev in out}
    q, t = by_type["option_quote"], by_type["option_trade"]
    for ev in (q, t):
        assert ev["underlying"] == "SPY"
        assert ev["expiry"] == dt.date(2025, 12, 16)
        assert ev["right"] == "CALL"
        assert ev["strike_e9"] == 676_000_000_000
    assert (q["bid_size"], q["ask_size"]) == (10, 12)  # contracts, no round-lot rule
    # Enriched from the contract's latest quote: price at the ask -> BUY.
    assert t["opt_bid_px_e9"] == 2_500_000_000 and t["opt_ask_px_e9"] == 2_600_000_000
    assert t["aggressor"] == "BUY"


def test_option_trade_without_quote_is_mid_with_null_nbbo() -> None:
    ot = b'{"ev":"T","sym":"O:SPY251216P00600500","x":65,"p":1.05,"s":1,"t":1763000000300,"q":1}'
    [(_, ev)] = MarketDataNormalizer().on_message(frame(ot), RECV, feed="options")
    assert ev["right"] == "PUT" and ev["strike_e9"] == 600_500_000_000
    assert ev["opt_bid_px_e9"] is None and ev["opt_ask_px_e9"] is None
    assert ev["aggressor"] == "MID"


def test_malformed_frame_is_rejected_whole_with_reason() -> None:
    out = normalize_ws_frame(frame(QUOTE)[:-7], RECV, "MASSIVE_WS", options=False)
    assert out.events == []
    [rej] = out.rejects
    assert rej.reason_code == "UNDECODABLE" and rej.event_index is None


def test_bad_event_inside_frame_is_isolated() -> None:
    bad_price = b'{"ev":"T","sym":"SPY","p":-1.0,"s":100,"t":1763000000124,"q":102}'
    unknown = b'{"ev":"XQ","sym":"SPY"}'
    missing = b'{"ev":"T","sym":"SPY","s":100,"t":1763000000124,"q":103}'
    out = normalize_ws_frame(frame(QUOTE, bad_price, unknown, missing, TRADE), RECV,
                             "MASSIVE_WS", options=False)
    assert [e[1] for e in out.events] == ["stock_quote", "stock_trade"]
    assert [(r.reason_code, r.event_index, r.symbol) for r in out.rejects] == [
        ("BAD_VALUE", 1, "SPY"), ("UNKNOWN_EVENT", 2, "SPY"), ("SCHEMA", 3, "SPY")]


def test_both_sides_empty_quote_is_impossible() -> None:
    q = b'{"ev":"Q","sym":"SPY","bp":0,"bs":0,"ap":0,"as":0,"t":1763000000123,"q":5}'
    out = normalize_ws_frame(frame(q), RECV, "MASSIVE_WS", options=False)
    assert out.events == [] and out.rejects[0].reason_code == "BAD_VALUE"


def test_status_messages_are_not_events() -> None:
    s = b'{"ev":"status","status":"success","message":"subscribed to: Q.SPY"}'
    out = normalize_ws_frame(frame(s), RECV, "MASSIVE_WS", options=False)
    assert out.events == [] and out.rejects == []


def test_record_without_received_ns_goes_to_dead_letters() -> None:
    rec = RawRecord("raw.massive.stocks", 0, 5, None, frame(QUOTE), (), source="massive_ws")
    assert normalize_record(rec).rejects[0].reason_code == "MISSING_HEADER"


def test_crossed_and_locked_quotes_are_flagged() -> None:
    locked = b'{"ev":"Q","sym":"SPY","bp":1.0,"bs":1,"ap":1.0,"as":1,"t":1763000000123,"q":5}'
    crossed = b'{"ev":"Q","sym":"SPY","bp":1.01,"bs":1,"ap":1.0,"as":1,"t":1763000000123,"q":6}'
    out = normalize_ws_frame(frame(locked, crossed), RECV, "MASSIVE_WS", options=False)
    assert [e[2]["spread_state"] for e in out.events] == ["LOCKED", "CROSSED"]


def test_bad_option_ticker() -> None:
    try:
        parse_option_ticker("O:SPY25X216C00676000")
    except BadTicker as exc:
        assert "O:SPY25X216C00676000" in str(exc)
    else:
        raise AssertionError("bad ticker accepted")


@given(st.integers(1, 9_999_999), st.integers(1, 999_999), st.sampled_from(["CALL", "PUT"]),
       st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)))
def test_option_ticker_round_trip(strike_thousandths: int, _: int, right: str,
                                  expiry: dt.date) -> None:
    strike_e9 = strike_thousandths * 1_000_000
    t = option_ticker("SPY", expiry, right, strike_e9)
    c = parse_option_ticker(t)
    assert (c.underlying, c.expiry, c.right, c.strike_e9) == ("SPY", expiry, right, strike_e9)


@given(st.integers(1, 99_999_999), st.integers(0, 6))
def test_prices_are_exact(units: int, decimals: int) -> None:
    # Any price with up to 6 decimals below 1e6 converts to its exact fixed-point value.
    from decimal import Decimal

    from tickflow.prices import px_e9
    price = Decimal(units).scaleb(-decimals)
    if price >= 1_000_000:
        return
    assert px_e9(float(str(price))) == int(price * 1_000_000_000)


def test_the_same_event_has_one_id_on_the_websocket_and_in_rest() -> None:
    """Identity by (symbol, kind, trading date, sequence): the WebSocket's millisecond ``t``
    and REST's nanosecond ``sip_timestamp`` of one trade give the same event_id."""
    from tickflow.normalize.massive_rest import RestProvenance, normalize_rest_page

    sip_ns = 1_763_049_600_123_456_789  # 2025-11-13 16:00:00.123456789 UTC
    ws = normalize_ws_frame(
        b'[{"ev":"T","sym":"SPY","x":4,"i":"7","z":2,"p":676.26,"s":100,"c":[12],'
        b'"t":%d,"q":9001}]' % (sip_ns // 1_000_000), sip_ns + 10**7, "MASSIVE_WS",
        options=False)
    page = json.dumps({"results": [{"price": 676.26, "size": 100, "exchange": 4, "id": "7",
                                    "conditions": [12], "sip_timestamp": sip_ns,
                                    "sequence_number": 9001, "tape": 2}]}).encode()
    rest = normalize_rest_page(page, RestProvenance("massive", "trades", "SPY", {}, 1, True),
                               sip_ns + 3600 * 10**9, "MASSIVE_REST")
    [(_, _, w, _)] = ws.events
    [(_, _, r, _)] = rest.events
    assert w["ts_event_ns"] != r["ts_event_ns"]  # the precisions differ...
    assert w["event_id"] == r["event_id"] == "SPY|T|2025-11-13|9001"  # ...the identity not
    # New York's date, also in the evening session after UTC midnight (20:30 ET).
    from tickflow.identity import massive_event_id

    assert massive_event_id("SPY", "T", 1_763_083_800 * 10**9, 1) == "SPY|T|2025-11-13|1"
