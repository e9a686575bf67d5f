# Two entry points for people: `make demo` and `make test`. Each creates or reuses .venv.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench soak clean install kafka-jars

$(STAMP): pyproject.toml setup.py schemas/_avro_writer.c tickflow/_ids.c
	@test -x $(PY) || { command -v $(PYTHON) >/dev/null && $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tickflow demo

# Apache Kafka's jars from Maven Central, once per machine (~/.m2 and a cached classpath).
kafka-jars: $(STAMP)
	@$(PY) -c "import time; t=time.monotonic(); from infra.kafka import KAFKA_VERSION, kafka_classpath; kafka_classpath(); print(f'Apache Kafka {KAFKA_VERSION} jars ready ({time.monotonic()-t:.1f} s)')"

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: $(STAMP) kafka-jars
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy tickflow flows schemas connectors infra app bench
	$(PY) -m pytest -q --durations=20; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy tickflow flows schemas connectors infra app bench

# Speed and memory targets live here, never in `make test`: core path, end to end against
# the peers (Quix Streams, plain Bytewax, a broker passthrough), DBN -> Parquet, latency,
# scaling, replay memory and the dedup/health state size.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	$(PY) -m bench
	$(PY) -m bench.e2e
	$(PY) -m bench.dbn_parquet
	$(PY) -m bench.dbn_profile
	$(PY) -m bench.latency --seconds 420
	$(PY) -m bench.snapshot_profile
	$(PY) -m bench.scaling
	$(PY) -m bench.scaling --skip-layouts --size-processes 1 --out bench/results-scaling-1p.json
	$(PY) -m bench.scaling --skip-layouts --rounds 0 --long 256 --out bench/results-scaling-long.json
	$(PY) -m bench.hot_feed
	$(PY) -m bench.dbn_memory --gb 2
	$(PY) -m bench.replay_mix
	$(PY) -m bench.state_size
	$(PY) -m bench.backfill_state

# 30 minutes at the benchmark's steady rate: flat RSS, no growing lag (CI runs 60 s of it).
soak: $(STAMP)
	TICKFLOW_SOAK_SECONDS=1800 TICKFLOW_SOAK_RATE=10000 $(PY) -m pytest -s -q tests/test_soak.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
