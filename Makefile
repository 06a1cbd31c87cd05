# The project's entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo run test browser lint migrate simulate clean lock

# The pinned versions in requirements-dev.lock (the runtime's, the local stack's and the tests'), then the project
# itself without resolving anything; `pip check` fails the install when the lock no longer fits pyproject.toml.
$(STAMP): pyproject.toml requirements-dev.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

install: $(STAMP)

demo: install  ## Start the whole stack, send a few prompts, print what they cost, stop.
	$(BIN)/model-router demo

run: install  ## Start the whole stack in the foreground (Ctrl-C stops all of it).
	$(BIN)/model-router run

test: install browser  ## Run the test suite (unit, API, migrations, and the real stack).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The dashboard's browser test drives Debian's chromium (Playwright's own browser downloads are not used).
# A failed install does not stop the other tests: that test then fails saying chromium is missing.
CHROMIUM ?= /usr/bin/chromium

browser:  ## Install chromium (apt-get, as root) when it is missing.
	@if [ ! -x $(CHROMIUM) ]; then \
		echo "installing chromium for tests/integration/test_dashboard*.py"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
			|| echo "could not install chromium: the dashboard's browser tests will fail"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrate: install
	$(BIN)/model-router db upgrade

simulate: install
	$(BIN)/model-router simulate --port $${SIM_PORT:-9000}

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache model_router.db* .run

# The lock files: requirements.lock is what production installs (the image), requirements-dev.lock adds the local
# stack and the tests (the Makefile, CI). A re-lock keeps every pin that still fits pyproject.toml;
# LOCK_ARGS=--upgrade moves all of them to the newest versions, LOCK_ARGS="--upgrade-package NAME" one of them.
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --quiet \
	--custom-compile-command 'make lock'

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep -E '^uv==' requirements-dev.lock)"

lock: $(BIN)/uv  ## Re-resolve requirements-dev.lock, then requirements.lock within it.
	$(UV_COMPILE) --extra dev $(LOCK_ARGS) --output-file requirements-dev.lock
	$(UV_COMPILE) --constraint requirements-dev.lock --output-file requirements.lock

.PHONY: bench bench-compare

bench: install  ## Load the stack (and the simulator directly) at several latencies and concurrencies; JSON + table.
	$(BIN)/python -m bench.throughput $(BENCH_ARGS)

bench-compare: install  ## The same, with LiteLLM's proxy (own venv) on the same simulator, and the ratios.
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
