# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app portal

.PHONY: run test test-e2e bench lint scan venv lock clean

# Every machine installs the same versions: requirements/dev-lock.txt pins each package,
# runtime and tools, with its hashes (requirements/lock.txt is the runtime part alone, for
# servers). The portal itself comes on top without dependencies, so nothing unpinned slips
# in. Reinstall whenever the declared dependencies or the lock change.
LOCK := requirements/lock.txt
DEV_LOCK := requirements/dev-lock.txt

# pip itself comes first, at the lock's version and hashes: the pip a new venv brings
# (23.2 here) mishandles a locked package asked for with an extra (pip-audit wants
# CacheControl[filecache]) as soon as the index has a release newer than the lock's, and
# refuses the whole install (seen when cachecontrol 0.15.0 appeared).
$(VENV)/.installed: pyproject.toml $(LOCK) $(DEV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^pip==/{p=1} p{print} p&&!/\\$$/{exit}' $(DEV_LOCK) > $(VENV)/pip-lock.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r $(VENV)/pip-lock.txt
	$(BIN)/python -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# Refresh both locks after changing the dependencies in pyproject.toml: versions already
# locked are kept where they still fit; add --upgrade-package NAME (UV_ARGS) to move one,
# or --upgrade to move all. Resolved for every platform from Python 3.11 on. uv is pinned
# here, not in the lock, so that the lock can always be rebuilt whatever it holds.
UV_VERSION := 0.13.9
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --quiet $(UV_ARGS)

lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

# The port `make run` serves on: `make run PORT=5050` (macOS keeps 5000 for AirPlay).
PORT ?= 5000

# In sandbox mode the server and the worker share the server's in-memory Stripe sandbox,
# so both reach it over HTTP.
ifeq ($(STRIPE_SECRET_KEY),)
run: export STRIPE_API_BASE ?= http://127.0.0.1:$(PORT)/sandbox
endif

# The worker writes links into e-mails outside any request, so it is told the portal's
# address, and it starts once the server answers.
run: venv
	$(FLASK) db upgrade
	$(FLASK) seed-demo
	@echo "Portal on http://127.0.0.1:$(PORT) (a background worker sends refunds and e-mails)."
	PORTAL_BASE_URL=$${PORTAL_BASE_URL:-http://127.0.0.1:$(PORT)} \
		$(FLASK) worker --wait-for http://127.0.0.1:$(PORT)/healthz & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(FLASK) run --host 127.0.0.1 --port $(PORT)

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
# the locked versions (the dev lock holds the runtime lock's pins and the tools'; an
# unreachable advisory database is reported, not fatal).
scan: venv
	$(BIN)/bandit -q -r portal -ll
	timeout 300 $(BIN)/pip-audit -r $(DEV_LOCK) --require-hashes --disable-pip \
		--progress-spinner off \
		|| { status=$$?; [ $$status -eq 124 ] && echo "pip-audit: advisory database unreachable, not audited"; [ $$status -eq 124 ]; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info tests/e2e/node_modules \
		test-artifacts
