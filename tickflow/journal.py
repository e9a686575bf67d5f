"""What a TradeRecord must be (schemas/trade_record.avsc), as plain rules.

``trade_record`` turns what a strategy hands ``TradeJournal.record`` into the Avro-shaped
event, or raises ``BadTrade`` naming the problem; ``first_of_each`` is the one rule for
repeats (a trade id recorded twice keeps its first record), used by queries and rebuilds.
``TradeRecord`` is the prototype's shape of the same record (``trade_id``, ``strategy_id``,
``fill_price`` as a Decimal, ...): ``to_trade``/``from_event`` map it onto the schema's
fields, so both shapes go through the one validation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from schemas.model import Event
from tickflow.symbols import symbol_problem

REQUIRED = ("event_id", "strategy", "symbol", "side", "quantity", "ts_event_ns")
OPTIONAL = ("price_e9", "order_id", "venue", "fees_e9", "note", "requested_quantity",
            "signal_timestamp_ns", "submit_timestamp_ns", "fill_timestamp_ns",
            "slippage_bps_e9", "realized_pnl_e9", "correlation_id", "metadata")
E9 = 10**9


T = TypeVar("T")


def _trade_id(record: Any) -> str:
    return str(record["event_id"])


class BadTrade(ValueError):
    """A trade that cannot be recorded; the message says which field and why."""


def to_e9(value: Decimal | int | str | float, name: str) -> int:
    """An exact decimal as fixed-point 1e-9: Decimal, int or decimal string; a float by its
    shortest decimal spelling (0.1 -> 0.1, not 0.1000000000000000055...). More than nine
    decimal places is refused, never rounded."""
    if isinstance(value, bool):
        raise BadTrade(f"{name} must be a number, not {value!r}")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise BadTrade(f"{name} must be a number, not {value!r}") from None
    if not d.is_finite():
        raise BadTrade(f"{name} must be finite, not {value!r}")
    scaled = d * E9
    if scaled != scaled.to_integral_value():
        raise BadTrade(f"{name} {value!r} has more than 9 decimal places")
    return int(scaled)


def from_e9(value: int | None) -> Decimal | None:
    """Fixed-point 1e-9 back to the exact Decimal."""
    return None if value is None else Decimal(value).scaleb(-9)


def _int(trade: dict[str, Any], k: str, low: int) -> None:
    v = trade.get(k)
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
        raise BadTrade(f"{k} must be an int >= {low}, not {v!r}")


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
    _int(trade, "quantity", 0)
    _int(trade, "ts_event_ns", 1)
    _int(trade, "price_e9", 1)
    _int(trade, "requested_quantity", 0)
    for k in ("signal_timestamp_ns", "submit_timestamp_ns", "fill_timestamp_ns"):
        _int(trade, k, 1)
    for k in ("fees_e9", "slippage_bps_e9", "realized_pnl_e9"):
        v = trade.get(k)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
            raise BadTrade(f"{k} must be an int, not {v!r}")
    filled, price = trade["quantity"], trade.get("price_e9")
    if (filled > 0) != (price is not None):
        raise BadTrade("a fill needs a price and a price needs a fill: quantity "
                       f"{filled}, price_e9 {price!r}")
    requested = trade.get("requested_quantity")
    if requested is not None and requested < filled:
        raise BadTrade(f"filled {filled} more than the {requested} requested")
    meta = trade.get("metadata") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise BadTrade("metadata must map strings to strings")
    ev: Event = {k: trade[k] for k in REQUIRED}
    ev.update({k: trade.get(k) for k in OPTIONAL})
    ev["metadata"] = dict(meta)
    ev["recorded_ns"] = recorded_ns
    return ev


@dataclass
class TradeRecord:
    """One of our executions in the prototype's shape; exact values as ``Decimal``.

    ``fill_price`` None is an order that filled nothing (``filled_quantity`` 0). The record's
    time (the lake's date and order) is the fill's, else the submission's, else the
    signal's: at least one of them is needed.
    """

    trade_id: str
    strategy_id: str
    symbol: str
    side: str  # "BUY" | "SELL"
    filled_quantity: int
    fill_price: Decimal | None = None
    requested_quantity: int | None = None
    signal_timestamp_ns: int | None = None
    submit_timestamp_ns: int | None = None
    fill_timestamp_ns: int | None = None
    slippage_bps: Decimal | None = None
    realized_pnl: Decimal | None = None
    fees: Decimal | None = None
    correlation_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    order_id: str | None = None
    venue: str | None = None
    note: str | None = None
    recorded_ns: int | None = None

    @property
    def timestamp_ns(self) -> int | None:
        return self.fill_timestamp_ns or self.submit_timestamp_ns or self.signal_timestamp_ns

    def to_trade(self) -> dict[str, Any]:
        """The schema-shaped dict ``trade_record`` validates."""
        if self.timestamp_ns is None:
            raise BadTrade(f"trade {self.trade_id!r} has no fill, submit or signal timestamp")

        def e9(v: Decimal | int | str | float | None, name: str) -> int | None:
            return None if v is None else to_e9(v, name)

        out: dict[str, Any] = {
            "event_id": self.trade_id, "strategy": self.strategy_id, "symbol": self.symbol,
            "side": self.side, "quantity": self.filled_quantity,
            "price_e9": e9(self.fill_price, "fill_price"), "ts_event_ns": self.timestamp_ns,
            "order_id": self.order_id, "venue": self.venue, "fees_e9": e9(self.fees, "fees"),
            "note": self.note, "requested_quantity": self.requested_quantity,
            "signal_timestamp_ns": self.signal_timestamp_ns,
            "submit_timestamp_ns": self.submit_timestamp_ns,
            "fill_timestamp_ns": self.fill_timestamp_ns,
            "slippage_bps_e9": e9(self.slippage_bps, "slippage_bps"),
            "realized_pnl_e9": e9(self.realized_pnl, "realized_pnl"),
            "correlation_id": self.correlation_id, "metadata": dict(self.metadata),
        }
        if self.recorded_ns is not None:
            out["recorded_ns"] = self.recorded_ns
        return out

    @classmethod
    def from_event(cls, ev: dict[str, Any]) -> TradeRecord:
        """The record of a stored TradeRecord event (topic or lake; older versions too)."""
        meta = ev.get("metadata") or {}
        if not isinstance(meta, dict):  # Arrow maps read back as (key, value) pairs
            meta = dict(meta)
        # A record from before the three timestamps existed: its time was the fill's.
        stamped = any(ev.get(k) is not None for k in
                      ("signal_timestamp_ns", "submit_timestamp_ns", "fill_timestamp_ns"))
        return cls(
            trade_id=ev["event_id"], strategy_id=ev["strategy"], symbol=ev["symbol"],
            side=ev["side"], filled_quantity=ev["quantity"],
            fill_price=from_e9(ev.get("price_e9")),
            requested_quantity=ev.get("requested_quantity"),
            signal_timestamp_ns=ev.get("signal_timestamp_ns"),
            submit_timestamp_ns=ev.get("submit_timestamp_ns"),
            fill_timestamp_ns=ev.get("fill_timestamp_ns") if stamped else ev["ts_event_ns"],
            slippage_bps=from_e9(ev.get("slippage_bps_e9")),
            realized_pnl=from_e9(ev.get("realized_pnl_e9")), fees=from_e9(ev.get("fees_e9")),
            correlation_id=ev.get("correlation_id"), metadata=dict(meta),
            order_id=ev.get("order_id"), venue=ev.get("venue"), note=ev.get("note"),
            recorded_ns=ev.get("recorded_ns"))


def first_of_each(records: Iterable[T], key: Callable[[T], str] = _trade_id) -> Iterator[T]:
    """Records in the order given, each trade id once (its first record)."""
    seen: set[str] = set()
    for r in records:
        k = key(r)
        if k not in seen:
            seen.add(k)
            yield r
