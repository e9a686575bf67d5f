"""Clock reconciliation: drift of a feed's exchange-vs-receipt offset raises an alert."""

from __future__ import annotations

from tickflow.feed import FeedState
from tickflow.latency import WARMUP_RECORDS, ClockMonitor
from tickflow.raw import RawRecord

MS = 1_000_000


def test_monitor_alerts_on_drift_and_recovery_once_each() -> None:
    m = ClockMonitor(threshold_ns=100 * MS)
    kinds = [m.observe(5 * MS) for _ in range(WARMUP_RECORDS + 50)]
    assert set(kinds) == {None}  # steady 5 ms: nothing to say
    kinds = [m.observe(400 * MS) for _ in range(30)]  # our clock or the vendor's jumps
    assert kinds.count("DRIFT") == 1 and "RECOVERED" not in kinds
    kinds = [m.observe(5 * MS) for _ in range(60)]
    assert kinds.count("RECOVERED") == 1


def test_no_alert_during_warmup() -> None:
    m = ClockMonitor(threshold_ns=1)
    assert all(m.observe(i * MS) is None for i in range(WARMUP_RECORDS - 1))


def test_feed_state_emits_deterministic_clock_alerts() -> None:
    def frame(i: int, latency_ms: int) -> RawRecord:
        t = 1_763_000_000_000 + i
        value = f'[{{"ev":"T","sym":"SPY","p":1.5,"s":1,"t":{t},"q":{i + 1}}}]'.encode()
        return RawRecord("raw.massive.stocks", 0, i, None, value, (), source="massive_ws",
                         received_ns=t * MS + latency_ms * MS, session_id="s",
                         frame_seq=i + 1, feed="stocks")

    def run() -> list[dict]:
        fs = FeedState(drift_threshold_ns=100 * MS)
        out = []
        for i in range(400):
            out += fs.process(frame(i, 3 if i < 300 else 600)).alerts
        return out

    alerts = run()
    assert [(a["kind"], a["feed"]) for a in alerts] == [("DRIFT", "raw.massive.stocks:0")]
    assert alerts[0]["event_id"].startswith("raw.massive.stocks:0:30")
    assert alerts[0]["offset_ns"] > alerts[0]["baseline_ns"] + 100 * MS
    assert run() == alerts  # a pure function of the raw records
