# The two set-up commands: `make demo` runs the example on the local runtime, `make test` tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean tools browser node native

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,shop]'  # shop: the example's traces
	touch $@

# The ingress and what it calls for every request, compiled with mypyc (30 s, once for each
# change of their sources; without a C compiler they stay interpreted, slower, and this says
# so): src/devenv/native.py. `test` and `bench` make it after `tools` (which brings gcc), so
# that `make -j` cannot build it first.
native: $(BIN)/.installed
	@$(BIN)/python -c 'from devenv import native; raise SystemExit(native.main())'

demo: $(BIN)/.installed native
	cd examples/shop && PATH="$(CURDIR)/$(BIN):$$PATH" ../../$(BIN)/devenv up --profile integration-test --attach

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy

# What the tests use from Debian, installed when missing (as root; else those tests are
# skipped, saying why): a C compiler for the compiled ingress (`native`), a real headless
# Chromium for the shop's page, Node for the polyglot project `devenv init` is tested on,
# and PostgreSQL 15 with its contrib extensions (uuid-ossp, pgcrypto) for a system
# PostgreSQL through bin_dir; npm, for the `mermaid` package that reads `docs generate`'s
# graph (into ~/.cache/devenv-tests). One apt run for all; no cluster of Debian's own is
# created (or started). docker-registry: a real registry for
# `devenv publish`'s images (the tests start their own on loopback; Debian's is not started).
DEBIAN_TOOLS := cc:gcc chromium:chromium node:nodejs /usr/lib/postgresql/15/bin/postgres:postgresql-15 \
	/usr/bin/prometheus:prometheus /usr/sbin/nginx:nginx-light wrk:wrk \
	dockerd:docker.io npm:npm \
	docker-registry:docker-registry
tools:
	@missing=""; for pair in $(DEBIAN_TOOLS); do what=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$what >/dev/null 2>&1 || [ -x "$$what" ] || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing for the tests:$$missing"; \
	    mkdir -p /etc/postgresql-common; \
	    [ -e /etc/postgresql-common/createcluster.conf ] || \
	      echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	    norc=""; [ -e /usr/sbin/policy-rc.d ] || { norc=1; printf '#!/bin/sh\nexit 101\n' \
	      > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      -o Dpkg::Options::=--force-confold $$missing >/dev/null; \
	    [ -z "$$norc" ] || rm -f /usr/sbin/policy-rc.d; \
	  else echo "note: not installed:$$missing; the tests that need them are skipped"; fi; fi
	@[ ! -x $(BIN)/python ] || $(BIN)/python -c 'import locust' 2>/dev/null || \
	  $(BIN)/python -m pip install -q locust || echo "note: locust not installed; bench_loadtest skips it"
	@mermaid="$${XDG_CACHE_HOME:-$$HOME/.cache}/devenv-tests/mermaid-11"; \
	  [ -f "$$mermaid/node_modules/mermaid/dist/mermaid.min.js" ] || ! command -v npm >/dev/null || \
	  npm install --silent --no-audit --no-fund --prefix "$$mermaid" mermaid@11 || \
	  echo "note: mermaid not installed; test_docs_generate installs it, or skips saying why"
browser node: tools

test: lint tools
	@$(MAKE) --no-print-directory native
	$(BIN)/python -m compileall -q src  # every engine and CLI the tests start imports devenv: compiled once, not per process (PYTHONDONTWRITEBYTECODE is common in dev containers)
	$(BIN)/pytest -q -n 3 --dist worksteal  # three workers (most tests wait on processes); tests, not files, are shared out, and an idle worker takes from a busy one
	DEVENV_INTERPRETED=1 $(BIN)/pytest -q -n 3 tests/test_ingress_http.py tests/test_unit_ingress.py tests/test_unit_outbox.py tests/test_unit_native.py tests/test_unit_pool.py tests/test_unit_balancer.py tests/test_unit_metrics.py tests/test_unit_traceparent.py  # the compiled modules' in-process tests again, interpreted (as where they cannot be compiled)

bench: $(BIN)/.installed tools
	@$(MAKE) --no-print-directory native
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_data.py
	$(BIN)/python bench/bench_reload.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_traces.py
	$(BIN)/python bench/bench_ingress.py
	$(BIN)/python bench/bench_loadtest.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
