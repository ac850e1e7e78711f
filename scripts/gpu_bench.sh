#!/bin/bash
# The GPU benchmark in one call (docs/performance.md): on a bare machine whose Python has CUDA torch and transformers
# but none of our other dependencies, install those from a local wheel folder (no network), then run
# benchmarks/gpu_bench.py: benchmarks 1-4 in fp32 and bf16, the largest batch of 15.6 s utterances in 80 GB,
# one JSON and one markdown table. About 8 minutes on one H100/H200.
#
#   make wheelhouse                      # beforehand, where the package registries are reachable (same Python minor)
#   PYTHON=/path/to/python scripts/gpu_bench.sh --wheels wheelhouse --device cuda --out bench_out/gpu
#   scripts/gpu_bench.sh --no-install --device cpu --quick --out /tmp/smoke    # the CPU smoke run, current Python
#
# Options: --wheels DIR (default <repo>/wheelhouse), --venv DIR (default <repo>/.bench-venv), --no-install (run with
# $PYTHON as it is); everything else goes to gpu_bench.py (--device, --quick, --out, --budget-s, --threads).
# The bench venv sees $PYTHON's own packages (torch, transformers) through a .pth file and installs the rest into
# itself: fairseq-fixed from its sdist, built with the cython it finds in the wheel folder and the torch of $PYTHON.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=$REPO/wheelhouse
VENV=$REPO/.bench-venv
INSTALL=1
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS=$2; shift 2 ;;
        --venv) VENV=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
die() { echo "gpu_bench.sh: $*" >&2; exit 2; }
say() { echo "[gpu_bench.sh $(date '+%T')] $*"; }

"$PY" -c "import torch, transformers" 2>/dev/null ||
    die "$PY cannot import torch and transformers: set PYTHON to a Python that has them (CUDA torch on a GPU machine)"
TORCH_BEFORE=$("$PY" -c "import torch; print(torch.__version__)")

if [ "$INSTALL" = 1 ]; then
    WHEELS=$(cd "$WHEELS" 2>/dev/null && pwd) || die "no wheel folder $WHEELS: run 'make wheelhouse' where the package \
registries are reachable, with this Python's minor version, and copy the folder here (or give --wheels DIR)"
    ls "$WHEELS"/fairseq_fixed-*.tar.gz >/dev/null 2>&1 ||
        die "$WHEELS has no fairseq_fixed sdist: run 'make wheelhouse'"
    TAG=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
    if ls "$WHEELS"/*-cp3*.whl >/dev/null 2>&1 && ! ls "$WHEELS"/*-"$TAG"-*.whl >/dev/null 2>&1; then
        die "the wheels in $WHEELS are for another Python than $PY ($TAG): run 'make wheelhouse' with a $TAG Python"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV on $PY (torch $TORCH_BEFORE)"
        "$PY" -m venv --without-pip "$VENV"
        SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        # the base Python's package folders, after the venv's own: torch and transformers come from there
        "$PY" -c "import os, sys, sysconfig; std = sysconfig.get_paths()['stdlib']
print('\n'.join(p for p in sys.path if p and os.path.isdir(p) and not p.startswith(std)))" \
            > "$SITE/_xmodal_base_python.pth"
    fi
    VPY=$VENV/bin/python
    "$VPY" -m pip --version >/dev/null 2>&1 || die "$VENV: no pip (neither in the venv nor in $PY)"
    PIP=("$VPY" -m pip install -q --no-index --find-links "$WHEELS")
    say "installing build tools and the runtime requirements from $WHEELS (offline)"
    "${PIP[@]}" cython "setuptools<81" wheel
    "${PIP[@]}" -r "$REPO/requirements/runtime.txt"
    if ! "$VPY" -c "import fairseq" 2>/dev/null; then
        say "building fairseq-fixed from its sdist (cython $("$VPY" -c 'import Cython; print(Cython.__version__)'))"
        # without CUDA_HOME fairseq skips its CUDA-only extensions (libnat_cuda, ngram_repeat_block_cuda): minutes of
        # nvcc that no benchmark and no fairseq_xmodal code uses
        env -u CUDA_HOME MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
            "${PIP[@]}" --no-deps --no-build-isolation fairseq-fixed==0.12.3.1
    fi
    TORCH_AFTER=$("$VPY" -c "import torch; print(torch.__version__)")
    [ "$TORCH_AFTER" = "$TORCH_BEFORE" ] || die "torch changed from $TORCH_BEFORE to $TORCH_AFTER during installation"
    PY=$VPY
fi

cd "$REPO"
say "running benchmarks/gpu_bench.py ${ARGS[*]:-} with $PY"
PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} exec "$PY" -m benchmarks.gpu_bench ${ARGS[@]+"${ARGS[@]}"}
