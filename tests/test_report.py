"""``tickflow report``: the PNG is opened and its pixels checked against the data behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from bytewax.testing import run_main

from app.report import LATENCY_COLOR, STATE_COLORS, health_segments, render
from flows.normalize import build_flow
from schemas.topics import RAW_MASSIVE_STOCKS
from tests.test_flow_integration import produce_frames, standard_frames
from tickflow.settings import Settings

S = 1_000_000_000


def image(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    return (mpimg.imread(path)[..., :3] * 255).round().astype(np.uint8)


def share(img: np.ndarray, box: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> float:
    """Share of the pixels across the middle line of ``box`` that are exactly ``rgb``."""
    x0, y0, x1, y1 = box
    line = img[(y0 + y1) // 2, x0:x1]
    return float(np.all(line == np.array(rgb, dtype=np.uint8), axis=1).mean())


def count(img: np.ndarray, box: tuple[int, int, int, int], rgb: tuple[int, int, int]) -> int:
    x0, y0, x1, y1 = box
    return int(np.all(img[y0:y1, x0:x1] == np.array(rgb, dtype=np.uint8), axis=2).sum())


def tr(sym: str, ts: int, to: str, n: int) -> dict:
    return {"symbol": sym, "ts_event_ns": ts, "to_state": to, "event_id": f"{sym}|{n}"}


def test_bands_match_the_transitions_and_latency_panels_are_drawn(tmp_path: Path) -> None:
    start, end = 0, 100 * S
    transitions = [tr("SPY", 25 * S, "GAP_DETECTED", 1), tr("SPY", 50 * S, "HEALTHY", 2),
                   tr("AAPL", 60 * S, "CORRUPTED", 1), tr("AAPL", 70 * S, "RECOVERING", 2),
                   tr("AAPL", 80 * S, "HEALTHY", 3)]
    rng = np.random.default_rng(1)
    lat = {s: rng.lognormal(np.log(5e6), 0.5, 2000) for s in ("SPY", "AAPL", "QQQ")}
    out = tmp_path / "r.png"
    lay = render(out, transitions, lat, start, end, symbols=["SPY", "AAPL", "QQQ"])
    img = image(out)
    assert img.shape[:2] == (lay.height, lay.width)
    c = STATE_COLORS
    spy, aapl, qqq = lay.timeline["SPY"], lay.timeline["AAPL"], lay.timeline["QQQ"]
    assert abs(share(img, spy, c["GAP_DETECTED"]) - 0.25) < 0.03
    assert abs(share(img, spy, c["HEALTHY"]) - 0.75) < 0.03
    assert abs(share(img, aapl, c["CORRUPTED"]) - 0.10) < 0.03
    assert abs(share(img, aapl, c["RECOVERING"]) - 0.10) < 0.03
    assert share(img, qqq, c["HEALTHY"]) > 0.97
    # The gap sits where it happened: the second quarter of SPY's row.
    x0, _, x1, _ = spy
    w = x1 - x0
    assert share(img, (x0 + int(0.3 * w), spy[1], x0 + int(0.45 * w), spy[3]),
                 c["GAP_DETECTED"]) > 0.95
    for sym in ("SPY", "AAPL", "QQQ"):  # a histogram in every latency panel
        assert count(img, lay.latency[sym], LATENCY_COLOR) > 200


def test_segments_start_healthy_and_follow_transitions() -> None:
    segs = health_segments([tr("X", 5, "GAP_DETECTED", 1), tr("X", 8, "HEALTHY", 2)], 0, 10)
    assert segs == [(0, 5, "HEALTHY"), (5, 8, "GAP_DETECTED"), (8, 10, "HEALTHY")]


def test_report_command_on_a_real_run(settings: Settings, tmp_path: Path) -> None:
    produce_frames(settings.kafka_config(), standard_frames())  # frame 9 lost: SPY, AAPL gap
    run_main(build_flow(settings, [RAW_MASSIVE_STOCKS], tail=False))
    out = tmp_path / "report.png"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
           "TICKFLOW_LAKE_ROOT": str(settings.lake_root)}
    res = subprocess.run([sys.executable, "-m", "app.cli", "report", "--out", str(out)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    img = image(out)
    assert img.shape[0] > 200 and img.shape[1] > 800
    # Both symbols went GAP_DETECTED and stayed there (no backfill in this run).
    assert np.all(img == np.array(STATE_COLORS["GAP_DETECTED"], dtype=np.uint8),
                  axis=2).sum() > 1000
    assert np.all(img == np.array(LATENCY_COLOR, dtype=np.uint8), axis=2).sum() > 100
    # The lake the flow wrote passes its own integrity check.
    check = subprocess.run([sys.executable, "-m", "app.cli", "lake", "verify", "--json"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    verdict = json.loads(check.stdout)
    assert verdict["unsound"] == [] and verdict["partitions"] >= 4
