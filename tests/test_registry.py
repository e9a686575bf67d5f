"""The embedded schema registry, driven through confluent-kafka's own client over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    ServerConfig,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from infra.procs import ManagedProcess, free_port, python_module_argv

V1 = {"type": "record", "name": "Trade", "namespace": "t", "fields": [
    {"name": "symbol", "type": "string"}, {"name": "price_e9", "type": "long"}]}


def with_field(base: dict, field: dict) -> str:
    s = json.loads(json.dumps(base))
    s["fields"].append(field)
    return json.dumps(s)


class Registry:
    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.proc = ManagedProcess("registry", python_module_argv(
            "infra.registry", "--port", str(self.port), "--data-dir", str(data_dir)),
            "127.0.0.1", self.port, log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> SchemaRegistryClient:
        # A fresh client each time: no cached ids can hide what the server answers.
        return SchemaRegistryClient({"url": self.url})


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path / "data", tmp_path / "registry.log")
    with r.proc:
        yield r


def test_register_lookup_and_versions(reg: Registry) -> None:
    c = reg.client()
    sid = c.register_schema("trades-value", Schema(json.dumps(V1), "AVRO"))
    assert c.register_schema("trades-value", Schema(json.dumps(V1), "AVRO")) == sid  # idempotent
    assert json.loads(c.get_schema(sid).schema_str) == V1
    latest = c.get_latest_version("trades-value")
    assert (latest.schema_id, latest.version) == (sid, 1)
    assert c.get_version("trades-value", 1).schema_id == sid
    assert c.lookup_schema("trades-value", Schema(json.dumps(V1), "AVRO")).version == 1
    assert c.get_subjects() == ["trades-value"]
    # The same schema under another subject shares the global id.
    assert c.register_schema("other-value", Schema(json.dumps(V1), "AVRO")) == sid
    with pytest.raises(SchemaRegistryError) as e:
        c.get_schema(999)
    assert e.value.http_status_code == 404


def test_ids_are_stable_across_restart(reg: Registry) -> None:
    c = reg.client()
    ids = [c.register_schema(f"s{i}-value", Schema(with_field(V1, {
        "name": f"f{i}", "type": "int", "default": i}), "AVRO")) for i in range(3)]
    reg.proc.stop()
    reg.proc.start()
    c2 = reg.client()
    assert [c2.get_latest_version(f"s{i}-value").schema_id for i in range(3)] == ids
    new = c2.register_schema("new-value", Schema(with_field(V1, {"name": "z", "type": "int",
                                                                 "default": 0}), "AVRO"))
    assert new not in ids


def test_backward_evolution_accepted_and_breaking_refused(reg: Registry) -> None:
    c = reg.client()
    c.register_schema("trades-value", Schema(json.dumps(V1), "AVRO"))
    v2 = with_field(V1, {"name": "venue", "type": ["null", "string"], "default": None})
    c.register_schema("trades-value", Schema(v2, "AVRO"))
    assert c.get_latest_version("trades-value").version == 2

    no_default = with_field(json.loads(v2), {"name": "size", "type": "long"})
    with pytest.raises(SchemaRegistryError) as e:
        c.register_schema("trades-value", Schema(no_default, "AVRO"))
    assert e.value.http_status_code == 409
    assert "incompatible" in e.value.error_message and "size" in e.value.error_message

    retyped = json.loads(v2)
    retyped["fields"][1]["type"] = "string"
    with pytest.raises(SchemaRegistryError) as e:
        c.register_schema("trades-value", Schema(json.dumps(retyped), "AVRO"))
    assert e.value.http_status_code == 409 and "price_e9" in e.value.error_message
    assert c.get_versions("trades-value") == [1, 2]

    assert c.test_compatibility("trades-value", Schema(no_default, "AVRO")) is False
    assert c.test_compatibility("trades-value", Schema(v2, "AVRO")) is True


def test_subject_config_overrides_global(reg: Registry) -> None:
    c = reg.client()
    assert c.get_config().compatibility_level.value == "BACKWARD"
    c.register_schema("free-value", Schema(json.dumps(V1), "AVRO"))
    c.set_config(subject_name="free-value",
                 config=ServerConfig(compatibility=ConfigCompatibilityLevel.NONE))
    assert c.get_config("free-value").compatibility_level.value == "NONE"
    other = {"type": "record", "name": "X", "fields": [{"name": "a", "type": "int"}]}
    c.register_schema("free-value", Schema(json.dumps(other), "AVRO"))
    assert c.get_latest_version("free-value").version == 2


def test_deletes(reg: Registry) -> None:
    c = reg.client()
    c.register_schema("d-value", Schema(json.dumps(V1), "AVRO"))
    c.register_schema("d-value", Schema(with_field(V1, {"name": "x", "type": "int",
                                                        "default": 0}), "AVRO"))
    assert c.delete_version("d-value", 2) == 2
    assert c.get_versions("d-value") == [1]
    with pytest.raises(SchemaRegistryError) as e:
        c.delete_subject("d-value", permanent=True)  # must soft-delete first
    assert e.value.http_status_code == 409
    assert c.delete_subject("d-value") == [1]
    assert "d-value" not in c.get_subjects()
    assert c.delete_subject("d-value", permanent=True) == [1, 2]
    with pytest.raises(SchemaRegistryError) as e:
        c.get_latest_version("d-value")
    assert e.value.http_status_code == 404


def test_invalid_schema_is_422(reg: Registry) -> None:
    r = httpx.post(f"{reg.url}/subjects/bad-value/versions",
                   json={"schema": '{"type": "record", "name": "X", "fields": [{"name": 1}]}'})
    assert r.status_code == 422 and r.json()["error_code"] == 42201


def test_serializer_round_trip(reg: Registry) -> None:
    client = reg.client()
    ctx = SerializationContext("trades", MessageField.VALUE)
    ser = AvroSerializer(client, json.dumps(V1))
    data = ser({"symbol": "SPY", "price_e9": 676_250_000_000}, ctx)
    assert data[:1] == b"\x00"
    assert AvroDeserializer(reg.client())(data, ctx) == {"symbol": "SPY",
                                                         "price_e9": 676_250_000_000}
