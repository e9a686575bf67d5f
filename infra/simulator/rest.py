"""Massive REST v3 history (``/v3/quotes/{ticker}``, ``/v3/trades/{ticker}``) over the same
seeded timeline the WebSocket streams: the event the socket sent at index i is exactly what
REST returns for it, with the same sequence number (the cross-source dedup identity).

Time bounds map to an index range of the timeline (event time is a function of the index),
so a page costs the events scanned for it, never the history before it. The ``next_url``
cursor is opaque to clients; it carries the original parameters and where to resume.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from infra.simulator.market import SyntheticMarket

MAX_LIMIT = 50_000
DEFAULT_LIMIT = 1_000
NS_PER_MS = 1_000_000
# Events scanned per page at most, so one request never stalls the server for long: a page
# may then hold fewer results than the limit and still carry a next_url, as Massive allows.
MAX_SCAN = 400_000
_WINDOW = 4_096  # events generated per scan step


def _sip_ns(ev: dict[str, Any]) -> int:
    """The SIP time in ns: REST has the nanoseconds the WebSocket's ``t`` (ms) truncates
    (a fixed function of the event, so every request answers the same)."""
    return ev["t"] * NS_PER_MS + (ev["q"] * 7919) % NS_PER_MS


def rest_quote(ev: dict[str, Any]) -> dict[str, Any]:
    """A WebSocket quote event in the REST v3 quote layout."""
    ts = _sip_ns(ev)
    return {"ask_exchange": ev.get("ax"), "ask_price": ev["ap"], "ask_size": ev["as"],
            "bid_exchange": ev.get("bx"), "bid_price": ev["bp"], "bid_size": ev["bs"],
            "conditions": [ev["c"]] if ev.get("c") is not None else [],
            "indicators": ev.get("i") or [], "participant_timestamp": ts - 150_000,
            "sequence_number": ev["q"], "sip_timestamp": ts, "tape": ev.get("z")}


def rest_trade(ev: dict[str, Any]) -> dict[str, Any]:
    """A WebSocket trade event in the REST v3 trade layout."""
    ts = _sip_ns(ev)
    out = {"conditions": ev.get("c") or [], "exchange": ev.get("x"), "id": ev.get("i"),
           "participant_timestamp": ts - 120_000, "price": ev["p"],
           "sequence_number": ev["q"], "sip_timestamp": ts, "size": ev["s"],
           "tape": ev.get("z")}
    if "trfi" in ev:
        out["trf_id"] = ev["trfi"]
        out["trf_timestamp"] = ev["trft"] * NS_PER_MS
    return out


def _ms_bounds(q: dict[str, str], now_ms: int) -> tuple[int, int]:
    """[lo, hi] event times (ms) matching the ns timestamp filters, capped at now."""
    lo, hi = -(10**18), now_ms
    if "timestamp" in q:
        ts = int(q["timestamp"])
        lo = max(lo, -(-ts // NS_PER_MS))
        hi = min(hi, ts // NS_PER_MS)
    if "timestamp.gte" in q:
        lo = max(lo, -(-int(q["timestamp.gte"]) // NS_PER_MS))
    if "timestamp.gt" in q:
        lo = max(lo, int(q["timestamp.gt"]) // NS_PER_MS + 1)
    if "timestamp.lte" in q:
        hi = min(hi, int(q["timestamp.lte"]) // NS_PER_MS)
    if "timestamp.lt" in q:
        hi = min(hi, -(-int(q["timestamp.lt"]) // NS_PER_MS) - 1)
    return lo, hi


def handle_rest(path_qs: str, market: SyntheticMarket, now_ms: int, base_url: str
                ) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one REST request (auth already checked)."""
    url = urlsplit(path_qs)
    parts = url.path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "v3" or parts[1] not in ("quotes", "trades"):
        return 404, {"status": "NOT_FOUND", "message": f"no route {url.path}"}
    kind, ticker = parts[1], parts[2]
    q = {k: v[-1] for k, v in parse_qs(url.query).items()}
    q.pop("apiKey", None)  # the cursor below must never carry the key into next_url
    resume: int | None = None
    if "cursor" in q:
        try:
            state = json.loads(base64.urlsafe_b64decode(q["cursor"].encode()))
            q, resume = dict(state["q"]), int(state["i"])
        except (ValueError, KeyError, TypeError, binascii.Error):
            return 400, {"status": "ERROR", "error": "bad cursor"}
    try:
        limit = int(q.get("limit", DEFAULT_LIMIT))
        lo_ms, hi_ms = _ms_bounds(q, now_ms)
    except ValueError:
        return 400, {"status": "ERROR", "error": "limit and timestamps must be integers (ns)"}
    if not 1 <= limit <= MAX_LIMIT:
        return 400, {"status": "ERROR", "error": f"limit must be 1..{MAX_LIMIT}"}
    desc = q.get("order", "asc") == "desc"
    feed = "options" if ticker.startswith("O:") else "stocks"
    ev_kind = "Q" if kind == "quotes" else "T"
    shape = rest_quote if kind == "quotes" else rest_trade

    lo = market.index_at(lo_ms)
    hi = market.index_at(hi_ms + 1) if hi_ms >= lo_ms else lo  # exclusive
    if resume is not None:
        lo, hi = (lo, min(hi, resume)) if desc else (max(lo, resume), hi)
    results: list[dict[str, Any]] = []
    scanned = 0
    nxt: int | None = None  # where the next page resumes, when there is one
    while lo < hi:
        if scanned >= MAX_SCAN:
            nxt = hi if desc else lo
            break
        a, b = (max(lo, hi - _WINDOW), hi) if desc else (lo, min(hi, lo + _WINDOW))
        window = market.event_range(feed, a, b)
        pos = list(range(a, b))
        if desc:
            window.reverse()
            pos.reverse()
        for i, ev in zip(pos, window, strict=True):
            if ev["sym"] != ticker or ev["ev"] != ev_kind:
                continue
            if len(results) == limit:
                nxt = i + 1 if desc else i
                break
            results.append(shape(ev))
        if nxt is not None:
            break
        scanned += b - a
        if desc:
            hi = a
        else:
            lo = b

    body: dict[str, Any] = {"status": "OK", "request_id": f"sim-{lo:x}-{len(results)}",
                            "results": results}
    if nxt is not None:
        cursor = base64.urlsafe_b64encode(json.dumps({"q": q, "i": nxt}).encode()).decode()
        body["next_url"] = f"{base_url}/v3/{kind}/{ticker}?{urlencode({'cursor': cursor})}"
    return 200, body
