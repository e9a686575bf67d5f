"""``MarketDataNormalizer``: the whole normalization path in one object, without Kafka or
Bytewax. The dataflow runs the same pieces (``FeedState``, ``route``, ``SymbolState``) as
separate steps; this is the boundary for using them on their own."""

from __future__ import annotations

from collections.abc import Sequence

from schemas.model import CLOCK_ALERT, DEAD_LETTER, Event
from tickflow.feed import FeedState
from tickflow.health import Health
from tickflow.normalize import route
from tickflow.raw import RawRecord, RawSource
from tickflow.state import SymbolState


class MarketDataNormalizer:
    """The whole normalization path in one object, without Kafka or Bytewax.

    ``on_message`` takes raw vendor bytes as a connector received them and returns the
    ``(event type name, event)`` pairs the dataflow would publish, dead letters included.
    """

    def __init__(self) -> None:
        self._states: dict[str, SymbolState] = {}
        self._feeds: dict[str, FeedState] = {}
        self._offset = 0

    def on_message(self, raw: bytes, received_ns: int, source: str = RawSource.MASSIVE_WS.value,
                   feed: str = "stocks", headers: Sequence[tuple[str, bytes | None]] = ()
                   ) -> list[tuple[str, Event]]:
        """``headers``: what the source needs besides the bytes, as the raw topic carries it
        (a REST page's ``provenance``, a DBN chunk's ``dbn``)."""
        rec = RawRecord("in-process", 0, self._offset, None, raw, tuple(headers),
                        source=source, received_ns=received_ns, feed=feed)
        self._offset += 1
        fs = self._feeds.get(feed)
        if fs is None:
            fs = self._feeds[feed] = FeedState()
        norm = fs.process(rec)
        dlq, batches = route(rec, norm)
        out: list[tuple[str, Event]] = [(DEAD_LETTER.name, d) for d in dlq]
        out += [(CLOCK_ALERT.name, a) for a in norm.alerts]
        for b in batches:
            st = self._states.get(b.symbol)
            if st is None:
                st = self._states[b.symbol] = SymbolState(b.symbol)
            out.extend(st.process(b))
        return out

    @property
    def duplicates_filtered(self) -> int:
        """Exact duplicates dropped so far, all symbols (the per-symbol counts are on each
        DataHealth event as ``duplicates_total``; the flow exports them as a metric)."""
        return sum(st.health.duplicates_total for st in self._states.values())

    def duplicates_filtered_by_symbol(self) -> dict[str, int]:
        return {s: st.health.duplicates_total for s, st in sorted(self._states.items())}

    def health(self, symbol: str) -> Health:
        st = self._states.get(symbol)
        return st.health.state if st else Health.HEALTHY

    def all_health(self) -> dict[str, Health]:
        return {s: st.health.state for s, st in sorted(self._states.items())}
