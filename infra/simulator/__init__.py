"""A Massive-compatible market simulator: a seeded synthetic market (``market.py``) behind
Massive's WebSocket protocol and REST history (``server.py``, ``rest.py``), with switchable
faults. ``python -m infra.simulator --help`` runs it standalone."""

from infra.simulator.market import MarketConfig, OptionContract, SyntheticMarket
from infra.simulator.server import Faults, SimulatorConfig, SimulatorServer

__all__ = ["Faults", "MarketConfig", "OptionContract", "SimulatorConfig", "SimulatorServer",
           "SyntheticMarket"]
