# Two commands set everything up on a fresh Debian machine with Python 3.11:
#   make serve   — run the service on the embedded store with the demo fleet
#   make test    — install what the tests need (Python and Debian packages), then run them all
#   make bench   — install wrk and nginx, run the benchmarks, write BENCHMARKS.md
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HASH   := $(shell $(PYTHON) -c 'import hashlib,sys;print(hashlib.sha1(open("pyproject.toml","rb").read()).hexdigest()[:12])')
# `make serve` installs what serving needs; `make test` adds the test extras.
SERVE_STAMP := $(VENV)/.serve-$(HASH)
STAMP  := $(VENV)/.installed-$(HASH)
# Debian packages the tests and benchmarks drive: command → package. PostgreSQL's tools are
# not on PATH in Debian, so its command is a path (the tests start a cluster of their own).
# runuser runs tests as an unprivileged user, from a venv of Debian's python3 (tests/installed.py);
# systemd-analyze rates README's unit.
DEB_TOOLS := ip:iproute2 curl:curl openssl:openssl /usr/lib/postgresql/*/bin/initdb:postgresql \
             chromium:chromium runuser:util-linux unshare:util-linux nsenter:util-linux \
             /usr/bin/python3:python3 systemd-analyze:systemd

# What `make bench` drives, the same way.
BENCH_TOOLS := wrk:wrk nginx:nginx taskset:util-linux

.PHONY: test-core serve test lint deps debs bench bench-console bench-fleet soak screenshots clean \
        golden

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	rm -f $(VENV)/.serve-*
	touch $@

$(STAMP): $(SERVE_STAMP)
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

deps: $(STAMP)

debs:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

serve: $(SERVE_STAMP)
	$(BIN)/ecs-imds --data-dir data/demo serve --demo

# ruff; mypy --strict on src/; the import contracts of pyproject.toml (docs/architecture.md).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy --strict src
	$(BIN)/lint-imports

# The protocol core's tests alone, in seconds (markers: core, netns, postgres).
test-core: $(STAMP)
	$(BIN)/pytest -q -m core

test: $(STAMP) debs lint
	$(BIN)/pytest

# The demo fleet's whole crawl, as each instance sees it (tests/test_golden.py compares).
golden: $(STAMP)
	$(BIN)/python tests/golden.py

bench: $(STAMP)
	@$(MAKE) --no-print-directory debs DEB_TOOLS="$(BENCH_TOOLS)"
	$(BIN)/python bench/run.py
	$(BIN)/python bench/isolation.py
	@$(MAKE) --no-print-directory bench-fleet soak SOAK_MINUTES=10

# The data plane fuzzed for a million requests (tests/fuzzer.py; briefly in `make test`).
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python bench/fuzz.py

# The fleet at scale (issue 11): API writes, imports and scoped servers on SQLite and
# PostgreSQL; 1,000 scoped change feeds on a hot standby; memory under change for
# SOAK_MINUTES (`make soak`: the long form, 30). Each rewrites its part of BENCHMARKS.md.
SOAK_MINUTES ?= 30
bench-fleet: $(STAMP)
	@$(MAKE) --no-print-directory debs DEB_TOOLS="/usr/lib/postgresql/*/bin/initdb:postgresql"
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/subscribers.py

soak: $(STAMP)
	@$(MAKE) --no-print-directory debs DEB_TOOLS="$(BENCH_TOOLS)"
	$(BIN)/python bench/soak.py --minutes $(SOAK_MINUTES)

# Fleet mode under faults (issue 13): three servers on one PostgreSQL; as root (namespaces).
bench: bench-faults
.PHONY: bench-faults
bench-faults: $(STAMP) debs
	$(BIN)/python bench/faults.py

# The console's pictures in the README (docs/console-*.png), taken in headless Chromium.
screenshots: $(STAMP) debs
	$(BIN)/python tests/screenshots.py

# The web console's reads on a fleet of 100k instances (p50/p99), into BENCHMARKS.md.
bench-console: $(STAMP)
	$(BIN)/python bench/console.py

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache .hypothesis
