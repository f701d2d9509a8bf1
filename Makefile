# Everyday commands. `make run` and `make test` set up everything they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# uv installs the project from the committed uv.lock. It comes from PyPI at this exact version
# into its own small virtualenv (.tools/), so a clone needs nothing but python3; the same pin is
# in pyproject.toml ([tool.uv] required-version) and deploy/Dockerfile.
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
UV_STAMP := $(TOOLS)/.uv-$(UV_VERSION)
UV_PYTHON := --python $(PYTHON) --no-python-downloads
STACK := deploy/local/stack
PYTEST_ARGS ?=

.PHONY: help venv lock stack stack-status migrate run worker test test-unit lint audit fmt bench chaos chaos-seeds fuzz schemas stop clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV_STAMP):
	@test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q 'uv==$(UV_VERSION)'
	@rm -f $(TOOLS)/.uv-* && touch $@

# Exactly the versions of uv.lock (--frozen: the lock is used as it is, never re-resolved);
# `make lint` and a unit test fail when uv.lock no longer matches pyproject.toml.
$(BIN)/.installed: pyproject.toml uv.lock $(UV_STAMP)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --extra dev $(UV_PYTHON)
	@touch $@

venv: $(BIN)/.installed ## create the virtualenv and install the project from uv.lock

lock: $(UV_STAMP) ## re-resolve uv.lock after a change to the dependencies in pyproject.toml
	$(UV) lock $(UV_PYTHON)

stack: venv ## start Kafka, PostgreSQL and Redis on loopback (idempotent)
	@$(STACK) up

stack-status: venv ## one line per stack component
	@$(STACK) status

migrate: stack ## apply the PostgreSQL migrations
	@$(BIN)/optout migrate

run: migrate ## worker + HTTP API in the foreground (Ctrl-C stops it; the stack stays up)
	@test -s .stack/api-token || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .stack/api-token)
	@if [[ -z "$${OPTOUT_API_TOKENS:-}" ]]; then echo "optout: dev API token (admin, every tenant, from .stack/api-token): $$(cat .stack/api-token)"; fi
	@test -s .stack/link-key || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(32))' > .stack/link-key)
	@test -s .stack/identifier-key || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(48))' > .stack/identifier-key)
	@OPTOUT_API_TOKENS="$${OPTOUT_API_TOKENS:-dev:$$(cat .stack/api-token):admin:*}" OPTOUT_LINK_KEYS="$${OPTOUT_LINK_KEYS:-dev:$$(cat .stack/link-key)}" OPTOUT_IDENTIFIER_KEY="$${OPTOUT_IDENTIFIER_KEY:-$$(cat .stack/identifier-key)}" $(BIN)/optout run --pid-file .stack/service.pid

test: migrate ## the whole test suite against the real stack
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: venv ## fast tests that need no service
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: venv ## uv.lock up to date, ruff, mypy --strict, the import-linter layer contracts, audit
	$(UV) lock --check $(UV_PYTHON)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy service tests benchmarks tools
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory audit

# AUDIT=allow-unaudited: a machine that cannot reach the vulnerability database passes with
# a warning naming what was not audited (never silently); AUDIT_SERVICE=osv asks OSV instead.
AUDIT ?= required
AUDIT_SERVICE ?= pypi
audit: venv ## known vulnerabilities in uv.lock (pip-audit); exceptions: deploy/pip-audit-accepted.toml
	$(BIN)/python tools/dependency_audit.py --uv $(UV) --service $(AUDIT_SERVICE) \
		--accepted deploy/pip-audit-accepted.toml $(if $(filter allow-unaudited,$(AUDIT)),--allow-unaudited)

fmt: venv ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# BENCH_QUICK=1: a look in under two minutes (smaller sizes); docs/bench/README.md has the rest.
bench: migrate ## the performance figures: docs/bench/latest.json, its README table and plots
	$(BIN)/python -m benchmarks.run

# Servers of the run's own (PostgreSQL, Redis, Kafka), started from the stack's binaries and
# jars: the run restarts them. CHAOS_ARGS="--without nul,headers" switches hostile classes off.
CHAOS_ARGS ?=
chaos: migrate ## fault-injection suite (probes, a chaos run, fuzzing): docs/reliability/latest.json
	$(BIN)/python -m tests.chaos.run --out docs/reliability/latest.json $(CHAOS_ARGS)

chaos-seeds: migrate ## `make chaos` for seeds 1 to 5, one after the other: docs/reliability/seeds.md
	$(BIN)/python -m tests.chaos.seeds run 1 2 3 4 5

fuzz: migrate ## 10,000 fuzzed records through one real worker: docs/reliability/fuzz.json
	$(BIN)/python -m tests.chaos.run --phases fuzz --out docs/reliability/fuzz.json $(CHAOS_ARGS)

schemas: venv ## regenerate the JSON Schema and AsyncAPI files in schemas/
	$(BIN)/optout schemas

stop: ## stop the service started by `make run` and the stack
	@if [[ -f .stack/service.pid ]] && kill -0 "$$(cat .stack/service.pid)" 2>/dev/null; then \
		kill "$$(cat .stack/service.pid)"; echo "[stop] service stopped"; fi; rm -f .stack/service.pid
	@$(STACK) down

clean: stop ## stop everything and delete the stack's data, the virtualenv and uv
	rm -rf .stack $(VENV) $(TOOLS)
