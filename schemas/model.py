"""The Python event model: one ``EventType`` per canonical event, tying together its Avro
contract (``schemas/<name>.avsc``), its normalized topic and its lake folder.

Events travel through the pipeline as plain dicts shaped exactly like their Avro record
(field names and types of the .avsc): fastavro encodes them and pyarrow tables are built from
them without any conversion step, which keeps the hot path free of extra per-event objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from schemas import topics

SCHEMA_DIR = Path(__file__).resolve().parent

# An event is a dict matching its Avro record.
Event = dict[str, Any]


@dataclass(frozen=True)
class EventType:
    """One canonical event: its name, Avro file, normalized topic and lake folder."""

    name: str
    schema_file: str
    topic: str

    @property
    def subject(self) -> str:
        """Schema registry subject (TopicNameStrategy)."""
        return f"{self.topic}-value"

    @property
    def schema_path(self) -> Path:
        return SCHEMA_DIR / self.schema_file

    @cached_property
    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.schema_path.read_text())
        return loaded

    @property
    def schema_str(self) -> str:
        return self.schema_path.read_text()


STOCK_QUOTE = EventType("stock_quote", "stock_quote.avsc", topics.STOCK_QUOTES)
STOCK_TRADE = EventType("stock_trade", "stock_trade.avsc", topics.STOCK_TRADES)
OPTION_QUOTE = EventType("option_quote", "option_quote.avsc", topics.OPTION_QUOTES)
OPTION_TRADE = EventType("option_trade", "option_trade.avsc", topics.OPTION_TRADES)
FUTURES_TRADE = EventType("futures_trade", "futures_trade.avsc", topics.FUTURES_TRADES)
MBP10 = EventType("mbp10", "mbp10.avsc", topics.FUTURES_MBP10)
DATA_HEALTH = EventType("data_health", "data_health.avsc", topics.HEALTH)
DEAD_LETTER = EventType("dead_letter", "dead_letter.avsc", topics.DEAD_LETTER)
CLOCK_ALERT = EventType("clock_alert", "clock_alert.avsc", topics.ALERTS)
# Our own executions (TradeJournal): registered and provisioned like the rest, never touched
# by the normalizer.
TRADE_RECORD = EventType("trade_record", "trade_record.avsc", topics.TRADE_JOURNAL)

MARKET_EVENTS: tuple[EventType, ...] = (
    STOCK_QUOTE,
    STOCK_TRADE,
    OPTION_QUOTE,
    OPTION_TRADE,
    FUTURES_TRADE,
    MBP10,
)
ALL_EVENTS: tuple[EventType, ...] = (*MARKET_EVENTS, DATA_HEALTH, DEAD_LETTER, CLOCK_ALERT,
                                     TRADE_RECORD)
BY_NAME: dict[str, EventType] = {e.name: e for e in ALL_EVENTS}
BY_TOPIC: dict[str, EventType] = {e.topic: e for e in ALL_EVENTS}
