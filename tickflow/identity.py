"""The identity of a vendor event: one ``event_id`` whichever path it came by.

A Massive trade or quote is the same event on the WebSocket, in a REST page and in a
replay; what those paths share is the symbol, the kind of event, the vendor's sequence
number and the trading day it belongs to. Timestamps are not shared exactly (the
WebSocket's ``t`` is milliseconds, REST's ``sip_timestamp`` nanoseconds), so the id never
contains one:

    <symbol>|<Q or T>|<trading date, YYYY-MM-DD>|<vendor sequence>

The trading date is the New York calendar date of the event (the vendor's sequences run per
symbol and day; New York midnight falls outside every session, extended hours included, so
a millisecond of rounding cannot move an event across it). Quotes (``Q``) and trades
(``T``) are told apart because their identities are separate streams of events.

DBN records carry their venue's nanosecond ``ts_event`` in files and on the raw topic
alike; their ids (``tickflow.normalize.databento``) are built from it and are the same
whether a file is imported or replayed.

The prototype's correlation id, ``make_correlation_id(symbol, exchange_timestamp_ns,
sequence)``, is kept for code that builds one (e.g. to tie an order to the event that caused
it, ``TradeRecord.correlation_id``): it is the ``event_id`` of that event, so a correlation id
and an event id are one value, and joining trades to market events is an equality. The
timestamp names the trading day (the id's date); the event kind defaults to a trade.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

NEW_YORK = ZoneInfo("America/New_York")
NS_PER_HOUR = 3600 * 1_000_000_000
QUOTE, TRADE = "Q", "T"

# New York date per UTC hour: every offset change (DST) happens on an hour boundary, so an
# hour's events share a date; the cache makes the zone lookup once an hour of event time.
_dates: dict[int, str] = {}


def trading_date(ts_event_ns: int) -> str:
    """The New York date (``YYYY-MM-DD``) of an event time in UTC nanoseconds."""
    hour = ts_event_ns // NS_PER_HOUR
    d = _dates.get(hour)
    if d is None:
        if len(_dates) > 100_000:  # a replay of many years: keep it bounded
            _dates.clear()
        d = _dates[hour] = dt.datetime.fromtimestamp(hour * 3600, NEW_YORK).date().isoformat()
    return d


def massive_event_id(symbol: str, kind: str, ts_event_ns: int, sequence: int) -> str:
    """``event_id`` of a Massive quote (``kind`` "Q") or trade ("T"); see module doc."""
    return f"{symbol}|{kind}|{trading_date(ts_event_ns)}|{sequence}"


def make_correlation_id(symbol: str, exchange_timestamp_ns: int, sequence: int,
                        kind: str = TRADE) -> str:
    """The prototype's correlation id of a vendor event: its ``event_id`` (module doc)."""
    return massive_event_id(symbol, kind, exchange_timestamp_ns, sequence)
