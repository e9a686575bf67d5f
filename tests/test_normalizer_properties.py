"""Property-based: whatever bytes arrive, the normalizer boundary never raises; every input
becomes canonical events or dead letters (with its original bytes)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickflow.normalize import normalize_record
from tickflow.normalize.databento import META_ENCODER, DbnChunkMeta
from tickflow.normalizer import MarketDataNormalizer
from tickflow.raw import H_DBN, RawRecord

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
    for type_name, ev in out:
        if type_name == "dead_letter":
            assert ev["raw_value"] == raw and ev["reason_code"] and ev["reason"]


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
