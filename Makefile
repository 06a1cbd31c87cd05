# The project's entry points. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo run test lint migrate simulate clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install  ## Start the whole stack, send a few prompts, print what they cost, stop.
	$(BIN)/model-router demo

run: install  ## Start the whole stack in the foreground (Ctrl-C stops all of it).
	$(BIN)/model-router run

test: install  ## Run the test suite (unit, API, migrations, and the real stack).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrate: install
	$(BIN)/model-router db upgrade

simulate: install
	$(BIN)/model-router simulate --port $${SIM_PORT:-9000}

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache model_router.db*

.PHONY: bench bench-compare

bench: install  ## Load the stack (and the simulator directly) at several latencies and concurrencies; JSON + table.
	$(BIN)/python -m bench.throughput $(BENCH_ARGS)

bench-compare: install  ## The same, with LiteLLM's proxy (own venv) on the same simulator, and the ratios.
	$(BIN)/python -m bench.compare $(BENCH_ARGS)
