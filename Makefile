# hifhir developer entry points. Every target works on a fresh clone: it bootstraps .venv itself.
# Variables: PYTEST_ARGS (extra pytest arguments), BENCH_ARGS (extra bench.run arguments; its --backend and --nice
#            also go to bench.batch), BATCH_ARGS (extra bench.batch arguments), PYTHON (interpreter for a new
#            venv); the server reads HIFHIR_PORT, HIFHIR_DATABASE_URL.

# bash for pipefail and traps in the test recipe.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
BATCH_ARGS ?=

.PHONY: help bootstrap bootstrap-test test-deps bench-deps run test lint migrate demo bench clean

help: ## list the targets
	@echo "usage: make <target> [PYTEST_ARGS=...] [BENCH_ARGS=...]"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-15s %s\n", $$1, $$2 }'

bootstrap: ## create/update .venv with hifhir installed (editable)
	@bash scripts/bootstrap.sh

bootstrap-test: ## same, plus the test tools (pytest, xdist, httpx, ruff, hypothesis)
	@bash scripts/bootstrap.sh --test

test-deps: ## install PostgreSQL server binaries if missing (apt-get)
	@bash scripts/install-test-deps.sh

bench-deps: ## install PostgreSQL and wrk if missing (apt-get)
	@bash scripts/install-test-deps.sh --bench

run: bootstrap ## serve the API (migrates; loads demo data into an empty DB)
	$(BIN)/hifhir serve --migrate --demo-if-empty

migrate: bootstrap ## apply database migrations
	$(BIN)/hifhir migrate

demo: bootstrap ## load the demo data set
	$(BIN)/hifhir demo-data

lint: bootstrap-test ## ruff check src tests
	$(BIN)/ruff check src tests

# The cluster is stopped by an EXIT trap (set before starting, so a half-started cluster is
# stopped too) on success, failure and Ctrl-C; bash still exits with pytest's status because the
# trap itself does not call exit.
test: lint test-deps ## lint, then pytest (-n 2) against a throw-away PostgreSQL cluster
	@trap '$(PY) -m tests.pg_cluster stop' EXIT; \
	trap 'exit 130' INT; trap 'exit 143' TERM; \
	url="$$($(PY) -m tests.pg_cluster start)"; \
	echo "test cluster: $$url"; \
	export HIFHIR_TEST_PG_URL="$$url"; \
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

# The batch benchmark takes --backend and --nice from BENCH_ARGS (either form, `--nice -10` or `--nice=-10`).
bench: bootstrap bench-deps ## run the benchmark suite (bench/): the HTTP scenarios, then the batch run
	$(PY) -m bench.run $(BENCH_ARGS)
	@set -- $(BENCH_ARGS); shared=""; \
	while [ $$# -gt 0 ]; do \
		case "$$1" in --nice|--backend) shared="$$shared $$1 $$2"; shift;; --nice=*|--backend=*) shared="$$shared $$1";; esac; \
		shift; \
	done; \
	echo "$(PY) -m bench.batch$$shared $(BATCH_ARGS)"; \
	$(PY) -m bench.batch $$shared $(BATCH_ARGS)

clean: ## stop the test cluster and remove test artefacts (keeps .venv and var/ app data)
	@if [ -x $(PY) ] && [ -f var/test-pg/state.json ]; then $(PY) -m tests.pg_cluster stop || true; fi
	rm -rf var/test-pg var/test-* .pytest_cache .ruff_cache
	find src tests -name __pycache__ -type d -prune -exec rm -rf {} +
