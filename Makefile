# ProfileStream: `make demo` and `make test` set everything up on first use (a .venv, the Flink
# connector jars, Java if the machine has none) and skip that work on later runs.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PS := $(VENV)/bin/profilestream
INSTALLED := $(VENV)/.installed
# The profile step's hot path compiled with mypyc, and the hand-written C modules udfs/_*.c
# (udfs/native.py); rebuilt when their sources change.
NATIVE := udfs/_native.json
NATIVE_SRC := udfs/events.py udfs/sketches.py udfs/profile.py udfs/fold.py udfs/codec.py \
	udfs/features.py udfs/clusters.py udfs/rows.py udfs/engine.py udfs/cache.py udfs/trees.py udfs/pseudonym.py udfs/metrics.py udfs/_treewalk.c udfs/_statecodec.c udfs/_eventdecode.c udfs/_features.c udfs/_attrcache.h udfs/params.py udfs/native.py \
	udfs/_impl.py

# demo knobs: DATASET=path FORMAT=taobao|rees46 EVENTS=n USERS=n; PG_DSN / KAFKA_BOOTSTRAP use external services
DEMO_ARGS := $(if $(DATASET),--dataset "$(DATASET)" --format "$(FORMAT)") $(if $(EVENTS),--events $(EVENTS)) $(if $(USERS),--users $(USERS))

.PHONY: help setup demo test test-unit bench lint typecheck proto check-proto deploy-files lock stop clean

help:
	@echo "make demo    run the main job on the embedded default (PostgreSQL, Kafka-protocol broker, Flink MiniCluster)"
	@echo "make test    run the test suite (what CI runs)"
	@echo "make test-unit  the fast lane: tests/unit without the slow ones (no JVM job, no services; under a minute)"
	@echo "make bench   floor, job and plain-Python ceiling, freshness and scale (about 20 min)"
	@echo "make lint    ruff + mypy;  make proto  regenerate schemas/*_pb2.py(i) from the .proto"
	@echo "make deploy-files  regenerate the generated parts of docker/ from the code (Flink settings, pins, jars)"
	@echo "make stop    stop the embedded PostgreSQL that 'make demo' leaves running for psql"

$(INSTALLED): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "ProfileStream needs Python 3.11 (apache-flink 2.3.0 wheels); set PYTHON=/path/to/python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

$(NATIVE): $(INSTALLED) $(NATIVE_SRC)
	$(PY) -m udfs.native build

setup: $(INSTALLED) $(NATIVE)
	@$(PS) setup

demo: setup
	$(PS) demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest tests/unit -m "not slow"

bench: setup
	$(PY) -m bench.e2e

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

proto: $(INSTALLED)
	$(PY) -m grpc_tools.protoc -I schemas --python_out=schemas --pyi_out=schemas schemas/profilestream/events/v1/user_event.proto

deploy-files: $(INSTALLED)
	$(PY) -m flink_jobs.ops.deploy --write

lock:
	rm -rf .cache/lockvenv && $(PYTHON) -m venv .cache/lockvenv
	.cache/lockvenv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	{ head -n 3 requirements.lock; .cache/lockvenv/bin/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .cache/lockvenv

stop:
	@test -x $(PS) && $(PS) services stop || true

clean:
	rm -rf .cache .profilestream $(NATIVE) udfs/*.so
