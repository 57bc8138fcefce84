# windowgate — developer entry points. Every target installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test test-unit bench lint broker broker-stop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The whole suite; integration tests start their own Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set.
test: install
	$(PY) -m pytest

## Pure-core tests only: no broker, seconds.
test-unit: install
	$(PY) -m pytest tests/unit

bench: install
	$(PY) -m bench

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

## A real single-node Apache Kafka (KRaft) from Maven Central jars, on 127.0.0.1:9092.
broker: install
	$(PY) -m windowgate.devbroker start

broker-stop: install
	$(PY) -m windowgate.devbroker stop

run: install
	$(PY) -m windowgate.demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
