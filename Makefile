# contrastkit — set-up, demo and tests. A fresh machine needs only Python 3.11 and make.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# On a shared 2-core machine spinning OpenMP threads slow everything down.
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

EMOJI  := .cache/npm/node_modules/emoji-datasource-google/emoji.json

.PHONY: setup data fashion-mnist fonts speech chromium demo demo-fashion demo-emoji test test-all lint bench docs clean

setup: $(STAMP) data

# Real data (docs/real-data.md): Fashion-MNIST from Debian, emoji image-name pairs from npm;
# DejaVu fonts from Debian for CLIPPO's rendered text (tower rendered_text, docs/models.md);
# the espeak-ng speech synthesiser from Debian for spoken captions (contrastkit.data.speech);
# Chromium and its driver from Debian for the browser test of contrastkit report (tests/report/).
data: fashion-mnist fonts speech chromium $(EMOJI)

fashion-mnist:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif ! command -v apt-get >/dev/null; then echo "warning: no apt-get: Fashion-MNIST tests will be skipped (docs/real-data.md)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q dataset-fashion-mnist || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q dataset-fashion-mnist; }; fi

fonts:
	@if [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then :; \
	elif ! command -v apt-get >/dev/null; then echo "warning: no apt-get: CLIPPO (rendered_text) tests will be skipped"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q fonts-dejavu-core || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q fonts-dejavu-core; }; fi

speech:
	@if command -v espeak-ng >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "warning: no apt-get: speech (espeak-ng) tests will be skipped"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q espeak-ng || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q espeak-ng; }; fi

chromium:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif ! command -v apt-get >/dev/null; then echo "warning: no apt-get: the report browser test (Chromium) will be skipped"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium chromium-driver || { $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; }; fi

$(EMOJI):
	@if command -v npm >/dev/null; then npm install --silent --no-save --prefix .cache/npm emoji-datasource-google@16.0.0; \
	else echo "warning: no npm: emoji tests will be skipped (docs/real-data.md)"; fi

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup  ## train + evaluate CLIP on built-in Shapes (runs/demo)
	$(BIN)/contrastkit demo

demo-fashion: setup  ## LiT on Fashion-MNIST: locked MiniLM text tower, CNN from scratch (runs/fashion-lit*)
	$(BIN)/contrastkit demo fashion

demo-emoji: setup  ## frozen EfficientNet-Lite0 + MiniLM, trained heads, on emoji names (runs/emoji)
	$(BIN)/contrastkit demo emoji

test: setup  ## the test suite CI runs (slow tests excluded)
	$(BIN)/python -m pytest -q

test-all: setup  ## including @pytest.mark.slow
	$(BIN)/python -m pytest -q -m ""

bench: setup  ## benchmarks of docs/performance.md (installs open_clip for the comparison rows)
	$(BIN)/pip install --quiet -c requirements.txt open-clip-torch==3.3.0 lightly==1.6.0 pytorch-metric-learning==2.9.0
	$(BIN)/python benchmarks/loss_scaling.py
	$(BIN)/python benchmarks/eval_scaling.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/loss_speed.py
	$(BIN)/python benchmarks/data_throughput.py

lint: setup
	$(BIN)/ruff check .

docs: setup  ## topic pages + API reference from the docstrings (mkdocs.yml) -> site/; warnings are errors
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
