# Two commands on a fresh clone: `make demo` (retrain on real data, promote through the gate, predict) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
DEMO_CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=
# pytest-xdist processes for `make test`: most of the suite waits on subprocesses, servers, a JVM and
# sqlite, so two processes on two cores finish sooner than one (docs/testing.md); 0 runs in this process
TEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv demo demo-run demo-adapt test test-all lint full clean

$(BIN)/adrisk: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_PIN)"
	$(BIN)/python -m pip install --quiet -e ".[dev]" "$(TORCH_PIN)"
	touch $(BIN)/adrisk

venv: $(BIN)/adrisk

demo: venv  ## retrain on risky-ads-v1 (demo size), promote to @champion through the gate, predict with it
	@$(MAKE) --no-print-directory demo-run

# `adrisk retrain` exit codes: 0 promoted, 3 rejected by the gate (the champion stays), 5 unchanged data+config
demo-run:
	@$(BIN)/adrisk retrain --config $(DEMO_CONFIG) --uri-file outputs/demo/model_uri.txt; rc=$$?; \
	  case $$rc in 0) ;; 3) echo "the challenger was rejected; @champion is unchanged";; \
	    5) echo "@champion was already trained on this data and config (retrain --force to train again)";; \
	    *) exit $$rc;; esac
	$(BIN)/adrisk predict --model models:/risky-ads@champion \
	  "Sweet new girl in town, call me 24/7 incall outcall" "2 bedroom apartment for rent near downtown" \
	  "Congratulations! You won a 1000 GBP prize, text CLAIM to 80086 now"

NEW_SITE_POOL ?= ../shared/datasets/new-site-pool-v1/pool.jsonl
demo-adapt: venv  ## make demo's retrain, adapted to a new site's unlabelled ads (docs/adaptation.md)
	@$(MAKE) --no-print-directory demo-run DEMO_CONFIG="$(DEMO_CONFIG) --set adapt.unlabelled_files=[$(NEW_SITE_POOL)]"

full: venv  ## the full risky-ads-v1 run (about an hour on 2 cores)
	$(BIN)/adrisk train --config configs/risky-ads-v1.yaml

lint: venv  ## style, formatting, package boundaries, types
	$(BIN)/ruff check adrisk training model serve batch signals monitor tests bench
	$(BIN)/ruff format --check adrisk training model serve batch signals monitor tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint  ## the suite in random order (seed printed), without the minutes-long fresh-virtualenv test
	$(BIN)/python -m pytest -q -m "not venv" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-all: lint  ## everything, the fresh-virtualenv build of a registered model included
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) mlflow.db mlruns outputs .pytest_cache
