# The set-up commands of the README: `make run`, `make check` (the inner loop) and `make test` (everything).
# Each creates .venv in the repo root, installs the project (llama-cpp-python builds from
# source once per environment, ~5 min on 2 cores) and puts the embedded model in place: the user
# cache dir ~/.cache/sentech-eval/models, or $SENTECH_MODELS_DIR when set (the same place
# `sentech-eval run backend=local` and `sentech-eval serve --engine llama` look).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Tests that start no process, no server and no llama.cpp (markers applied by tests/conftest.py).
FAST_TESTS := not e2e and not local_model and not slow
# `make test` spreads the suite over two pytest-xdist workers (a file's tests share one): on 2 cores the
# whole suite took 8 min 55 s this way against 14 min 27 s in one process (load 4-6 and 4-9; 2026-12-06).
# `make test PYTEST_WORKERS=` runs it in one process (and names tests that started a process unmarked).
PYTEST_WORKERS ?= 2
XDIST := $(if $(PYTEST_WORKERS),-n $(PYTEST_WORKERS) --dist loadfile,)

.PHONY: run check lint typecheck test bench install fetch-model clean

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test,sweep]'
	$(BIN)/sentech-eval fetch-model
	touch $(STAMP)

install: $(STAMP)

fetch-model: $(STAMP)
	$(BIN)/sentech-eval fetch-model

## The main job on the embedded default: local SmolLM2-135M GGUF, no key, no network. It ends
## with the result: score with its 95% CI, latency p50/p95, tokens, errors, report.html's path.
run: $(STAMP)
	$(BIN)/sentech-eval run backend=local dataset=capitals 'scorers=[contains]'

## The inner loop (docs/development.md): lint, format check, type check of the core and engine floors,
## and the fast tests (in-process: no process, no server, no llama.cpp).
check: lint typecheck
	$(BIN)/python -m pytest -q -m "$(FAST_TESTS)"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## The whole test suite (real server on loopback ports, real llama.cpp on the embedded model).
test: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST)

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) results/*/ .pytest_cache .mypy_cache .ruff_cache
