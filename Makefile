# recbole-ssm: every target creates .venv on first use (tools/make-venv.sh: a Python 3.10-3.13,
# torch pinned first, then the package; PYTHON=python3.12 picks the interpreter).
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
MODEL ?= Mamba2Rec
DATASET ?= ml-100k
# The quick start trains to early stopping (RecBole's default: up to 300 epochs, stopping after 10
# without a better validation NDCG@10): under Mamba2Rec's default train_targets=all an ml-100k epoch
# takes seconds on 2 CPU cores. A model under RecBole's prefix regime takes minutes an epoch there:
# give it a budget, e.g. make run MODEL=SASRec ARGS=--epochs=3.
ARGS ?=

.PHONY: venv run test lint bench clean

venv:
	@VENV="$(VENV)" PYTHON="$(PYTHON)" TORCH_VERSION="$(TORCH_VERSION)" bash tools/make-venv.sh

## run: train and test the main model on the embedded default data set (ml-100k)
run: venv
	$(PY) run_recbole_ssm.py --model=$(MODEL) --dataset=$(DATASET) $(ARGS)

## test: the test suite (CPU; GPU tests skip without CUDA), one pytest-xdist worker per logical
## CPU, each test file on one worker (TEST_WORKERS=0 runs it in this process)
TEST_WORKERS ?= logical
test: venv
	PYTHONUNBUFFERED=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

## bench: efficiency curves against SASRec on synthetic sequences (see docs/benchmarks.md)
BENCH ?= efficiency --models=SASRec,Mamba4Rec,2Mamba4Rec,Hydra4Rec --lengths=50,200,1000,2000
bench: venv
	$(PY) run_recbole_ssm.py bench $(BENCH)

lint: venv
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) log log_tensorboard saved .pytest_cache
