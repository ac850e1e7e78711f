"""Shared fixtures: a learnable corpus, a tiny official-format SpeechT5 checkpoint, and a real fairseq-hydra-train."""
import contextlib
import importlib.resources
import re
import os
import shutil
import subprocess
import sys

# The tiny test models gain nothing from intra-op threads, and on a busy 2-core machine spinning threads make small
# matmuls ~50x slower. Set before torch is imported; training subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402

import fairseq_xmodal  # noqa: E402,F401  (registers tasks/models/criterion)
from corpus import write_corpus  # noqa: E402  (tests/ is on sys.path: pyproject's pytest `pythonpath`)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the packaged configs of the fairseq_xmodal under test (the Hydra plugin puts the same folder on the search path)
CONFIG_DIR = str(importlib.resources.files("fairseq_xmodal") / "config")
BIN = os.path.dirname(sys.executable)


def run_cli(args, cwd=None, check=True, env=None, timeout=900):
    """Run a console script of this venv; on failure show the end of its output."""
    exe = args[0] if os.path.isabs(args[0]) else os.path.join(BIN, args[0])
    proc = subprocess.run([exe] + list(args[1:]), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def hydra_train(config_name, run_dir, *overrides, check=True, cwd=None, timeout=900):
    """The real `fairseq-hydra-train --config-dir config --config-name ...`, in its own process."""
    return run_cli(["fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", config_name,
                    f"hydra.run.dir='{run_dir}'", *overrides], cwd=cwd or run_dir.rsplit("/", 1)[0], check=check,
                   timeout=timeout)


@contextlib.contextmanager
def tiny_mount(path, options):
    """A tmpfs at `path` (root only; skipped elsewhere): 'size=64k' is a full disk, 'ro' a read-only one."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def tiny_model(task, seed=0):
    """A one-layer tiny SpeechT5 classifier for `task`, seeded, no dropout: criterion tests compare exact values."""
    import torch

    from fairseq_xmodal.models.speecht5 import SpeechT5Classifier, SpeechT5TinyConfig

    torch.manual_seed(seed)
    cfg = SpeechT5TinyConfig(encoder_layers=1, decoder_layers=1, dropout=0.0, attention_dropout=0.0,
                             activation_dropout=0.0)
    return SpeechT5Classifier.build_model(cfg, task).train()


@pytest.fixture(autouse=True)
def _reset_fairseq_globals():
    """fairseq keeps the best score in function attributes; never let one test's best leak into another."""
    from fairseq import checkpoint_utils
    from fairseq_cli import train

    yield
    for obj, attr in ((checkpoint_utils.save_checkpoint, "best"), (train.should_stop_early, "best"),
                      (train.should_stop_early, "num_runs")):
        if hasattr(obj, attr):
            delattr(obj, attr)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """train 60 / valid 24 / test 24 utterances, balanced, learnable from speech (tones) and text (sentiment words)."""
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="session")
def official_tiny(tmp_path_factory):
    """A tiny random SpeechT5 pretrain checkpoint in the exact official format, with its spm_char.model/dict.txt."""
    out = str(tmp_path_factory.mktemp("official"))
    run_cli(["xmodal-make-official-checkpoint", "--out", out, "--size", "tiny"])
    return os.path.join(out, "speecht5_base.pt")


@pytest.fixture(scope="session")
def imported_init(official_tiny, corpus_dir, tmp_path_factory):
    """task -> fairseq_xmodal init checkpoint imported from the tiny official checkpoint."""
    out = tmp_path_factory.mktemp("imported")
    paths = {}
    for task in ("s2c", "t2c"):
        paths[task] = str(out / f"{task}_init.pt")
        run_cli(["xmodal-import-official", "--checkpoint", official_tiny, "--task", task, "--data", corpus_dir,
                 "--out", paths[task]])
    return paths


def shared_run(tmp_path_factory, name, *overrides, config="t2c_demo"):
    """One real training per test session, whichever test file asks first (a name always has the same overrides)."""
    run = tmp_path_factory.getbasetemp() / "shared_runs" / name
    if not (run / "checkpoints" / "checkpoint_last.pt").exists():
        run.parent.mkdir(exist_ok=True)
        hydra_train(config, str(run), *overrides)
    return run


def shared_transfer(tmp_path_factory, imported_init, corpus_dir):
    """The imported s2c init transferred to t2c."""
    from fairseq_xmodal.transfer import TransferPlan, transfer

    out = tmp_path_factory.getbasetemp() / "shared_runs" / "s2c_init_as_t2c.pt"
    if not out.exists():
        out.parent.mkdir(exist_ok=True)
        transfer(TransferPlan(source=imported_init["s2c"], task="t2c", data=corpus_dir, out=str(out)))
    return str(out)


def t2c_from_s2c(tmp_path_factory, imported_init, corpus_dir):
    """The shared real run: t2c fine-tuned for 60 updates from the transferred s2c init."""
    init = shared_transfer(tmp_path_factory, imported_init, corpus_dir)
    return shared_run(tmp_path_factory, "t2c_from_s2c", f"task.data={corpus_dir}", "optimization.max_update=60",
                      f"checkpoint.finetune_from_model={init}")


def dict_folder(root, corpus_dir, labels=None, edit_dict=None):
    """A data folder with only the dictionaries (all transfer reads), optionally with edited labels / dict.txt."""
    os.makedirs(root, exist_ok=True)
    for f in ("dict.txt", "spm_char.model", "labels.sent.txt"):
        shutil.copy(os.path.join(corpus_dir, f), root)
    if labels is not None:
        with open(os.path.join(root, "labels.sent.txt"), "w") as f:
            f.write("\n".join(labels) + "\n")
    if edit_dict is not None:
        path = os.path.join(root, "dict.txt")
        with open(path) as f:
            lines = f.readlines()
        with open(path, "w") as f:
            f.writelines(edit_dict(lines))
    return str(root)


# ------------------------------------------------------------------------------------------------ markers
# `integration` (pyproject.toml declares it): the test starts real processes (console scripts, fairseq-hydra-train,
# a sweep, an installed wheel) or needs a fixture that does. Everything else is a fast unit test:
#   pytest -m "not integration"     (the unit tests, about a minute)      pytest -m integration     (end to end)
# A test module may also mark itself (`pytestmark = pytest.mark.integration`); the rule below classifies the rest, so
# a new test needs no bookkeeping.
_PROCESS_FIXTURES = {"official_tiny", "imported_init"}
_PROCESS_CALLS = re.compile(r"\b(run_cli|hydra_train|shared_run|shared_transfer|t2c_from_s2c|subprocess\.|Popen|"
                            r"slurm_array\.main|slurm_array_in_process|_generate|cli_main)\b")


def pytest_collection_modifyitems(config, items):
    import inspect

    for item in items:
        if item.get_closest_marker("integration"):
            continue
        # the test function and every fixture it uses (transitively: fixturenames is the closure)
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        funcs = [getattr(item, "function", None)] + [d.func for ds in defs.values() for d in ds]
        # and the module's own helpers those call (e.g. a helper that starts the command under test)
        module = getattr(item, "module", None)
        for fn in list(funcs):
            try:
                names = set(re.findall(r"\b([A-Za-z_]\w*)\(", inspect.getsource(fn))) if fn is not None else ()
            except (OSError, TypeError):
                names = ()
            funcs += [v for n in names if inspect.isfunction(v := getattr(module, n, None)) and v not in funcs]
        sources = []
        for fn in funcs:
            try:
                sources.append(inspect.getsource(fn) if fn is not None else "")
            except (OSError, TypeError):
                pass
        if _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())) or _PROCESS_CALLS.search("\n".join(sources)):
            item.add_marker(pytest.mark.integration)


# ----------------------------------------------------------------------------------------------------------------
# The fake Slurm of tests/fakebin (sbatch, srun, scontrol), shared by test_sweeps.py and test_distributed_slurm.py

FAKEBIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakebin")
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # several jobs share 2 cores


def fake_slurm_env(root, signal_job_dir=None, save_every=None, **extra):
    """Environment for the fake Slurm; with signal_job_dir, array task 0 gets SIGUSR1 (Slurm's time-limit warning)
    right after that job's first interval checkpoint `checkpoint_<epoch>_<save_every>.pt`."""
    import glob
    import json

    env = {"PATH": FAKEBIN + os.pathsep + os.environ["PATH"], "FAKE_SLURM_DIR": str(root / "fake_slurm")}
    if signal_job_dir is not None:
        env["FAKE_SBATCH_SIGNAL"] = json.dumps({
            "task": 0, "signal": "USR1", "file": glob.escape(signal_job_dir) + "/hydra_train.log",
            "pattern": rf"Saved checkpoint checkpoints/checkpoint_\d+_{save_every}\.pt"})
    return {**env, **extra, **THREADS}


def slurm_array_in_process(args, env, cwd):
    """xmodal-slurm-array in this process (its console script is the same main()), sbatch found on env's PATH:
    (exit code, what it printed)."""
    import io

    from fairseq_xmodal.cli import slurm_array

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(cwd)
        out = io.StringIO()
        mp.setattr(sys, "stdout", out)
        code = slurm_array.main(list(args))
    return code, out.getvalue()
