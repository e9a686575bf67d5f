"""What a TradeRecord must be (schemas/trade_record.avsc), as plain rules.

``trade_record`` turns what a strategy hands ``TradeJournal.record`` into the Avro-shaped
event, or raises ``BadTrade`` naming the problem; ``first_of_each`` is the one rule for
repeats (a trade id recorded twice keeps its first record), used by queries and rebuilds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from schemas.model import Event
from tickflow.symbols import symbol_problem

REQUIRED = ("event_id", "strategy", "symbol", "side", "quantity", "price_e9", "ts_event_ns")
OPTIONAL = ("order_id", "venue", "fees_e9", "note")


T = TypeVar("T")


def _trade_id(record: Any) -> str:
    return str(record["event_id"])


class BadTrade(ValueError):
    """A trade that cannot be recorded; the message says which field and why."""


def trade_record(trade: dict[str, Any], recorded_ns: int) -> Event:
    """The TradeRecord event for ``trade`` (a dict with the schema's field names)."""
    missing = [k for k in REQUIRED if trade.get(k) is None]
    if missing:
        raise BadTrade(f"trade lacks {', '.join(missing)}")
    unknown = set(trade) - set(REQUIRED) - set(OPTIONAL) - {"recorded_ns"}
    if unknown:
        raise BadTrade(f"trade has unknown fields {sorted(unknown)}")
    for k in ("event_id", "strategy"):
        if not isinstance(trade[k], str) or not trade[k]:
            raise BadTrade(f"{k} must be a non-empty string")
    problem = symbol_problem(trade["symbol"]) if isinstance(trade["symbol"], str) else "not a str"
    if problem:
        raise BadTrade(f"symbol {trade['symbol']!r}: {problem}")
    if trade["side"] not in ("BUY", "SELL"):
        raise BadTrade(f"side must be BUY or SELL, not {trade['side']!r}")
    for k in ("quantity", "price_e9", "ts_event_ns"):
        v = trade[k]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise BadTrade(f"{k} must be a positive int, not {v!r}")
    fees = trade.get("fees_e9")
    if fees is not None and (not isinstance(fees, int) or isinstance(fees, bool)):
        raise BadTrade(f"fees_e9 must be an int, not {fees!r}")
    ev: Event = {k: trade[k] for k in REQUIRED}
    ev.update({k: trade.get(k) for k in OPTIONAL})
    ev["recorded_ns"] = recorded_ns
    return ev


def first_of_each(records: Iterable[T], key: Callable[[T], str] = _trade_id) -> Iterator[T]:
    """Records in the order given, each trade id once (its first record)."""
    seen: set[str] = set()
    for r in records:
        k = key(r)
        if k not in seen:
            seen.add(k)
            yield r
