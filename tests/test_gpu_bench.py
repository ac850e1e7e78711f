"""scripts/gpu_bench.sh end to end on CPU (`--device cpu --quick`), so that its first GPU run is not its first run.
The offline installation from the wheel folder is exercised by `make bench-gpu-smoke` (docs/performance.md)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration  # a real benchmark run through scripts/gpu_bench.sh

SCRIPT = os.path.join(REPO, "scripts", "gpu_bench.sh")


def _run(*args, env=None):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_gpu_bench_quick_on_cpu(tmp_path):
    proc = _run("--no-install", "--device", "cpu", "--quick", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(tmp_path / "gpu_bench.json") as f:
        out = json.load(f)
    names = {(x["name"], x["dtype"]) for x in out["items"]}
    for dtype in ("fp32", "bf16"):
        for name in ("bench1/ours", "bench1/hf", "bench1/ours+ckpt", "max_batch/ours", "max_batch/ours+ckpt",
                     "bench3/ours", "bench3/hf", "bench4/ours", "bench4/hf", "bench2/ours/1s", "bench2/hf/2s"):
            assert (name, dtype) in names
    assert all(x["status"] == "ok" for x in out["items"]), [x for x in out["items"] if x["status"] != "ok"]
    by = {(x["name"], x["dtype"]): x["result"] for x in out["items"]}
    for dtype in ("fp32", "bf16"):
        mb = by[("max_batch/ours", dtype)]
        assert mb["max_batch"] >= 1 and mb["utt_per_s"] > 0 and mb["cap_gb"] == out["cap_gb"]
        fits = [p for p in mb["probes"] if p["fits"]]
        assert all(p["peak_gb"] <= out["cap_gb"] for p in fits) and max(p["batch"] for p in fits) == mb["max_batch"]
        assert by[("bench1/ours+ckpt", dtype)]["ckpt"] and by[("bench4/ours", dtype)]["bucketed"]
    with open(tmp_path / "gpu_bench.md") as f:
        table = f.read()
    for heading in ("## 1. One training step", "## Largest batch", "## 4. evaluation throughput",
                    "## 3. training throughput", "## 2. Activation peak", "Not measured: nothing"):
        assert heading in table


def test_gpu_bench_refuses_what_cannot_run(tmp_path):
    proc = _run("--wheels", str(tmp_path / "no_such_folder"), "--venv", str(tmp_path / "venv"), "--device", "cpu")
    assert proc.returncode == 2 and "run 'make wheelhouse'" in proc.stderr and not (tmp_path / "venv").exists()
    import torch

    if not torch.cuda.is_available():  # no GPU here: one line that says how to run the smoke instead
        proc = _run("--no-install", "--device", "cuda", "--out", str(tmp_path))
        assert proc.returncode == 2 and "sees no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
