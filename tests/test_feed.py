"""Feed-level losses (lost and undecodable frames) become per-symbol gaps."""

from __future__ import annotations

from tickflow.feed import FeedState
from tickflow.normalize import route
from tickflow.raw import RawRecord, RecordKind
from tickflow.state import SymbolState

MS = 1_000_000
T0 = 1_763_000_000_000


def frame(fs: int, syms: tuple[str, ...] = ("SPY", "AAPL"), session: str = "s1",
          value: bytes | None = None) -> RawRecord:
    evs = ",".join(f'{{"ev":"T","sym":"{s}","p":1.5,"s":1,"t":{T0 + fs},"q":{fs * 10}}}'
                   for s in syms)
    return RawRecord("raw.massive.stocks", 0, fs, None, value or f"[{evs}]".encode(), (),
                     source="massive_ws", received_ns=(T0 + fs) * MS + 1, session_id=session,
                     frame_seq=fs, feed="stocks")


def run(records: list[RawRecord]) -> tuple[FeedState, dict[str, SymbolState], list[dict]]:
    feed = FeedState()
    states: dict[str, SymbolState] = {}
    health = []
    for rec in records:
        _, batches = route(rec, feed.process(rec))
        for b in batches:
            st = states.setdefault(b.symbol, SymbolState(b.symbol))
            health += [e for t, e in st.process(b) if t == "data_health"]
    return feed, states, health


def test_lost_frame_marks_every_symbol_of_the_feed_at_once() -> None:
    feed, _, health = run([frame(1), frame(2), frame(5, syms=("SPY",))])
    assert feed.frame_gaps == 1
    assert {(h["symbol"], h["reason_code"], h["to_state"]) for h in health} == {
        ("SPY", "FRAME_GAP", "GAP_DETECTED"), ("AAPL", "FRAME_GAP", "GAP_DETECTED")}
    h = health[0]
    assert (h["window_start_ns"], h["window_end_ns"]) == ((T0 + 2) * MS + 1, (T0 + 5) * MS + 1)
    assert "2 raw frame(s) lost" in h["reason"]


def session_end(fs: int, session: str = "s1") -> RawRecord:
    return RawRecord("raw.massive.stocks", 0, 100 + fs, None, b"", (), source="massive_ws",
                     kind=RecordKind.SESSION_END.value, received_ns=(T0 + fs) * MS + 2,
                     session_id=session, frame_seq=fs, feed="stocks")


def test_a_new_session_after_a_clean_close_and_repeated_frames_are_not_gaps() -> None:
    feed, _, health = run([frame(1), frame(2), frame(2), session_end(3),
                           frame(1, session="s2"), frame(2, session="s2")])
    assert feed.frame_gaps == 0 and health == []


def test_a_new_session_after_one_that_never_closed_is_a_loss_window() -> None:
    _, _, health = run([frame(1), frame(2), frame(9, session="s2"),
                           frame(2, session="s1"), frame(10, session="s2")])
    # One window per symbol, from s1's last frame to s2's first; s1's straggler (a retry
    # landing late) neither reopens nor repeats it.
    assert sorted((h["symbol"], h["reason_code"], h["window_start_ns"], h["window_end_ns"])
                  for h in health) == [
        (s, "SESSION_LOST", (T0 + 2) * MS + 1, (T0 + 9) * MS + 1) for s in ("AAPL", "SPY")]


def test_undecodable_frame_is_a_gap_for_the_feed() -> None:
    feed, _, health = run([frame(1), frame(2, value=b'[{"ev":"T","sym'), frame(3)])
    assert feed.undecodable == 1
    assert {(h["symbol"], h["reason_code"]) for h in health} == {
        ("SPY", "UNDECODABLE"), ("AAPL", "UNDECODABLE")}


def test_symbol_memory_is_bounded_by_receipt_time() -> None:
    feed = FeedState(symbol_ttl_ns=20 * MS)
    for fs in range(1, 400):  # one new symbol per millisecond of receipt time
        feed.process(frame(fs, syms=(f"S{fs}",)))
    assert 20 <= len(feed.symbols) <= 26
