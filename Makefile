# feedwork: `make help` lists the targets. Each target's `## comment` is its help line.

PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PROTO    := protos/feedwork/v1/feeder.proto
GEN      := feedwork/v1/feeder_pb2.py feedwork/v1/feeder_pb2.pyi feedwork/v1/feeder_pb2_grpc.py
PROTOC    = $(BIN)/python -m grpc_tools.protoc -I protos
# buf (npm's @bufbuild/buf, pinned in tools/buf/package-lock.json) guards the contract.
BUF      := tools/buf/node_modules/.bin/buf
RELEASED := released/feedwork-v1.binpb

.DEFAULT_GOAL := help
.PHONY: help venv run test lint proto proto-check proto-compat proto-release pytest services bench chaos soak clean node-sdk node-test

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-19s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(STAMP) ## create .venv and install feedwork with its dev and bench extras

# Reinstalls only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

run: venv ## run the demo: a feeder, 16 workers, 1000 tasks, each completed exactly once
	$(BIN)/feedwork demo --iterations 1000 --workers 16

test: venv lint proto-check proto-compat services compose-check pytest node-test ## lint, check generated code and the wire contract, run every test (Python and Node.js)

pytest: venv services $(BUF) node-sdk ## run the Python test suite only
	$(BIN)/python -m pytest

# The Node.js SDK (clients/node): its packages from its lockfile, its build from src/ and the proto.
NODE_DIR  := clients/node
NODE_DEPS := $(NODE_DIR)/node_modules/.installed
NODE_DIST := $(NODE_DIR)/dist/index.js

$(NODE_DEPS): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund
	@touch $@

$(NODE_DIST): $(NODE_DEPS) $(wildcard $(NODE_DIR)/src/*.ts) $(NODE_DIR)/tsconfig.json $(PROTO)
	cd $(NODE_DIR) && npm run --silent build
	@touch $@

node-sdk: $(NODE_DIST) ## install and build the Node.js SDK (clients/node)

node-test: venv services node-sdk ## type-check the Node.js SDK and its examples, run its tests (node --test) against real feeders
	cd $(NODE_DIR) && npm run --silent typecheck && FEEDWORK_PYTHON=$(abspath $(BIN))/python npm test

lint: venv ## ruff check, ruff format --check, mypy --strict, the feeder's layer rule
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy feeder feedwork worker scripts/check_layers.py
	$(BIN)/python scripts/check_layers.py

proto: venv ## regenerate feedwork/v1 from protos/
	$(PROTOC) --python_out=. --pyi_out=. --grpc_python_out=. $(PROTO)

proto-check: venv ## fail if the committed generated code differs from a fresh `make proto`
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PROTOC) --python_out=$$tmp --pyi_out=$$tmp --grpc_python_out=$$tmp $(PROTO) && \
	for f in $(GEN); do \
		diff -u "$$f" "$$tmp/$$f" || { echo "$$f is stale: run 'make proto'" >&2; exit 1; }; \
	done && echo "generated code is up to date"

proto-compat: $(BUF) ## buf lint, and buf breaking against the released contract (protos/released)
	cd protos && ../$(BUF) lint && ../$(BUF) breaking --against $(RELEASED)
	@echo "the contract is compatible with protos/$(RELEASED)"

proto-release: $(BUF) ## record protos/ as the released contract that later changes must keep
	cd protos && ../$(BUF) build --exclude-source-info -o $(RELEASED)

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	npm ci --prefix tools/buf --no-audit --no-fund
	@touch $@

services: ## start PostgreSQL if it is down; install what tests need when missing (docker-compose, faketime, strace, chromium)
	@scripts/ensure-services.sh

.PHONY: compose-check docker-cluster docker-cluster-tls
COMPOSE_HOST     := -f docker-compose.yml -f docker/compose.host.yml
COMPOSE_TLS      := -f docker-compose.yml -f docker-compose.override.yml -f docker-compose.tls.yml
COMPOSE_HOST_TLS := -f docker-compose.yml -f docker-compose.tls.yml -f docker/compose.host.yml \
	-f docker/compose.host.tls.yml

compose-check: services ## validate the compose files with docker-compose (default and cluster profile; host networking, TLS, both)
	@if ! command -v docker-compose >/dev/null 2>&1; then \
		echo "compose-check: docker-compose not installed; skipped" >&2; exit 0; fi; \
	for profile in "" "--profile cluster"; do \
		docker-compose $$profile config -q && \
		docker-compose $(COMPOSE_HOST) $$profile config -q && \
		docker-compose $(COMPOSE_TLS) $$profile config -q && \
		docker-compose $(COMPOSE_HOST_TLS) $$profile config -q || exit 1; \
	done && echo "compose files are valid (default and cluster profile; published ports, host networking, TLS, both)"

docker-cluster: venv ## the compose cluster on a real Docker engine, then clean up (root; 1 min, 2-3 without images)
	timeout 1800 docker/cluster-run.sh $(CLUSTER_ARGS)

docker-cluster-tls: venv ## the same with TLS and per-role API keys; checks what is refused (root; 1 min, 2-3 without images)
	timeout 1800 docker/cluster-run.sh --tls $(CLUSTER_ARGS)

# Development certificates and API keys, e.g. for docker-compose.tls.yml (docs/DOCKER.md).
# The feeder certificate names the compose feeders too, so that containers can verify them.
.PHONY: dev-certs
CERTS_DIR ?= certs
DEV_CERTS_HOSTS := feeder feeder-1 feeder-2 feeder-3

dev-certs: venv ## CA, feeder certificate, API keys and auth.txt in CERTS_DIR (certs); DEV_CERTS_ARGS=--force replaces
	$(BIN)/feedwork dev-certs --out $(CERTS_DIR) --keys $(addprefix --host ,$(DEV_CERTS_HOSTS)) $(DEV_CERTS_ARGS)
	@echo "compose with TLS and keys: $(if $(filter certs ./certs,$(CERTS_DIR)),,FEEDWORK_CERTS_DIR=$(abspath $(CERTS_DIR)) )docker compose -f docker-compose.yml -f docker-compose.override.yml -f docker-compose.tls.yml --profile cluster up -d --build cluster-worker"

bench: venv services ## run the benchmarks
	$(BIN)/python -m bench

# The report renders this run's figures only (failures shown as failures), never an older run's.
chaos: venv services ## run the fault-injection suite at full size, then render docs/RELIABILITY.md
	run=chaos-$$(date -u +%Y%m%dT%H%M%SZ)-$$$$; \
	FEEDWORK_CHAOS=1 FEEDWORK_FIGURES_RUN=$$run $(BIN)/python -m pytest tests/faults -m chaos; \
	status=$$?; $(BIN)/python tests/faults/report.py --run $$run; exit $$status

# Not part of `make test`: 30 minutes. SOAK_MINUTES=3 for a smoke run; SOAK_ARGS="--help" for more.
soak: venv services ## steady load on a feeder; its RSS must stay flat, every task complete (SOAK_MINUTES, SOAK_ARGS)
	$(BIN)/python -m tests.soak $(SOAK_ARGS)

clean: ## remove caches and build output (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis $(NODE_DIR)/dist $(NODE_DIR)/src/gen
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
