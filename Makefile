# The two commands: `make run` (the main job on embedded defaults) and `make test`.
# Each creates .venv and installs what it needs on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools run train test lint typecheck unit bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System tools the tests use: docker-compose validates docker/ (no engine needed), the
# PostgreSQL server on 127.0.0.1:5432 backs the storage tests (each run makes its own databases),
# and Debian's PostgreSQL binaries start the private server the fault tests stop and restart.
# Debian's chromium is the browser Playwright drives in the browser tests (Playwright never
# downloads one of its own).
tools:
	command -v docker-compose >/dev/null || (apt-get update && apt-get install -y docker-compose)
	test -x /usr/bin/chromium || (apt-get update && apt-get install -y chromium)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update && apt-get install -y postgresql)
	pg_isready -q -h 127.0.0.1 -p 5432 || echo "warning: no PostgreSQL on 127.0.0.1:5432; the postgres tests will fail" >&2

# Starts MLflow, a local Ray head and the API on loopback, submits the toolbox tour, watches it to
# the end, prints the best trial and the links (API docs, MLflow comparison, the sweep's
# artifacts), and keeps the stack up for them until Ctrl-C.
run: install
	$(BIN)/sweeps demo examples/toolbox-tour.yaml

# The lecture's claims (examples/lecture/), each a sweep through the REST API of the embedded
# stack; writes docs/lecture.md with its figures and refreshes the README's headline table.
.PHONY: lecture
lecture: install
	$(BIN)/sweeps lecture examples/lecture --out docs --up

# One trial with the toolbox alone, no service.
train: install
	$(BIN)/toolbox-train examples/trial.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install tools
	$(BIN)/pytest --durations=30

test: lint typecheck unit

# The compose stack for real (tests/deploy): images built without a registry or an index, the
# stack up on a generated .env, sweeps through its published ports, faults, down and up. Needs
# root and a Docker engine it can start; otherwise one SKIP line. Separate from `make test`.
.PHONY: test-deploy
test-deploy: install
	tests/deploy/run.sh

# The images `make test-deploy` builds first, alone (CI builds them while `make test` runs).
.PHONY: deploy-images
deploy-images: install
	tests/deploy/run.sh --images

# The embedded stack, then the compose stack (as in `make test-deploy`), under random overlapping
# faults for SOAK_MINUTES each (5, as in CI; SOAK_MINUTES=60 for the long run), seeded by
# SOAK_SEED: nothing lost, resources flat.
.PHONY: soak
soak: install tools
	$(BIN)/pytest tests/soak -s
	tests/deploy/run.sh tests/deploy/test_soak.py

bench: install
	$(BIN)/python bench/bench_train_path.py

# The service's overhead over Ray Tune and the toolbox alone (starts its own stack; minutes).
.PHONY: bench-service
bench-service: install
	$(BIN)/python bench/bench_service_overhead.py

# 15 one-trial, one-epoch sweeps submitted at once through the API, until all are final: the
# warm drivers and trial workers (zygotes) against one standby and cold starts, side by side in
# one run (starts a stack per mode; minutes).
.PHONY: bench-burst
bench-burst: install
	$(BIN)/python bench/bench_burst.py

# K trials trained as one pack (toolbox.packed) against the same K one after another, K from 1
# to 32, digits MLP and a CIFAR-shaped CNN: member-epochs per second (minutes on 2 CPU cores).
.PHONY: bench-packed
bench-packed: install
	$(BIN)/python bench/bench_packed.py

# The 120-trial study through the API with packs, without, and its sequential ideal (starts
# its own stack; about 10 minutes on 2 CPU cores).
.PHONY: bench-packs-service
bench-packs-service: install
	$(BIN)/python bench/bench_packs_service.py

# A user's study: four grid sweeps (120 trials) submitted at once to a fresh stack, then again
# warm, against the same trials' sequential and packed ideal (minutes on 2 CPU cores).
.PHONY: bench-study
bench-study: install
	$(BIN)/python bench/bench_study.py

# `make run`'s tour for three seeds, each as a new user runs it (its own stack): wall time, best
# validation accuracy, what helped (about 5 minutes on 2 CPU cores).
.PHONY: bench-tour
bench-tour: install
	$(BIN)/python bench/bench_tour.py

# A sweep's wall time with MLflow down for a minute against MLflow up (starts its own stack).
.PHONY: bench-outage
bench-outage: install
	$(BIN)/python bench/bench_mlflow_outage.py

# What hostile bodies cost the API (validation and answer), /healthz meanwhile, and 50
# concurrent POSTs with Idempotency-Keys (starts its own API process; under a minute).
.PHONY: bench-input
bench-input: install
	$(BIN)/python bench/bench_api_input.py
