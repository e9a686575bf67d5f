"""Secrets never leak: the whole demo with a canary API key and registry password, then every
log line, topic record (keys, values, headers), dead letter, lake file and error text is
searched for them."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import SchemaRegistryClient
from rich.console import Console

from app.demo import run_demo
from connectors.topicstats import read_all
from infra.registry import AUTH_ENV
from infra.stack import EmbeddedStack
from tickflow.settings import get_settings

API_KEY = "CANARYkey7f3a9"
PASSWORD = "CANARYpw51c2e"
CANARIES = (API_KEY, PASSWORD)


def leaks(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [c for c in CANARIES if c in text]


@pytest.mark.slow
def test_demo_with_canary_secrets_leaks_them_nowhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MASSIVE_API_KEY", API_KEY)
    monkeypatch.setenv(AUTH_ENV, f"tickflow:{PASSWORD}")
    monkeypatch.setenv("TICKFLOW_STATE_DIR", str(tmp_path))
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    records: list[bytes] = []
    errors: list[str] = []

    def grab(stack: EmbeddedStack) -> None:
        url = stack.registry_config()["url"]
        # The registry really demands the password...
        assert httpx.get(f"{url}/subjects").status_code == 401
        assert httpx.get(f"{url}/subjects", auth=("tickflow", PASSWORD)).status_code == 200
        # ...and a wrong one is refused without the right one (or itself) in the error.
        bad = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"tickflow:x{PASSWORD}"})
        with pytest.raises(Exception) as exc:
            bad.get_subjects()
        errors.append(f"{exc.value!r} {exc.value}")
        kconf = stack.kafka_config()
        for topic in AdminClient(kconf).list_topics(timeout=30).topics:
            for m in read_all(kconf, topic):
                records.extend([m.key() or b"", m.value() or b""])
                records.extend((v or b"") if isinstance(v, bytes) else str(v).encode()
                               for _, v in (m.headers() or []))

    out = io.StringIO()
    try:
        res = run_demo(3, 1, tmp_path, Console(file=out, width=200), inspect=grab)
    finally:
        get_settings.cache_clear()
    assert sum(res.raw_frames.values()) > 0 and len(records) > 1000  # it really ran
    assert all(s.connects >= 1 for s in res.ws_stats.values())  # authenticated with the key
    assert res.topic_counts["market.deadletter"] > 0  # dead letters are among the records

    assert not leaks(out.getvalue()), "console output"
    assert not leaks(caplog.text), "log records of this process"
    assert not [e for e in errors if leaks(e)], "error text"
    assert not [r for r in records if leaks(r)], "topic records"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".log" for p in files)
    for p in files:
        if p.suffix == ".parquet":  # compressed: search the decoded rows and metadata
            t = pq.read_table(p)
            assert not leaks(str(t.to_pylist()) + str(t.schema.metadata)), p
        else:  # process logs (broker, registry, simulator, flow), registry data, DBN files
            assert not leaks(p.read_bytes()), p
