# contrastkit — set-up, demo and tests. A fresh machine needs only Python 3.11 and make.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a shared 2-core machine spinning OpenMP threads slow everything down.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup  ## train + evaluate CLIP on built-in Shapes (runs/demo)
	$(BIN)/contrastkit demo

test: setup  ## the test suite CI runs (slow tests excluded)
	$(BIN)/python -m pytest -q

test-all: setup  ## including @pytest.mark.slow
	$(BIN)/python -m pytest -q -m ""

bench: setup  ## benchmarks of docs/performance.md (installs open_clip for the comparison rows)
	$(BIN)/pip install --quiet -c requirements.txt open-clip-torch==3.3.0 lightly==1.6.0 pytorch-metric-learning==2.9.0
	$(BIN)/python benchmarks/loss_scaling.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/loss_speed.py

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
