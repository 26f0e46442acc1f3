# The two set-up commands: `make demo` runs the example on the local runtime, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	cd examples/shop && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/devenv up --profile integration-test --attach

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_reload.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
