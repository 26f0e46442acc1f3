# The two set-up commands: `make demo` runs the example on the local runtime, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean browser node

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

# The shop's page is tested in a real headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no chromium; the browser test will be skipped (apt-get install chromium)"; fi; }

# The polyglot project `devenv init` is tested on has a Node front end (Debian's nodejs).
node:
	@command -v node >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing nodejs for the init test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs >/dev/null; \
	  else echo "note: no node; the polyglot init test will be skipped (apt-get install nodejs)"; fi; }

test: lint browser node
	$(BIN)/pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_reload.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
