# Two entry points on a fresh machine: `make test` and `make demo`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-v1

.PHONY: venv test demo bench clean

venv: $(STAMP)

$(STAMP): setup.py requirements/runtime.txt requirements/test.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools<81" wheel
	# torch first and pinned: anything that asks for "torch" later sees it satisfied (no CUDA pull).
	$(BIN)/pip install -q torch==2.13.0 "numpy>=1.26" cython
	# fairseq-fixed declares torchaudio; we never install it, so no deps here.
	$(BIN)/pip install -q --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/runtime.txt
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/test.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, fairseq, fairseq_xmodal; assert torch.__version__.startswith('2.13.0')"
	touch $@
