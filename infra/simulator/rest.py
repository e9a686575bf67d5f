"""Massive REST v3 history (``/v3/quotes/{ticker}``, ``/v3/trades/{ticker}``) over the same
seeded timeline the WebSocket streams: what the socket sent (or would have sent) at event
index i is exactly what REST returns for it, with the same sequence number."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from infra.simulator.market import MarketConfig, SyntheticMarket

MAX_LIMIT = 50_000
NS_PER_MS = 1_000_000


def rest_quote(ev: dict[str, Any]) -> dict[str, Any]:
    ts = ev["t"] * NS_PER_MS
    return {"ask_exchange": ev.get("ax"), "ask_price": ev["ap"], "ask_size": ev["as"],
            "bid_exchange": ev.get("bx"), "bid_price": ev["bp"], "bid_size": ev["bs"],
            "conditions": [ev["c"]] if ev.get("c") is not None else [],
            "indicators": ev.get("i") or [], "participant_timestamp": ts - 150_000,
            "sequence_number": ev["q"], "sip_timestamp": ts, "tape": ev.get("z")}


def rest_trade(ev: dict[str, Any]) -> dict[str, Any]:
    ts = ev["t"] * NS_PER_MS
    out = {"conditions": ev.get("c") or [], "exchange": ev.get("x"), "id": ev.get("i"),
           "participant_timestamp": ts - 120_000, "price": ev["p"],
           "sequence_number": ev["q"], "sip_timestamp": ts, "size": ev["s"],
           "tape": ev.get("z")}
    if "trfi" in ev:
        out["trf_id"] = ev["trfi"]
        out["trf_timestamp"] = ev["trft"] * NS_PER_MS
    return out


def _params(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query).items()}


def handle_rest(path_qs: str, market_cfg: MarketConfig, now_ms: int, base_url: str
                ) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one REST request (auth already checked)."""
    url = urlsplit(path_qs)
    parts = url.path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "v3" or parts[1] not in ("quotes", "trades"):
        return 404, {"status": "NOT_FOUND", "message": f"no route {url.path}"}
    kind, ticker = parts[1], parts[2]
    q = _params(url.query)
    if "cursor" in q:
        try:
            state = json.loads(base64.urlsafe_b64decode(q["cursor"].encode()))
        except ValueError:
            return 400, {"status": "ERROR", "error": "bad cursor"}
        q = state["q"]
        after = int(state["after"])
    else:
        after = -1
    try:
        limit = min(int(q.get("limit", 10)), MAX_LIMIT)
        bounds = {k: int(q[f"timestamp.{k}"]) for k in ("gte", "gt", "lte", "lt")
                  if f"timestamp.{k}" in q}
    except ValueError:
        return 400, {"status": "ERROR", "error": "limit and timestamps must be integers"}
    if limit < 1:
        return 400, {"status": "ERROR", "error": "limit must be >= 1"}
    ok: Callable[[int], bool] = lambda ts: (  # noqa: E731
        ts >= bounds.get("gte", ts) and ts > bounds.get("gt", ts - 1)
        and ts <= bounds.get("lte", ts) and ts < bounds.get("lt", ts + 1))
    feed = "options" if ticker.startswith("O:") else "stocks"
    ev_kind = "Q" if kind == "quotes" else "T"
    shape = rest_quote if kind == "quotes" else rest_trade
    m = SyntheticMarket(market_cfg)
    results: list[dict[str, Any]] = []
    more = False
    stop_ms = min(now_ms, bounds.get("lte", bounds.get("lt", 10**19)) // NS_PER_MS + 1)
    while m.now_ms() <= stop_ms:
        for ev in m.events(1000, feed):
            if ev["sym"] != ticker or ev["ev"] != ev_kind or ev["q"] <= after:
                continue
            ts = ev["t"] * NS_PER_MS
            if ev["t"] > now_ms or not ok(ts):
                continue
            if len(results) == limit:
                more = True
                break
            results.append(shape(ev))
        if more:
            break
    if q.get("order") == "desc":
        results.reverse()
    body: dict[str, Any] = {"status": "OK", "request_id": f"sim-{len(results)}",
                            "results": results}
    if more:
        cursor = base64.urlsafe_b64encode(json.dumps(
            {"q": q, "after": results[-1]["sequence_number"]}).encode()).decode()
        body["next_url"] = f"{base_url}/v3/{kind}/{ticker}?{urlencode({'cursor': cursor})}"
    return 200, body
