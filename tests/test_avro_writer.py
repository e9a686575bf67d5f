"""The compiled Avro writer: byte-identical to fastavro on random events of every contract,
and a clear error (never a crash or wrong bytes) on values that do not fit the schema."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import _avro_writer
from schemas.avro_plan import UnsupportedSchema, compile_plan
from schemas.model import ALL_EVENTS, STOCK_QUOTE, EventType
from schemas.serde import AvroEncoder, decode

PREFIX = b"\x00\x00\x00\x00\x07"


def strategy(schema: Any, named: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Values fastavro accepts for an Avro schema."""
    if isinstance(schema, list):
        (other,) = [b for b in schema if b != "null"]
        return st.none() | strategy(other, named)
    if isinstance(schema, str):
        prim = {"long": st.integers(-(2**63), 2**63 - 1), "int": st.integers(-(2**31), 2**31 - 1),
                "string": st.text(max_size=12), "bytes": st.binary(max_size=12),
                "boolean": st.booleans()}
        return prim[schema] if schema in prim else named[schema]
    kind = schema["type"]
    if schema.get("logicalType") == "date":
        return st.dates(dt.date(1900, 1, 1), dt.date(2200, 1, 1))
    if kind == "enum":
        named[schema["name"]] = st.sampled_from(schema["symbols"])
        return named[schema["name"]]
    if kind == "array":
        return st.lists(strategy(schema["items"], named), max_size=4)
    if kind == "record":
        rec = st.fixed_dictionaries({f["name"]: strategy(f["type"], named)
                                     for f in schema["fields"]})
        named[schema["name"]] = rec
        return rec
    return strategy(kind, named)


def fastavro_bytes(et: EventType, value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(et.schema), value)
    return buf.getvalue()


# TradeRecord (its metadata map) is not on the hot path: the generic codec writes it.
GENERIC_CODEC = {"trade_record"}


def test_every_market_event_compiles_and_only_the_journal_uses_the_generic_codec() -> None:
    failed = set()
    for et in ALL_EVENTS:
        try:
            compile_plan(et.schema)
        except UnsupportedSchema:
            failed.add(et.name)
    assert failed == GENERIC_CODEC


@pytest.mark.parametrize("et", [e for e in ALL_EVENTS if e.name not in GENERIC_CODEC],
                         ids=lambda et: et.name)
def test_same_bytes_as_fastavro(et: EventType) -> None:
    plan = compile_plan(et.schema)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(strategy(et.schema, {}))
    def check(value: dict[str, Any]) -> None:
        expected = fastavro_bytes(et, value)
        assert _avro_writer.encode(plan, value, PREFIX) == PREFIX + expected
        assert _avro_writer.encode_many(plan, [value, value], b"") == [expected, expected]

    check()


def test_the_encoder_uses_it_and_round_trips() -> None:
    enc = AvroEncoder(STOCK_QUOTE, 7)
    ev = {"event_id": "SPY|1|1", "symbol": "SPY", "ts_event_ns": 1, "ts_recv_ns": 2,
          "latency_ns": 1, "source": "MASSIVE_WS", "sequence": 1, "bid_px_e9": None,
          "bid_size": 0, "bid_exchange": None, "ask_px_e9": 5, "ask_size": 1,
          "ask_exchange": 3, "conditions": [1, 2], "indicators": [], "tape": None,
          "spread_state": "NORMAL"}
    assert enc._plan is not None
    assert decode(STOCK_QUOTE, enc.encode(ev)) == ev
    assert enc.encode_many([ev, ev]) == [enc.encode(ev)] * 2


@pytest.mark.parametrize(("field", "value", "error"), [
    ("sequence", "7", TypeError), ("sequence", None, TypeError), ("sequence", 2**64, OverflowError),
    ("bid_size", 1.5, TypeError), ("spread_state", "WIDE", ValueError),
    ("conditions", 5, TypeError), ("conditions", [2**40], ValueError),
    ("symbol", b"SPY", TypeError),
])
def test_values_that_do_not_fit_raise(field: str, value: Any, error: type[Exception]) -> None:
    enc = AvroEncoder(STOCK_QUOTE, 7)
    ev = {"event_id": "x", "symbol": "SPY", "ts_event_ns": 1, "ts_recv_ns": 2, "latency_ns": 1,
          "source": "MASSIVE_WS", "sequence": 1, "bid_size": 0, "ask_size": 0,
          "conditions": [], "indicators": [], "spread_state": "NORMAL"}
    enc.encode(ev)  # the missing nullable fields are null
    with pytest.raises(error, match=field):
        enc.encode({**ev, field: value})


def test_unsupported_schemas_are_refused() -> None:
    with pytest.raises(UnsupportedSchema):
        compile_plan({"type": "map", "values": "long"})
    with pytest.raises(UnsupportedSchema):
        compile_plan(["null", "long", "string"])


def test_values_larger_than_the_inline_buffer() -> None:
    plan = compile_plan(STOCK_QUOTE.schema)
    small = {"event_id": "x", "symbol": "SPY", "ts_event_ns": 1, "ts_recv_ns": 2,
             "latency_ns": 1, "source": "MASSIVE_WS", "sequence": 1, "bid_size": 0,
             "ask_size": 0, "conditions": [], "indicators": [], "spread_state": "NORMAL"}
    big = {**small, "event_id": "é" * 5000, "conditions": list(range(-(2**31), 2**31, 2**22))}
    values = [small, big, small, big]
    got = _avro_writer.encode_many(plan, values, PREFIX)
    assert got == [PREFIX + fastavro_bytes(STOCK_QUOTE, v) for v in values]
    assert len(got[1]) > 10_000


@pytest.mark.parametrize("plan", [
    (), (99,), (0, 1), (5, ["A"]), (7, "fields"), (7, (("x",),)), (8, 0, 1), ("long",),
    (6,), (7, (("x", (42,)),)),
])
def test_a_malformed_plan_is_refused_not_a_crash(plan: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="malformed Avro write plan"):
        _avro_writer.encode(plan, {"x": 1}, b"")
