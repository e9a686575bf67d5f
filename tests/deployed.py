"""Running tickflow the deployed way in tests: the CLI, its defaults (every raw topic, no
TICKFLOW_RAW_TOPICS), a recovery store, pointed at a test broker, registry and simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tickflow.settings import Settings


def deployed_env(settings: Settings, simulator_port: int, api_key: str) -> dict[str, str]:
    """The environment a deployment sets, for this test's stack."""
    env = {k: v for k, v in os.environ.items() if k != "TICKFLOW_RAW_TOPICS"}
    env.update({"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
                "SCHEMA_REGISTRY_URL": settings.schema_registry_url,
                "TICKFLOW_LAKE_ROOT": str(settings.lake_root),
                "TICKFLOW_STATE_DIR": str(settings.state_dir),
                "MASSIVE_WS_HOST": f"127.0.0.1:{simulator_port}", "MASSIVE_WS_SECURE": "false",
                "MASSIVE_REST_URL": f"http://127.0.0.1:{simulator_port}",
                "MASSIVE_API_KEY": api_key})
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``tickflow <args>``, which must succeed."""
    run = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, (args, run.stderr[-3000:])
    return run


def flow_run(env: dict[str, str], recovery_dir: Path) -> None:
    """A bounded run of the dataflow as deployed (recovery snapshots every second)."""
    cli(env, "flow", "run", "--bounded", "--recovery-dir", str(recovery_dir),
        "--snapshot-secs", "1")
