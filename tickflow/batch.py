"""``SymbolBatch``: what the stateless normalization step hands to the keyed step, all the
events, rejects and loss windows of one raw record for one symbol. Carrying batches, not
single events, keeps the engine's per-item overhead off the hot path.

A leaf module (its field types are annotations only): ``tickflow.normalize`` builds batches
and ``tickflow.state`` applies them, and neither has to be imported first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schemas.model import Event
    from tickflow.normalize.base import Fill, Loss, Reject


@dataclass(slots=True)
class SymbolBatch:
    """One raw record's contribution to one symbol."""

    symbol: str
    source: str  # Avro Source symbol
    ts_recv_ns: int
    # Coordinates of the raw record this batch came from (lake file naming, lineage).
    raw_topic: str = ""
    raw_partition: int = 0
    raw_offset: int = 0
    events: list[tuple[str, Event, int]] = field(default_factory=list)  # (type, event, key)
    rejects: list[Reject] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    # The symbol is an option contract past its expiry: its state goes after this batch.
    expired: bool = False
    # False: the raw record lies below its partition's replay floor (``FeedState``): the
    # batch rebuilds state and the lake, and its output goes to no topic.
    publish: bool = True
