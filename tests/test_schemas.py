"""The Avro contracts: documented, exact, encodable, and guarded against breaking changes."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import check
from schemas.model import ALL_EVENTS, BY_NAME, SCHEMA_DIR
from schemas.serde import AvroEncoder, decode, parse_confluent_header
from tickflow.normalizer import MarketDataNormalizer


def _fields(schema: Any) -> list[dict[str, Any]]:
    out = []
    if isinstance(schema, dict) and schema.get("type") == "record":
        for f in schema["fields"]:
            out.append(f)
            out += _fields(f["type"])
    elif isinstance(schema, dict) and schema.get("type") == "array":
        out += _fields(schema["items"])
    elif isinstance(schema, list):
        for t in schema:
            out += _fields(t)
    return out


@pytest.mark.parametrize("et", ALL_EVENTS, ids=lambda e: e.name)
def test_every_field_is_documented(et: Any) -> None:
    assert et.schema.get("doc")
    for f in _fields(et.schema):
        assert f.get("doc"), f"{et.name}.{f['name']} has no doc"


@pytest.mark.parametrize("et", ALL_EVENTS, ids=lambda e: e.name)
def test_prices_are_fixed_point_longs(et: Any) -> None:
    for f in _fields(et.schema):
        if f["name"].endswith("_e9"):
            t = f["type"]
            assert t == "long" or t == ["null", "long"], f"{et.name}.{f['name']}: {t}"
            assert "1e-9" in f["doc"]
        assert f["type"] not in ("float", "double"), f"{et.name}.{f['name']} is a float"


def test_one_schema_file_per_event() -> None:
    files = {p.name for p in SCHEMA_DIR.glob("*.avsc")}
    assert files == {et.schema_file for et in ALL_EVENTS}


def test_normalized_events_round_trip_through_avro() -> None:
    frame = (b'[{"ev":"Q","sym":"SPY","bp":676.25,"bs":3,"ap":676.27,"as":5,"t":1763000000123,'
             b'"q":1},{"ev":"T","sym":"SPY","p":676.26,"s":100,"c":[12],"t":1763000000124,'
             b'"q":2},{"ev":"XX"}]')
    out = MarketDataNormalizer().on_message(frame, 1_763_000_000_200_000_000)
    assert {t for t, _ in out} == {"stock_quote", "stock_trade", "dead_letter"}
    for type_name, ev in out:
        enc = AvroEncoder(BY_NAME[type_name], schema_id=42)
        data = enc.encode(ev)
        assert parse_confluent_header(data) == 42
        assert decode(BY_NAME[type_name], data) == ev
        ref = io.BytesIO()  # the hot-path encoder writes what the reference encoder writes
        fastavro.schemaless_writer(ref, fastavro.parse_schema(BY_NAME[type_name].schema), ev)
        assert data[5:] == ref.getvalue()
        assert enc.encode_many([ev, ev]) == [data, data]


def test_backward_rules_match_avro() -> None:
    base = json.loads((SCHEMA_DIR / "stock_trade.avsc").read_text())
    added_default = json.loads(json.dumps(base))
    added_default["fields"].append({"name": "venue_note", "type": ["null", "string"],
                                    "default": None, "doc": "x"})
    assert check.backward_problems(json.dumps(added_default), json.dumps(base)) == []
    added_required = json.loads(json.dumps(base))
    added_required["fields"].append({"name": "venue_note", "type": "string", "doc": "x"})
    problems = check.backward_problems(json.dumps(added_required), json.dumps(base))
    assert problems and "venue_note" in " ".join(problems)
    retyped = json.loads(json.dumps(base))
    for f in retyped["fields"]:
        if f["name"] == "size":
            f["type"] = "string"
    assert check.backward_problems(json.dumps(retyped), json.dumps(base))


def test_check_refuses_breaking_change_against_previous_commit(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "schemas").mkdir(parents=True)
    target = repo / "schemas" / "stock_trade.avsc"
    shutil.copy(SCHEMA_DIR / "stock_trade.avsc", target)

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "v1")
    schema = json.loads(target.read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "trade_id"]
    schema["fields"].append({"name": "must_have", "type": "long", "doc": "breaking"})
    target.write_text(json.dumps(schema))
    prev = check.previous_committed(target)
    assert prev is not None
    problems = check.backward_problems(target.read_text(), prev[1])
    assert any("must_have" in p for p in problems)
    # Once committed, the check still compares with the version before it.
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qam", "v2")
    prev2 = check.previous_committed(target)
    assert prev2 is not None and check.backward_problems(target.read_text(), prev2[1])


def test_project_schemas_are_backward_compatible_with_their_history() -> None:
    results = check.check_offline()
    bad = [r for r in results if not r.compatible]
    assert not bad, bad
