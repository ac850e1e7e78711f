# On a fresh machine: `make test` installs everything into .venv and runs the suite; `make demo` runs the whole
# experiment on the embedded demo corpus. Both reuse an existing .venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out
PYTEST_ARGS ?=

.PHONY: all venv system-deps test demo bench bench-gpu bench-gpu-smoke wheelhouse clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/runtime.txt requirements/test.txt requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24" "setuptools<81" wheel
	@# torch first and pinned (the local CPU wheel); the constraints file keeps every later install on it.
	$(BIN)/pip install -q -c requirements/constraints.txt torch "numpy>=1.26" cython
	@# fairseq-fixed declares torchaudio, which would pull another torch: install it without dependencies.
	$(BIN)/pip install -q --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/runtime.txt
	$(BIN)/pip install -q -c requirements/constraints.txt -r requirements/test.txt
	@# the checkout itself, editable (pyproject.toml; Hydra finds hydra_plugins/xmodal and the packaged configs)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, fairseq, fairseq_xmodal; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# espeak-ng synthesises the demo corpus; Debian's package, installed once.
system-deps:
	@command -v espeak-ng >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq espeak-ng >/dev/null; fi; }

test: venv system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv system-deps
	PATH=$(CURDIR)/$(BIN):$$PATH scripts/demo.sh $(DEMO_OUT)

bench: venv
	$(BIN)/python -m benchmarks.run_all --quick   # all four benchmarks, < 10 min on 2 CPU cores

# The GPU benchmark in one call (scripts/gpu_bench.sh, docs/performance.md). On a bare GPU machine whose Python has
# CUDA torch and transformers: copy the checkout and a wheelhouse/ made by `make wheelhouse`, then `make bench-gpu`.
WHEELHOUSE ?= wheelhouse
GPU_PY ?= python3
bench-gpu:
	PYTHON=$(GPU_PY) scripts/gpu_bench.sh --wheels $(WHEELHOUSE) --device cuda --out bench_out/gpu

# The same script end to end on CPU: a "bare" Python that has only torch and transformers (scripts/bare_python.py),
# everything else installed offline from the wheelhouse (fairseq-fixed built from its sdist), then the quick bench.
bench-gpu-smoke: venv
	rm -rf bench_out/bare && $(BIN)/python scripts/bare_python.py bench_out/bare
	PYTHON=bench_out/bare/venv/bin/python scripts/gpu_bench.sh --wheels $(WHEELHOUSE) --venv bench_out/bare/bench-venv \
	  --device cpu --quick --out bench_out/gpu_smoke

# Every package the benchmark needs beyond torch and transformers, for an offline install: wheels of the runtime
# requirements and of the build tools, plus fairseq-fixed as its sdist (it builds its extensions on the target, with
# the cython and torch it finds there). Run where the package registries are reachable, with the target's Python
# minor version (wheels are per version and platform).
wheelhouse: venv
	mkdir -p $(WHEELHOUSE)
	$(BIN)/pip wheel -q -w $(WHEELHOUSE) -c requirements/constraints.txt -r requirements/runtime.txt \
	  cython "setuptools<81" wheel "numpy>=1.26"
	@# metadata of the sdist is prepared with this venv's cython and torch (no isolated build env: it would fetch torch)
	$(BIN)/pip download -q -d $(WHEELHOUSE) --no-deps --no-binary :all: --no-build-isolation fairseq-fixed==0.12.3.1
	ls $(WHEELHOUSE) > $(WHEELHOUSE)/CONTENTS.txt

clean:
	rm -rf $(VENV) $(DEMO_OUT) outputs multirun
