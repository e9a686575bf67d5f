"""The embedded schema registry as a real process, driven through confluent-kafka's own client."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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

from infra.procs import free_port
from infra.registry import RegistryServer, registry_process

HOST = "127.0.0.1"
V1: dict[str, Any] = {"type": "record", "name": "Trade", "namespace": "t", "fields": [
    {"name": "symbol", "type": "string"}, {"name": "price_e9", "type": "long"}]}
VENUE = {"name": "venue", "type": ["null", "string"], "default": None}
_names = itertools.count()


def avro(schema: dict[str, Any], *extra: dict[str, Any], drop: str = "") -> Schema:
    """``schema`` with fields appended (or one dropped), as a client Schema."""
    s = json.loads(json.dumps(schema))
    s["fields"] = [f for f in s["fields"] if f["name"] != drop] + list(extra)
    return Schema(json.dumps(s), "AVRO")


def retyped(schema: dict[str, Any], name: str, new_type: str) -> Schema:
    s = json.loads(json.dumps(schema))
    for f in s["fields"]:
        if f["name"] == name:
            f["type"] = new_type
    return Schema(json.dumps(s), "AVRO")


class Registry:
    """One registry process on an ephemeral loopback port over ``data_dir``."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc = registry_process(HOST, self.port, data_dir, log)

    def client(self) -> SchemaRegistryClient:
        # A fresh client each time, so no client-side cache can hide what the server answers.
        return SchemaRegistryClient({"url": self.url})


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    d = tmp_path_factory.mktemp("registry")
    r = Registry(d / "data", d / "registry.log")
    with r.proc:
        yield r


@pytest.fixture
def subject() -> str:
    """A subject no other test uses (the module shares one registry)."""
    return f"s{next(_names)}-value"


def error(call: Any, *args: Any, **kwargs: Any) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as e:
        call(*args, **kwargs)
    return e.value


def test_register_lookup_and_versions(reg: Registry, subject: str) -> None:
    c = reg.client()
    sid = c.register_schema(subject, avro(V1))
    assert reg.client().register_schema(subject, avro(V1)) == sid  # idempotent
    assert json.loads(reg.client().get_schema(sid).schema_str) == V1
    latest = c.get_latest_version(subject)
    assert (latest.schema_id, latest.version, latest.subject) == (sid, 1, subject)
    assert c.get_version(subject, 1).schema_id == sid
    found = c.lookup_schema(subject, avro(V1))
    assert (found.schema_id, found.version) == (sid, 1)
    assert subject in c.get_subjects()
    v2 = c.register_schema(subject, avro(V1, VENUE))
    assert v2 != sid and c.get_versions(subject) == [1, 2]
    assert reg.client().get_latest_version(subject).schema_id == v2
    assert reg.client().get_version(subject, 1).schema_id == sid


def test_same_schema_in_two_subjects_shares_the_id(reg: Registry, subject: str) -> None:
    c = reg.client()
    other = subject.replace("-value", "-key")
    sid = c.register_schema(subject, avro(V1, {"name": "shared", "type": "int", "default": 0}))
    # Formatting differs, the schema does not: still the same global id.
    same = json.dumps(json.loads(avro(V1, {"name": "shared", "type": "int", "default": 0})
                                 .schema_str), indent=2)
    assert c.register_schema(other, Schema(same, "AVRO")) == sid
    assert sorted(c.get_subjects_by_schema_id(sid)) == sorted([subject, other])
    assert c.get_latest_version(other).version == 1


def test_unknown_id_subject_and_version_are_404(reg: Registry, subject: str) -> None:
    c = reg.client()
    e = error(c.get_schema, 999_999)
    assert (e.http_status_code, e.error_code) == (404, 40403)
    e = error(c.get_latest_version, "no-such-subject")
    assert (e.http_status_code, e.error_code) == (404, 40401)
    c.register_schema(subject, avro(V1))
    e = error(c.get_version, subject, 7)
    assert (e.http_status_code, e.error_code) == (404, 40402)


def test_invalid_schema_is_422(reg: Registry, subject: str) -> None:
    c = reg.client()
    bad = '{"type": "record", "name": "X", "fields": [{"name": 1, "type": "int"}]}'
    e = error(c.register_schema, subject, Schema(bad, "AVRO"))
    assert (e.http_status_code, e.error_code) == (422, 42201)
    # avro.schema.parse accepts a default of the wrong type; the registry must not.
    e = error(c.register_schema, subject, avro(V1, {"name": "n", "type": "int", "default": "x"}))
    assert (e.http_status_code, e.error_code) == (422, 42201) and "'n'" in e.error_message
    # Plain JSON clients work as well as the vnd.schemaregistry content type.
    r = httpx.post(f"{reg.url}/subjects/{subject}/versions", json={"schema": "not json"})
    assert r.status_code == 422 and r.json()["error_code"] == 42201


def test_backward_evolution_accepted_and_breaking_changes_refused(reg: Registry,
                                                                  subject: str) -> None:
    c = reg.client()
    c.register_schema(subject, avro(V1))
    c.register_schema(subject, avro(V1, VENUE))  # new field with a default
    assert c.get_latest_version(subject).version == 2

    # Adding a field without a default: the new reader cannot read old data.
    e = error(c.register_schema, subject, avro(V1, VENUE, {"name": "size", "type": "long"}))
    assert (e.http_status_code, e.error_code) == (409, 409)
    msg = e.error_message
    assert f"'{subject}'" in msg and "BACKWARD" in msg and "version 2" in msg
    assert "READER_FIELD_MISSING_DEFAULT_VALUE" in msg and "field 'size'" in msg

    # Changing a field's type string -> int.
    e = error(c.register_schema, subject, retyped({**V1, "fields": V1["fields"] + [VENUE]},
                                                  "symbol", "int"))
    assert e.http_status_code == 409
    assert "TYPE_MISMATCH" in e.error_message and "field 'symbol'" in e.error_message
    assert c.get_versions(subject) == [1, 2]

    # Removing a field is BACKWARD-compatible: the new reader ignores it in old data.
    c.register_schema(subject, avro(V1, VENUE, drop="price_e9"))
    assert c.get_versions(subject) == [1, 2, 3]


def test_compatibility_endpoints(reg: Registry, subject: str) -> None:
    c = reg.client()
    c.register_schema(subject, avro(V1))
    breaking = avro(V1, {"name": "size", "type": "long"})
    assert c.test_compatibility(subject, avro(V1, VENUE)) is True
    assert c.test_compatibility(subject, breaking) is False
    assert c.test_compatibility(subject, breaking, version=1) is False
    assert c.test_compatibility_all_versions(subject, breaking) is False
    # The client formats verbose=True with a capital T; messages must still come back.
    r = httpx.post(f"{reg.url}/compatibility/subjects/{subject}/versions/latest?verbose=True",
                   json=breaking.to_dict())
    body = r.json()
    assert body["is_compatible"] is False and "field 'size'" in body["messages"][0]
    e = error(c.test_compatibility, "no-such-subject", breaking)
    assert (e.http_status_code, e.error_code) == (404, 40401)


def test_forward_and_full_transitive(reg: Registry, subject: str) -> None:
    c = reg.client()
    c.set_config(subject, ServerConfig(compatibility=ConfigCompatibilityLevel.FORWARD))
    c.register_schema(subject, avro(V1))
    # FORWARD: the old reader must read new data, so a required field cannot go away...
    e = error(c.register_schema, subject, avro(V1, drop="price_e9"))
    assert e.http_status_code == 409 and "FORWARD vs version 1" in e.error_message
    # ...but a new required field can be added.
    c.register_schema(subject, avro(V1, {"name": "size", "type": "long"}))

    other = subject.replace("-value", "-full")
    c.set_config(other, ServerConfig(compatibility=ConfigCompatibilityLevel.FULL_TRANSITIVE))
    c.register_schema(other, avro(V1))
    c.register_schema(other, avro(V1, {"name": "x", "type": "int", "default": 0}))
    # Dropping the defaulted field again is fine against v2 and v1 alike...
    assert c.test_compatibility_all_versions(other, avro(V1)) is True
    # ...but x as a string breaks against v2 only: transitive still refuses.
    e = error(c.register_schema, other, avro(V1, {"name": "x", "type": "string", "default": ""}))
    assert e.http_status_code == 409 and "version 2" in e.error_message


def test_subject_config_overrides_global(reg: Registry, subject: str) -> None:
    c = reg.client()
    assert c.get_config().compatibility_level == ConfigCompatibilityLevel.BACKWARD
    e = error(c.get_config, subject)
    assert (e.http_status_code, e.error_code) == (404, 40408)
    r = httpx.get(f"{reg.url}/config/{subject}", params={"defaultToGlobal": "true"})
    assert r.json()["compatibilityLevel"] == "BACKWARD"

    c.register_schema(subject, avro(V1))
    c.set_config(subject, ServerConfig(compatibility=ConfigCompatibilityLevel.NONE))
    assert c.get_config(subject).compatibility_level == ConfigCompatibilityLevel.NONE
    c.register_schema(subject, retyped(V1, "symbol", "int"))  # breaking, but NONE here
    assert c.get_latest_version(subject).version == 2
    assert c.get_compatibility() == "BACKWARD"  # the global level is untouched

    c.delete_config(subject)
    e = error(c.register_schema, subject, retyped(V1, "price_e9", "string"))
    assert e.http_status_code == 409

    try:  # the global level itself, put back for the other tests sharing this registry
        assert c.set_compatibility(level="full") == {"compatibility": "FULL"}
        assert c.get_config().compatibility_level == ConfigCompatibilityLevel.FULL
        e = error(c.set_config, None, ServerConfig(compatibility_group="x"))
        assert (e.http_status_code, e.error_code) == (422, 42203)
    finally:
        c.delete_config()
    assert c.get_compatibility() == "BACKWARD"


def test_deletes(reg: Registry, subject: str) -> None:
    c = reg.client()
    sid = c.register_schema(subject, avro(V1))
    c.register_schema(subject, avro(V1, VENUE))
    e = error(c.delete_version, subject, 2, permanent=True)  # must be soft-deleted first
    assert (e.http_status_code, e.error_code) == (404, 40407)
    assert c.delete_version(subject, 2) == 2
    assert c.get_versions(subject) == [1]
    assert c.get_versions(subject, deleted=True) == [1, 2]
    assert c.delete_version(subject, 2, permanent=True) == 2
    assert c.get_versions(subject, deleted=True) == [1]

    e = error(c.delete_subject, subject, permanent=True)  # must be soft-deleted first
    assert (e.http_status_code, e.error_code) == (404, 40405)
    assert c.delete_subject(subject) == [1]
    assert subject not in c.get_subjects() and subject in c.get_subjects(deleted=True)
    assert (error(reg.client().get_latest_version, subject).error_code) == 40401
    # The deserializer's migration path looks schemas up including soft-deleted versions.
    assert reg.client().lookup_schema(subject, avro(V1), deleted=True).schema_id == sid
    assert c.get_schema(sid) is not None  # old data stays readable by id

    assert c.delete_subject(subject, permanent=True) == [1]
    assert subject not in c.get_subjects(deleted=True)
    e = error(c.delete_subject, subject)
    assert (e.http_status_code, e.error_code) == (404, 40401)
    # Registering again starts the subject afresh; the global id of the schema is kept.
    assert c.register_schema(subject, avro(V1)) == sid


def test_subject_names_are_url_encoded(reg: Registry) -> None:
    c = reg.client()
    name = "market/stocks quotes+value"
    sid = c.register_schema(name, avro(V1))
    assert c.get_latest_version(name).schema_id == sid and name in c.get_subjects()


def test_serializer_round_trip(reg: Registry, subject: str) -> None:
    topic = subject.removesuffix("-value")
    ctx = SerializationContext(topic, MessageField.VALUE)
    record = {"symbol": "SPY", "price_e9": 676_250_000_000}
    data = AvroSerializer(reg.client(), json.dumps(V1))(record, ctx)
    assert data is not None and data[:1] == b"\x00"  # Confluent wire format: magic, id, body
    sid = reg.client().get_latest_version(f"{topic}-value").schema_id
    assert int.from_bytes(data[1:5], "big") == sid
    assert AvroDeserializer(reg.client())(data, ctx) == record


def test_ids_stable_across_restart(tmp_path: Path) -> None:
    r = Registry(tmp_path / "data", tmp_path / "registry.log")
    with r.proc:
        c = r.client()
        ids = [c.register_schema(f"r{i}-value", avro(V1, {"name": f"f{i}", "type": "int",
                                                          "default": i})) for i in range(3)]
        v2 = c.register_schema("r0-value", avro(V1, {"name": "f0", "type": "int", "default": 0},
                                                VENUE))
        r.proc.stop()
        assert r.proc.proc is not None and r.proc.proc.returncode == 0  # SIGTERM ends it cleanly
        r.proc.start()
        c = r.client()
        assert [c.get_version(f"r{i}-value", 1).schema_id for i in range(3)] == ids
        latest = c.get_latest_version("r0-value")
        assert (latest.schema_id, latest.version) == (v2, 2)
        new = c.register_schema("new-value", avro(V1, {"name": "z", "type": "int", "default": 0}))
        assert new not in [*ids, v2]


def test_in_process_server(tmp_path: Path) -> None:
    with RegistryServer(HOST, 0, tmp_path) as server:
        c = SchemaRegistryClient({"url": server.url})
        assert c.get_schema_types() == ["AVRO"]
        assert c.register_schema("x-value", avro(V1)) == 1
