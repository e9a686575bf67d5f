"""Property-based: whatever bytes arrive, the normalizer boundary never raises; every input
becomes canonical events or dead letters (with its original bytes)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tickflow.normalize import normalize_record
from tickflow.normalize.databento import META_ENCODER, DbnChunkMeta
from tickflow.normalizer import MarketDataNormalizer
from tickflow.raw import H_DBN, H_PROVENANCE, RawRecord, RawSource

RECV = 1_763_000_000_000_000_000

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)
massive_like = st.fixed_dictionaries({
    "ev": st.sampled_from(["Q", "T", "status", "XX", 1]),
    "sym": st.sampled_from(["SPY", "O:SPY251216C00676000", "O:BAD", "", 5]),
    "t": st.integers(-10, 2 * 10**12) | st.text(max_size=3),
    "q": st.integers(-5, 10**9),
    "bp": st.floats(-10, 1e6, allow_nan=False) | st.none(),
    "ap": st.floats(-10, 1e6, allow_nan=False),
    "bs": st.integers(-5, 10**6), "as": st.integers(-5, 10**6),
    "p": st.floats(-10, 1e6, allow_nan=False), "s": st.integers(-5, 10**6)})


def _check(out: list[tuple[str, dict]], raw: bytes) -> None:
    published = {ev["event_id"]: ev for t, ev in out if t != "dead_letter"}
    for type_name, ev in out:
        if type_name != "dead_letter":
            continue
        assert ev["reason_code"] and ev["reason"]
        if ev["reason_code"] == "CONFLICT":
            # One frame carried one identity twice with different payloads: the letter holds
            # the second version (the raw bytes stay in the raw log) and the first one was
            # published, with another payload.
            other = json.loads(ev["raw_value"])["event"]
            first = published[other["event_id"]]
            assert json.loads(json.dumps(first, default=str)) != other
            assert ev["raw_offset"] == 0 and ev["raw_topic"]
        else:
            assert ev["raw_value"] == raw


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["stocks", "options"]))
def test_arbitrary_bytes_never_raise(raw: bytes, feed: str) -> None:
    out = MarketDataNormalizer().on_message(raw, RECV, feed=feed)
    if not raw.strip().startswith(b"["):  # not even a JSON array: never silently dropped
        assert [t for t, _ in out] == ["dead_letter"]
    _check(out, raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(massive_like | json_values, max_size=6), st.sampled_from(["stocks", "options"]))
def test_arbitrary_json_frames_never_raise(items: list, feed: str) -> None:
    raw = json.dumps(items).encode()
    out = MarketDataNormalizer().on_message(raw, RECV, feed=feed)
    _check(out, raw)


@settings(max_examples=200)
@given(st.binary(max_size=800))
def test_arbitrary_dbn_chunks_never_raise(raw: bytes) -> None:
    meta = META_ENCODER.encode(DbnChunkMeta(3, "mbp-10", "GLBX.MDP3", {"4916": "ES.c.0"}))
    rec = RawRecord("raw.databento.dbn", 0, 0, None, raw, ((H_DBN, meta),),
                    source="databento_dbn", received_ns=RECV)
    norm = normalize_record(rec)
    assert norm.events or norm.rejects or not raw


rest_item = st.fixed_dictionaries({
    "sip_timestamp": st.integers(-10, 2 * 10**18) | st.text(max_size=3) | st.none(),
    "sequence_number": st.integers(-5, 2**63 - 1) | st.floats(allow_nan=False),
    "bid_price": st.floats(-10, 1e7, allow_nan=False) | st.none(),
    "ask_price": st.floats(-10, 1e7) | st.text(max_size=2),
    "bid_size": st.floats(-5, 1e9, allow_nan=False), "ask_size": st.integers(-5, 10**12),
    "price": st.floats(-10, 1e7, allow_nan=False), "size": st.floats(-5, 1e9),
    "conditions": st.lists(st.integers(-3, 2**40), max_size=3) | st.none() | st.text(max_size=2),
    "exchange": st.integers(-3, 2**40) | st.none(), "id": st.text(max_size=5) | st.integers(),
}, optional={"tape": st.integers(-3, 9), "trf_timestamp": st.integers(-3, 2**62)})
rest_page = st.one_of(
    st.builds(lambda items: json.dumps({"results": items}).encode(),
              st.lists(rest_item | json_values, max_size=5)),
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.binary(max_size=200))
provenance = st.one_of(
    st.builds(lambda endpoint, ticker, complete: json.dumps({
        "vendor": "massive", "endpoint": endpoint, "ticker": ticker, "params": {}, "page": 0,
        "complete": complete, "window_start_ns": 1, "window_end_ns": 2}).encode(),
        st.sampled_from(["quotes", "trades", "nope"]),
        st.sampled_from(["SPY", "O:SPY251216C00676000", "O:BAD", "", "../x", "A" * 80]),
        st.booleans()),
    st.binary(max_size=40), st.none())


_CORRECTED_PAGE = json.dumps({"results": [
    {"sip_timestamp": 0, "sequence_number": 0, "bid_price": 0.0, "ask_price": 1.0,
     "bid_size": 0.0, "ask_size": 0},
    {"sip_timestamp": 0, "sequence_number": 0, "bid_price": 1.0, "ask_price": 0.0,
     "bid_size": 0.0, "ask_size": 0}]}).encode()
_QUOTES_PROV = json.dumps({
    "vendor": "massive", "endpoint": "quotes", "ticker": "SPY", "params": {}, "page": 0,
    "complete": False, "window_start_ns": 1, "window_end_ns": 2}).encode()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(rest_page, provenance)
@example(_CORRECTED_PAGE, _QUOTES_PROV)  # one sequence twice, other prices: a CONFLICT
def test_arbitrary_rest_pages_never_raise(raw: bytes, prov: bytes | None) -> None:
    """A REST page and its provenance header, as the backfill writes them, through the
    dataflow's whole path (feed step, routing, per-symbol state): events or dead letters
    carrying the page's bytes, never an exception."""
    headers = () if prov is None else ((H_PROVENANCE, prov),)
    out = MarketDataNormalizer().on_message(raw, RECV, source=RawSource.MASSIVE_REST.value,
                                            headers=headers)
    _check(out, raw)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    # Only a page without results (a quiet window) may give nothing.
    if not (isinstance(body, dict) and not body.get("results")):
        assert out, "a REST page became neither events nor dead letters"
