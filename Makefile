# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/c360 demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/c360 schema check
	@# The console's browser test drives Debian's chromium (it skips without, fails on CI);
	@# a CJK font draws the console's Chinese labels in its screenshots.
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -d /usr/share/fonts/truetype/wqy ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y --no-install-recommends chromium chromium-driver fonts-wqy-zenhei \
	      || { apt-get update -qq && apt-get install -y --no-install-recommends chromium chromium-driver fonts-wqy-zenhei; }; \
	  else echo "make test: chromium/chromium-driver missing and not root: the browser test will skip"; fi; \
	fi
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (bench/README.md): wrk (installed as root, else say how); Node 20 + npm for the peers.
# `bench` is the quick mode (under three minutes; bench/results/latest.*), `bench-full` adds
# concurrencies, longer runs, the py-spy profiles and a 10-minute soak (bench/results/full.*).
.PHONY: bench-full

# wrk is a Debian package: installed here as `make test` installs Chromium (as root).
.PHONY: wrk
wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get install -y --no-install-recommends wrk \
	      || { apt-get update -qq && apt-get install -y --no-install-recommends wrk; }; \
	  else echo "bench: needs wrk (sudo apt-get install -y wrk)"; exit 1; fi; }

bench: $(STAMP) wrk
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench --quick

bench-full: $(STAMP) wrk
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench --full
