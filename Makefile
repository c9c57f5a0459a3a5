# The toolchain's entry points. `make demo` and `make test` install into .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONSTRAINTS := .ci/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip prints one warning per missing local index folder on some machines; keep its real output only.
QUIET_PIP := 2>&1 | { grep -v "is ignored" || true; }

.PHONY: install demo test lint format clean bench-sft bench-teacher bench-generate bench-dpo bench-sql-label bench-orm

install: $(STAMP)

# torch first (the local CPU wheel here, the CUDA build on a GPU machine), then the project with a constraints
# file that pins torch, so no dependency can upgrade it. Re-runs only when pyproject.toml or the pins change.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) "torch==2.13.0" $(QUIET_PIP)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test]" $(QUIET_PIP)
	$(BIN)/python -c "import torch, litgpt, litgpt_ext, distill; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

demo: install
	$(BIN)/python -m distill.demo

test: install
	$(BIN)/ruff check -q .
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf out artifacts/runs .pytest_cache .ruff_cache build dist *.egg-info

bench-sft: install
	$(BIN)/python -m tests.bench.bench_sft

bench-teacher: install
	$(BIN)/python -m tests.bench.bench_teacher

bench-generate: install
	$(BIN)/python -m tests.bench.bench_generate

bench-dpo: install
	$(BIN)/python -m tests.bench.bench_dpo

bench-sql-label: install
	$(BIN)/python -m tests.bench.bench_sql_label

bench-orm: install
	$(BIN)/python -m tests.bench.bench_orm
