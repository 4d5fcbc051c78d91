# The two commands a new user needs: `make demo` and `make test`. Both set the machine up first
# (idempotent; seconds on a second run).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-fast lint

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

test: setup
	@$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite under tests/ is empty or deselected (failing)."; fi; \
	exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow" tests

lint: setup
	$(PY) -m ruff check codec slm adapters demos tests benchmarks
