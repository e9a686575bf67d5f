"""A Massive-compatible market simulator: a seeded synthetic market behind Massive's
WebSocket protocol, with switchable faults. See ``market.py`` and ``server.py``."""

from infra.simulator.market import MarketConfig, SyntheticMarket
from infra.simulator.server import Faults, SimulatorConfig, SimulatorServer

__all__ = ["Faults", "MarketConfig", "SimulatorConfig", "SimulatorServer", "SyntheticMarket"]
