# windowgate — developer entry points. Every target installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run demo test test-unit bench bench-quick bench-scale chaos lint broker broker-stop clean

install: $(STAMP)

# PYTHONWARNINGS: setuptools warns about every editable install (BuildBackendWarning); not news.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::UserWarning $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The whole suite; integration tests start their own Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set.
test: install
	$(PY) -m pytest

## Unit tests: no broker (the pure core, and each service's shell against fakes); seconds.
test-unit: install
	$(PY) -m pytest tests/unit

## Core, ingest, window and dispatcher benchmarks: figures beside same-run references, no asserts.
## Results as JSON in bench/results/, then bench/REPORT.md and its plots (bench/plots/).
bench: install
	$(PY) -m bench
	$(PY) -m bench.ingest
	$(PY) -m bench.window
	$(PY) -m bench.window --broadcast --broadcast-users 100000
	$(PY) -m bench.dispatcher
	$(PY) -m bench.dispatcher --part broadcast
	$(PY) -m bench.report

bench-quick: install
	$(PY) -m bench --quick
	$(PY) -m bench.ingest --quick
	$(PY) -m bench.window --quick
	$(PY) -m bench.window --broadcast --broadcast-users 20000
	$(PY) -m bench.dispatcher --quick
	$(PY) -m bench.dispatcher --part broadcast --quick
	$(PY) -m bench.report

## The window worker's cost at 10 k, 100 k and 1 M users, and 2 workers beside one (~10 min);
## a broadcast's fan-out and dry run at 100 k and 1 M users.
bench-scale: install
	$(PY) -m bench.window --scale
	$(PY) -m bench.window --broadcast --broadcast-users 100000,1000000
	$(PY) -m bench.report

## Fault test: the whole stack as processes under kill -9, broker crashes and freezes (< 5 min).
chaos: install
	$(PY) -m bench.chaos --seconds 240

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

## A real single-node Apache Kafka (KRaft) from Maven Central jars, on 127.0.0.1:9092.
broker: install
	$(PY) -m devtools.devbroker start

broker-stop: install
	$(PY) -m devtools.devbroker stop

## The whole gateway locally: broker, Graph stand-in, ingest, window, dispatcher, traffic, live summary.
## Ports: INGEST_PORT, WINDOW_PORT, DISPATCHER_PORT, GRAPH_STANDIN_PORT; logs in .windowgate/run/.
run: install
	@$(PY) -m devtools.local_run

## Offline: fold Meta's fixture webhooks and print decisions at chosen instants (no services).
demo: install
	$(PY) -m devtools.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
