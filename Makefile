# Two commands on a fresh clone: `make demo` (train on real data, register, predict) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch that lies on this machine's disk; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo test lint full bench clean

$(BIN)/adrisk: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(BIN)/adrisk

venv: $(BIN)/adrisk

demo: venv  ## train on risky-ads-v1 (demo size), register in mlflow.db, predict with the registered model
	$(BIN)/adrisk train --config configs/demo.yaml --uri-file outputs/demo/model_uri.txt
	$(BIN)/adrisk predict --model "$$(cat outputs/demo/model_uri.txt)" \
	  "Sweet new girl in town, call me 24/7 incall outcall" "2 bedroom apartment for rent near downtown" \
	  "Congratulations! You won a 1000 GBP prize, text CLAIM to 80086 now"

full: venv  ## the full risky-ads-v1 run (about an hour on 2 cores)
	$(BIN)/adrisk train --config configs/risky-ads-v1.yaml

test: venv
	$(BIN)/ruff check adrisk training model serve tests bench
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check adrisk training model serve tests bench

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs .pytest_cache
