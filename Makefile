# kontrol: `make run` sets everything up and runs the bot (or a demo answer without a token);
# `make test` runs lint and the test suite. Both create the virtual environment on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow lint format bench eval demo-data index clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kontrol run

demo-data: $(STAMP)
	$(VENV)/bin/kontrol demo-data

test: $(STAMP) lint
	$(PY) -m pytest

test-slow: $(STAMP) demo-data
	$(PY) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

index: $(STAMP)
	$(VENV)/bin/kontrol index

bench: $(STAMP) demo-data
	$(PY) scripts/benchmark.py

eval: $(STAMP) demo-data
	$(VENV)/bin/kontrol eval --images data/demo --manifest data/demo/manifest.csv \
		--negatives data/demo_negatives --json eval_out/metrics.json --out eval_out

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
