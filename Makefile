# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FLASK := $(BIN)/flask --app portal

.PHONY: run test lint scan venv clean

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

run: venv
	$(FLASK) db upgrade
	$(FLASK) seed-demo
	@echo "Portal on http://127.0.0.1:5000 (a background worker sends refunds and e-mails)."
	$(FLASK) worker & worker=$$!; \
	trap 'kill $$worker 2>/dev/null' EXIT INT TERM; \
	$(FLASK) run --host 127.0.0.1 --port 5000

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check portal tests

# Security scans: bandit over the code (medium and high findings fail), pip-audit over
# the installed dependencies (an unreachable advisory database is reported, not fatal).
scan: venv
	$(BIN)/bandit -q -r portal -ll
	timeout 300 $(BIN)/pip-audit --skip-editable --progress-spinner off \
		|| { status=$$?; [ $$status -eq 124 ] && echo "pip-audit: advisory database unreachable, not audited"; [ $$status -eq 124 ]; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
