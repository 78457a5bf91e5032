# The two commands a person needs: `make demo` and `make test`. Both install what they use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo

.PHONY: venv demo test lint bench system-packages clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,demo]'
	touch $@

venv: $(STAMP)

# A master + worker on SQLite, running the example build; DEMO_ONCE=1 exits after the build.
demo: $(STAMP) system-packages
	bash tests/harness/ensure-docker-engine.sh
	$(BIN)/buildbot-farm demo --basedir $(DEMO_DIR) $(if $(DEMO_ONCE),--once)

system-packages:
	bash tests/harness/install-system-packages.sh

lint: $(STAMP)
	$(BIN)/ruff check buildbot_farm tests benchmarks
	$(BIN)/mypy buildbot_farm benchmarks tests

# The whole suite against real PostgreSQL, a real Docker engine and a real master + worker.
test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest

# Benchmarks against the tools the farm replaces (BENCH=bench_name runs one); not part of CI.
bench: $(STAMP)
	bash tests/harness/install-system-packages.sh --bench
	$(BIN)/python -m benchmarks $(BENCH)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
