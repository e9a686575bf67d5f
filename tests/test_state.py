"""Dedup, DataHealth and the per-symbol state, without Kafka or Bytewax."""

from __future__ import annotations

import copy
import json
import pickle
import random
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tickflow.dedup import CONFLICT, DUPLICATE, NEW, OLDER, SequenceWindow
from tickflow.health import ALLOWED, Health, HealthTracker, open_gap_windows
from tickflow.normalize.base import Fill, Loss, Reject
from tickflow.state import SymbolBatch, SymbolState

S = 1_000_000_000


def quote(seq: int, ts: int) -> tuple[str, dict, int]:
    return ("stock_quote", {"event_id": f"SPY|{ts}|{seq}", "symbol": "SPY", "sequence": seq,
                            "ts_event_ns": ts, "ts_recv_ns": ts, "latency_ns": 0,
                            "source": "MASSIVE_WS"}, seq)


def batch(*events: tuple[str, dict, int], **kw: object) -> SymbolBatch:
    return SymbolBatch("SPY", "MASSIVE_WS", 0, events=list(events), **kw)  # type: ignore[arg-type]


def test_window_drops_exact_duplicates_and_keeps_out_of_order_events() -> None:
    w = SequenceWindow(window_ns=10 * S)
    assert [w.seen(s, s * S // 10) for s in (1, 5, 9)] == [NEW, NEW, NEW]
    assert w.seen(5, S // 2) == DUPLICATE          # duplicate
    assert w.seen(7, 7 * S // 10) == NEW    # late but new: kept
    assert w.seen(7, 7 * S // 10) == DUPLICATE


def test_window_state_is_bounded_by_event_time() -> None:
    w = SequenceWindow(window_ns=1 * S)
    sizes = []
    for i in range(50_000):  # 10x the window at 1000 events per second of event time
        w.seen(i * 3, i * S // 1000)
        if i % 5_000 == 0:
            sizes.append(len(w))
    # A window of entries, plus at most an eighth of one awaiting a chunked prune: flat.
    bound = 1001 + 1000 // 8
    assert all(1000 <= n <= bound for n in sizes[1:]), sizes
    assert len(w) <= bound


def test_window_cap_bounds_bursts_and_prunes_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    prunes = 0
    prune = SequenceWindow._prune

    def counted(self: SequenceWindow) -> None:
        nonlocal prunes
        prunes += 1
        prune(self)

    monkeypatch.setattr(SequenceWindow, "_prune", counted)
    w = SequenceWindow(window_ns=10**18, max_entries=800)
    sizes = []
    for i in range(20_000):
        w.seen(i, 0)
        sizes.append(len(w))
    # The cap and at most an eighth of it awaiting a chunked prune, which keeps the newest.
    assert max(sizes) == 900 and min(sizes[900:]) == 800
    assert list(w.seqs) == list(range(20_000 - len(w), 20_000))
    # Each prune removes an eighth of the cap, not one entry: deleting from the head of
    # the arrays moves all the rest, and doing that per event made a hot symbol O(cap).
    assert prunes <= 20_000 // 100
    assert w.seen(19_999, 0) == DUPLICATE and w.seen(20_000 - len(w), 0) == DUPLICATE


def test_state_counts_duplicates_per_source() -> None:
    st = SymbolState("SPY")
    out = st.process(batch(quote(1, S), quote(2, 2 * S)))
    assert [t for t, _ in out] == ["stock_quote", "stock_quote"]
    rest = SymbolBatch("SPY", "MASSIVE_REST", 0, events=[quote(2, 2 * S), quote(3, 3 * S)])
    out = st.process(rest)
    assert [e["sequence"] for _, e in out] == [3]
    assert st.health.duplicates_total == 1 and st.dup_by_source == {"MASSIVE_REST": 1}


def test_loss_window_then_backfill_returns_to_healthy() -> None:
    st = SymbolState("SPY")
    out = st.process(batch(losses=[Loss("SPY", S, 3 * S, "disconnect")]))
    assert out[0][1]["to_state"] == "GAP_DETECTED"
    [t] = st.health.backfilled(S, 3 * S, "MASSIVE_REST", 3 * S, 4 * S)
    assert t["to_state"] == "HEALTHY" and t["reason_code"] == "BACKFILLED"


def test_a_gap_while_corrupted_is_an_event_and_holds_healthy_back_until_filled() -> None:
    st = SymbolState("SPY")
    st.health.recovery_events = 2
    out = st.process(batch(quote(1, S), rejects=[Reject("BAD_VALUE", "neg price", "SPY", 0, S)]))
    assert [e["to_state"] for _, e in out if "to_state" in e] == ["CORRUPTED", "RECOVERING"]
    # The loss window arrives while RECOVERING: no transition, but an event with its window.
    out = st.process(batch(losses=[Loss("SPY", 5 * S, 6 * S, "disconnect")]))
    [(_, rec)] = out
    assert (rec["from_state"], rec["to_state"], rec["reason_code"]) == (
        "RECOVERING", "RECOVERING", "LOSS_WINDOW")
    assert (rec["window_start_ns"], rec["window_end_ns"]) == (5 * S, 6 * S)
    # Enough valid data to recover, but the gap is open: never HEALTHY with a hole.
    out = st.process(batch(quote(2, 7 * S), quote(3, 8 * S), quote(4, 9 * S)))
    assert not [e for t, e in out if t == "data_health"]
    assert st.health.state == "RECOVERING"
    events = [rec]
    # A backfill of quotes alone does not close a stock gap; quotes and trades do.
    for kind in ("quotes", "trades"):
        fill = SymbolBatch("SPY", "MASSIVE_REST", 10 * S, fills=[Fill("SPY", 4 * S, 7 * S, kind)])
        events += [e for _, e in st.process(fill)]
    [done] = events[1:]
    assert (done["from_state"], done["to_state"], done["reason_code"]) == (
        "RECOVERING", "HEALTHY", "BACKFILLED")
    assert open_gap_windows([rec]) == {"SPY": [(5 * S, 6 * S)]}
    assert open_gap_windows(events) == {}


def test_each_gap_is_visible_and_filled_by_its_own_window() -> None:
    h = HealthTracker("SPY")
    a = h.gap("LOSS_WINDOW", "x", "MASSIVE_WS", S, 2 * S, 2 * S, 2 * S)
    b = h.gap("LOSS_WINDOW", "y", "MASSIVE_WS", 5 * S, 6 * S, 6 * S, 6 * S)
    assert a is not None and b is not None
    assert (b["from_state"], b["to_state"]) == ("GAP_DETECTED", "GAP_DETECTED")
    assert open_gap_windows([a, b]) == {"SPY": [(S, 2 * S), (5 * S, 6 * S)]}
    # A fill of the second window closes it alone: a record, the symbol stays degraded.
    [f] = h.backfilled(4 * S, 7 * S, "MASSIVE_REST", 7 * S, 8 * S)
    assert (f["to_state"], f["reason_code"]) == ("GAP_DETECTED", "GAP_FILLED")
    assert open_gap_windows([a, b, f]) == {"SPY": [(S, 2 * S)]}
    [g] = h.backfilled(0, 3 * S, "MASSIVE_REST", 3 * S, 9 * S)
    assert (g["to_state"], g["reason_code"]) == ("HEALTHY", "BACKFILLED")
    assert open_gap_windows([a, b, f, g]) == {}
    assert len({e["event_id"] for e in (a, b, f, g)}) == 4


def test_corruption_recovers_after_enough_valid_events() -> None:
    st = SymbolState("SPY")
    st.health.recovery_events = 3
    out = st.process(batch(quote(1, S), rejects=[Reject("BAD_VALUE", "neg price", "SPY", 0, S)]))
    states = [e["to_state"] for t, e in out if t == "data_health"]
    assert states == ["CORRUPTED", "RECOVERING"]
    out = st.process(batch(quote(2, 2 * S), quote(3, 3 * S), quote(4, 4 * S)))
    assert [e["to_state"] for t, e in out if t == "data_health"] == ["HEALTHY"]


def test_unknown_event_type_is_not_corruption() -> None:
    st = SymbolState("SPY")
    out = st.process(batch(rejects=[Reject("UNKNOWN_EVENT", "ev=XX", "SPY", 0, S)]))
    assert out == [] and st.health.state == Health.HEALTHY


def test_time_regression_beyond_tolerance_is_corruption() -> None:
    st = SymbolState("SPY", tolerance_ns=5 * S)
    st.process(batch(quote(1, 100 * S)))
    out = st.process(batch(quote(2, 99 * S)))  # within tolerance: nothing to report
    assert all(t != "data_health" for t, _ in out)
    assert st.health.out_of_order_total == 0  # the sequence still went up: not disorder
    out = st.process(batch(quote(3, 90 * S)))
    assert next(e["reason_code"] for t, e in out if t == "data_health") == "TIME_REGRESSION"


def test_sequence_regression_is_counted_disorder_not_a_transition() -> None:
    st = SymbolState("SPY")
    st.process(batch(quote(10, 100 * S)))
    out = st.process(batch(quote(7, 100 * S), quote(8, 100 * S)))  # late, never seen before
    assert [e["sequence"] for t, e in out if t == "stock_quote"] == [7, 8]  # kept
    assert st.health.out_of_order_total == 2 and st.health.state == Health.HEALTHY
    out = st.process(batch(quote(8, 100 * S)))  # a duplicate is not disorder as well
    assert out == [] and st.health.out_of_order_total == 2
    assert st.health.duplicates_total == 1
    gap = st.health.gap("FRAME_GAP", "lost", "MASSIVE_WS", 0, S, S, S)
    assert gap is not None and gap["out_of_order_total"] == 2  # the count rides on transitions


def test_illegal_transitions_are_refused() -> None:
    h = HealthTracker("X")
    h.state = Health.CORRUPTED
    assert Health.HEALTHY not in ALLOWED[Health.CORRUPTED]
    with pytest.raises(AssertionError):
        h._move(Health.HEALTHY, "X", "x", "MASSIVE_WS", 0, 0, None)


def test_state_survives_deepcopy_like_a_snapshot() -> None:
    st = SymbolState("SPY")
    st.process(batch(quote(1, S), quote(2, 2 * S)))
    snap = copy.deepcopy(st)
    assert [e["sequence"] for _, e in snap.process(batch(quote(2, 2 * S), quote(3, 3 * S)))] == [3]


def test_crossed_beyond_tolerance_is_corruption_but_a_small_cross_is_only_flagged() -> None:
    def q(seq: int, bid: int, ask: int) -> tuple[str, dict, int]:
        t, ev, k = quote(seq, seq * S)
        ev.update(bid_px_e9=bid, ask_px_e9=ask, spread_state="CROSSED")
        return t, ev, k

    st = SymbolState("SPY")
    out = st.process(batch(q(1, 100_010_000_000, 100_000_000_000)))  # 0.01 %: flagged only
    assert [t for t, _ in out] == ["stock_quote"]
    out = st.process(batch(q(2, 103_000_000_000, 100_000_000_000)))  # 3 %: impossible
    assert [e["reason_code"] for t, e in out if t == "data_health"] == ["CROSSED_MARKET"]


def trade_ev(seq: int, ts: int, price: int, source: str = "MASSIVE_WS") -> tuple[str, dict, int]:
    return ("stock_trade", {"event_id": f"SPY|T|d|{seq}", "symbol": "SPY", "sequence": seq,
                            "ts_event_ns": ts, "ts_recv_ns": ts, "latency_ns": 0,
                            "source": source, "price_e9": price, "size": 100, "exchange": 4,
                            "trade_id": str(seq)}, seq)


def test_same_identity_other_payload_is_a_conflict_never_a_silent_drop() -> None:
    st = SymbolState("SPY")
    st.process(batch(trade_ev(1, S, 100), trade_ev(2, 2 * S, 101),
                     *(trade_ev(s, s * S, 100) for s in range(3, 21))))
    # Twice on one feed: the exact repeat is dropped, the changed price is surfaced.
    out = st.process(batch(trade_ev(2, 2 * S, 101), trade_ev(1, S, 999)))
    assert [t for t, _ in out] == ["dead_letter"]
    [(_, dl)] = out
    assert dl["reason_code"] == "CONFLICT" and "SPY|T|d|1" in dl["reason"]
    assert json.loads(dl["raw_value"])["event"]["price_e9"] == 999
    assert st.health.duplicates_total == 1 and st.health.conflicts_total == 1
    # The same on WebSocket then REST, hours later (outside the recent window).
    late = SymbolBatch("SPY", "MASSIVE_REST", 0, events=[
        trade_ev(1, S, 999, "MASSIVE_REST"), trade_ev(2, 2 * S, 101, "MASSIVE_REST"),
        trade_ev(12, 12 * S, 555, "MASSIVE_REST")])
    st.process(batch(trade_ev(3, 3 * 3600 * S, 102)))  # the live feed moved on
    out = st.process(late)
    assert [e["reason_code"] for t, e in out if t == "dead_letter"] == ["CONFLICT"]
    assert st.health.conflicts_total == 2 and st.health.duplicates_total == 3
    # seq 12 lies deep inside what the live feed published (no loss near it): dropped by
    # identity, its payload no longer known, and counted as such.
    assert st.unverified_duplicates == 1


def test_a_backfill_between_spans_merges_them_and_forgets_its_events() -> None:
    st = SymbolState("SPY")
    st.process(batch(*(trade_ev(s, s * S, 100) for s in range(1, 11))))
    st.process(batch(losses=[Loss("SPY", 10 * S, 20 * S, "disconnect")]))
    st.process(batch(*(trade_ev(s, s * S, 100) for s in range(21, 31))))
    [spans] = st.spans.values()
    assert [(s.lo, s.hi) for s in spans.spans] == [(1, 10), (21, 30)]
    rest = SymbolBatch("SPY", "MASSIVE_REST", 0, events=[
        trade_ev(s, s * S, 100, "MASSIVE_REST") for s in range(8, 24)],
        fills=[Fill("SPY", 8 * S, 23 * S, "trades")])
    out = st.process(rest)
    published = [e["sequence"] for t, e in out if t == "stock_trade"]
    assert published == list(range(11, 21))  # the lost ones, nothing of the edges
    assert [(s.lo, s.hi) for s in spans.spans] == [(1, 30)] and not len(spans.extra_seqs)
    # The same backfill again, much later: nothing twice.
    st.process(batch(trade_ev(40, 4 * 3600 * S, 100)))
    again = st.process(SymbolBatch("SPY", "MASSIVE_REST", 0, events=[
        trade_ev(s, s * S, 100, "MASSIVE_REST") for s in range(8, 24)]))
    assert not [e for t, e in again if t == "stock_trade"]
    assert st.health.conflicts_total == 0


def test_a_new_trading_day_does_not_meet_yesterdays_sequences() -> None:
    w = SequenceWindow(window_ns=10 * S)
    assert w.seen(5, S, 1) == NEW
    assert w.seen(5, 20 * 3600 * S, 2) == NEW  # hours later, sequences restarted
    assert w.seen(5, 20 * 3600 * S, 2) == DUPLICATE
    assert w.seen(5, 20 * 3600 * S, 3) == CONFLICT
    assert w.seen(4, 19 * 3600 * S, 3) == OLDER


def test_option_trade_takes_the_quote_at_or_before_its_own_event_time() -> None:
    st = SymbolState("O:SPY251216C00676000")

    def oq(seq: int, ts: int, bid: int, ask: int) -> tuple[str, dict, int]:
        return ("option_quote", {"event_id": f"q{seq}", "symbol": st.health.symbol,
                                 "sequence": seq, "ts_event_ns": ts, "ts_recv_ns": ts,
                                 "latency_ns": 0, "source": "MASSIVE_WS", "bid_px_e9": bid,
                                 "ask_px_e9": ask, "spread_state": "NORMAL"}, seq)

    def ot(seq: int, ts: int, px: int, source: str = "MASSIVE_WS") -> tuple[str, dict, int]:
        return ("option_trade", {"event_id": f"t{seq}", "symbol": st.health.symbol,
                                 "sequence": seq, "ts_event_ns": ts, "ts_recv_ns": ts,
                                 "latency_ns": 0, "source": source, "price_e9": px,
                                 "size": 1, "exchange": 1, "opt_bid_px_e9": None,
                                 "opt_ask_px_e9": None, "aggressor": "MID",
                                 "nbbo_ts_ns": None}, seq)

    st.process(batch(oq(1, 10 * S, 100, 110), oq(2, 20 * S, 200, 210),
                     oq(3, 50 * S, 300, 310)))
    # A backfilled trade of t=25 s, processed after the newer quote of t=50 s: the quote of
    # t=20 s, not the latest one.
    out = st.process(SymbolBatch(st.health.symbol, "MASSIVE_REST", 0,
                                 events=[ot(4, 25 * S, 210, "MASSIVE_REST")]))
    [(_, t)] = [o for o in out if o[0] == "option_trade"]
    assert (t["opt_bid_px_e9"], t["opt_ask_px_e9"], t["nbbo_ts_ns"], t["aggressor"]) == (
        200, 210, 20 * S, "BUY")
    # Before every quote kept: no NBBO, and the event says so. So is a trade more than the
    # 60 s kept behind the newest quote.
    out = st.process(SymbolBatch(st.health.symbol, "MASSIVE_REST", 0,
                                 events=[ot(5, 5 * S, 100, "MASSIVE_REST")]))
    [(_, t)] = [o for o in out if o[0] == "option_trade"]
    assert (t["opt_bid_px_e9"], t["nbbo_ts_ns"], t["aggressor"]) == (None, None, "MID")
    st.process(batch(oq(6, 200 * S, 400, 410)))
    out = st.process(SymbolBatch(st.health.symbol, "MASSIVE_REST", 0,
                                 events=[ot(7, 60 * S, 300, "MASSIVE_REST")]))
    [(_, t)] = [o for o in out if o[0] == "option_trade"]
    assert (t["opt_bid_px_e9"], t["nbbo_ts_ns"]) == (None, None)


def _entries(w: SequenceWindow) -> tuple[object, ...]:
    return (w.seqs, w.times, w.fps, w.max_ts, w.window_ns, w.max_entries)


@given(st.lists(st.tuples(st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1),
                          st.integers(-2**63, 2**63 - 1)), max_size=50))
def test_a_pickled_window_comes_back_exactly_whatever_its_values(
        rows: list[tuple[int, int, int]]) -> None:
    """Deltas wrap around in 64 bits: any values survive, not only rising ones."""
    w = SequenceWindow()
    w.seqs, w.times, w.fps = (array("q", col) for col in zip(*rows, strict=True)) \
        if rows else (array("q"), array("q"), array("q"))
    assert _entries(pickle.loads(pickle.dumps(w))) == _entries(w)
    c = copy.deepcopy(w)
    assert _entries(c) == _entries(w) and c.seqs is not w.seqs


def test_a_live_window_pickles_to_under_half_its_raw_size() -> None:
    """A recovery snapshot pickles every window whole each time (tickflow.dedup)."""
    rng = random.Random(7)
    w = SequenceWindow(window_ns=10**18)
    t, seq = 1_796_000_000 * S, 1_000_000
    for _ in range(100_000):
        t += rng.randint(1, 400_000)  # a busy symbol's quotes
        seq += rng.randint(1, 2)
        assert w.seen(seq, t, rng.getrandbits(63)) == NEW
    raw = 24 * len(w)
    size = len(pickle.dumps(w))
    assert len(w) == 100_000 and size < raw / 2, (size, raw)
    back = pickle.loads(pickle.dumps(w))
    assert _entries(back) == _entries(w)
    assert back.seen(w.seqs[5], w.times[5], w.fps[5]) == DUPLICATE


def test_a_window_pickled_before_packing_still_resumes() -> None:
    w = SequenceWindow(window_ns=10 * S)
    for s in (1, 5, 9):
        w.seen(s, s * S, s)
    old = SequenceWindow.__new__(SequenceWindow)
    old.__setstate__((None, {"window_ns": w.window_ns, "max_entries": w.max_entries,
                             "max_ts": w.max_ts, "seqs": w.seqs[:], "times": w.times[:],
                             "fps": w.fps[:]}))
    assert _entries(old) == _entries(w)
    assert old.seen(5, 5 * S, 5) == DUPLICATE


def test_health_snapshot_read_from_another_thread_is_of_one_instant() -> None:
    """The status server reads a tracker while the worker changes it: a snapshot must never
    pair a state of before with counts of after (seen once in CI as HEALTHY with every event
    of a run that had a gap counted)."""
    import sys
    import threading
    import time

    h = HealthTracker("SPY")
    stop = threading.Event()

    def worker() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            h.gap("FRAME_GAP", "lost", "MASSIVE_WS", i * 10, i * 10 + 5, i * 10 + 5, i * 10 + 5)
            h.valid("MASSIVE_WS", i * 10 + 6, i * 10 + 6)
            h.backfilled(i * 10, i * 10 + 5, "MASSIVE_REST", i * 10 + 7, i * 10 + 7)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: torn reads show up
    t = threading.Thread(target=worker)
    t.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(seen) < 2000:
            s = h.snapshot()
            k, tr, ev = s["gaps_total"], s["transitions"], s["events_total"]
            assert isinstance(k, int) and isinstance(tr, int) and isinstance(ev, int)
            # At every instant of the worker's loop: each gap adds a gap and a transition,
            # its event one count, its fill one transition.
            assert 2 * k - 2 <= tr <= 2 * k and k - 1 <= ev <= k, s
            # A gap's state change comes before its transition is counted; a fill's too.
            assert s["state"] == Health.HEALTHY.value or tr <= 2 * k - 1, s
            seen.add(k)
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(old)
    assert len(seen) >= 100, f"the worker moved during only {len(seen)} snapshots"
