# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app portal

.PHONY: run test test-e2e bench lint scan venv clean

# Reinstall whenever the declared dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# In sandbox mode the server and the worker share the server's in-memory Stripe sandbox,
# so both reach it over HTTP.
ifeq ($(STRIPE_SECRET_KEY),)
run: export STRIPE_API_BASE ?= http://127.0.0.1:5000/sandbox
endif

# The worker writes links into e-mails outside any request: it is told the portal's address.
run: venv
	$(FLASK) db upgrade
	$(FLASK) seed-demo
	@echo "Portal on http://127.0.0.1:5000 (a background worker sends refunds and e-mails)."
	PORTAL_BASE_URL=$${PORTAL_BASE_URL:-http://127.0.0.1:5000} $(FLASK) worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(FLASK) run --host 127.0.0.1 --port 5000

# axe-core for the browser tests' accessibility checks, from the npm registry.
E2E_AXE := tests/e2e/node_modules/axe-core/axe.min.js
$(E2E_AXE): tests/e2e/package.json tests/e2e/package-lock.json
	cd tests/e2e && npm ci --no-audit --no-fund
	touch $@

# Without Chromium the browser tests skip themselves (one line says how to enable them),
# and npm is not needed.
E2E_DEPS := $(if $(wildcard /usr/bin/chromium),$(E2E_AXE))

test: venv $(E2E_DEPS)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-e2e: venv $(E2E_AXE)
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# The performance benchmark against PostgreSQL (several minutes; not part of `make test`).
bench: venv
	$(BIN)/python -m tests.bench.run_bench $(BENCH_ARGS)

# ruff, then the architecture's import contracts (pyproject.toml, docs/architecture.md).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check portal tests
	$(BIN)/lint-imports

# Security scans: bandit over the code (medium and high findings fail), pip-audit over
# the installed dependencies (an unreachable advisory database is reported, not fatal).
scan: venv
	$(BIN)/bandit -q -r portal -ll
	timeout 300 $(BIN)/pip-audit --skip-editable --progress-spinner off \
		|| { status=$$?; [ $$status -eq 124 ] && echo "pip-audit: advisory database unreachable, not audited"; [ $$status -eq 124 ]; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info tests/e2e/node_modules \
		test-artifacts
