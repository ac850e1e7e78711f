"""A plain, non-editable install works: build the wheel, install it into a fresh venv that reuses this environment's
torch/fairseq/hydra, and from an empty folder outside the checkout run the demo configs, a 2-job multirun and
xmodal-slurm-array against the fake sbatch, with no --config-dir anywhere (the configs are package data)."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAKEBIN = os.path.join(REPO, "tests", "fakebin")
# what a wheel build needs of the checkout; everything else (venvs, outputs, .git) stays behind. Only at the top
# level: a package folder may carry one of these names (fairseq_xmodal/sweeps/).
_TOP_LEVEL_NOT_SOURCE = {".git", ".venv", "venv", "build", "dist", "demo_out", "bench_out", "wheelhouse", "outputs",
                         "multirun", "sweeps", "tests", "docs"}


def _not_source(folder, names):
    top = os.path.abspath(folder) == os.path.abspath(REPO)
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info") or (top and n in _TOP_LEVEL_NOT_SOURCE)}


def _run(args, cwd, env, timeout=600):
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n" \
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv python, env for its commands, an empty working folder outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_not_source)  # an in-tree build would leave build/ and *.egg-info in the checkout
    # this environment has setuptools and wheel; no build isolation, so nothing is downloaded
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
          str(src)], cwd=root, env={**os.environ, "PIP_NO_INDEX": "1"})
    (wheel,) = glob.glob(str(root / "dist" / "fairseq_xmodal-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("fairseq_xmodal/config/t2c_demo.yaml", "fairseq_xmodal/config/model/speecht5_tiny.yaml",
                    "fairseq_xmodal/config/sweep/base/t2c_demo.yaml", "fairseq_xmodal/config/hydra/launcher/slurm.yaml",
                    "fairseq_xmodal/slurm/array_job.sh", "hydra_plugins/xmodal/__init__.py", "data_prep/demo_corpus.py",
                    "fairseq_xmodal/sweeps/callback.py", "fairseq_xmodal/transfer/build.py",
                    "hydra_plugins/xmodal/array_launcher.py"):
        assert shipped in names, shipped
    assert not any(n.startswith(("config/", "slurm/", "tests/", "benchmarks/")) for n in names)

    venv = root / "venv"
    # A venv cannot be made with --system-site-packages over this interpreter when it is itself a venv: instead its
    # site-packages folder (torch, fairseq, hydra, pip) goes after the new venv's own through a .pth file. Only that
    # folder: its own .pth files (an editable install of the checkout) are not processed from there.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=os.environ)
    vpy = str(venv / "bin" / "python")
    site = _run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, os.environ).stdout.strip()
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_parent_env.pth"), "w") as f:
        f.write("\n".join(sorted(parent)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(venv / "bin"), FAKEBIN, os.environ["PATH"]]), PIP_NO_INDEX="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _run([vpy, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=root, env=env)
    # the environment's fairseq provides fairseq-hydra-train; its console script, as pip writes it, for this venv
    train = venv / "bin" / "fairseq-hydra-train"
    train.write_text(f"#!{vpy}\nimport sys\nfrom fairseq_cli.hydra_train import cli_main\nsys.exit(cli_main())\n")
    train.chmod(0o755)
    work = root / "elsewhere"
    work.mkdir()
    where = _run([vpy, "-c", "import fairseq_xmodal, hydra_plugins.xmodal as p; print(fairseq_xmodal.__file__); "
                              "print(p.__file__)"], work, env).stdout.split()
    assert all(w.startswith(site) for w in where), (where, site)  # the wheel's files, not the checkout's
    return vpy, env, work


def test_demo_configs_from_an_empty_folder(installed, corpus_dir):
    vpy, env, work = installed
    for config in ("t2c_demo", "s2c_demo"):
        run = work / f"run_{config}"
        _run(["fairseq-hydra-train", "--config-name", config, f"task.data={corpus_dir}", "optimization.max_update=3",
              f"hydra.run.dir={run}"], cwd=work, env=env)
        assert (run / "checkpoints" / "checkpoint_last.pt").is_file()
        log = (run / "hydra_train.log").read_text()
        assert "speecht5" in log and "num_updates 3" in log
    proc = subprocess.run(["fairseq-hydra-train", "--config-name", "t2c_dem", "task.data=/x"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no config named 't2c_dem'" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(os.listdir(work)) == ["run_s2c_demo", "run_t2c_demo"]  # nothing written beside the runs


def test_two_job_multirun_and_slurm_array(installed, corpus_dir):
    vpy, env, work = installed
    common = ["sweep/base=t2c_demo", "common.seed=1,2", f"task.data={corpus_dir}", "optimization.max_update=2"]
    sweep = work / "sweep_local"
    _run(["fairseq-hydra-train", "--multirun", "--config-name", "sweep_seeds", *common, f"hydra.sweep.dir={sweep}"],
         cwd=work, env=env)
    done = sorted(glob.glob(str(sweep / "*" / "DONE")))
    assert len(done) == 2 and all(os.path.isfile(os.path.join(os.path.dirname(d), "checkpoints", "checkpoint_last.pt"))
                                  for d in done)

    slurm = work / "sweep_slurm"
    proc = _run(["xmodal-slurm-array", "--config-name", "sweep_seeds", *common, f"hydra.sweep.dir={slurm}", "--submit",
                 "--sbatch", os.path.join(FAKEBIN, "sbatch")], cwd=work,
                env={**env, "FAKE_SLURM_DIR": str(work / "fake_slurm")})
    assert "2 jobs" in proc.stdout
    (script,) = glob.glob(str(slurm / "slurm" / "array-*.sbatch"))
    assert os.path.dirname(vpy) in open(script).read()  # the jobs run this install's fairseq-hydra-train
    done = sorted(glob.glob(str(slurm / "*" / "DONE")))
    assert len(done) == 2 and all(os.path.isfile(os.path.join(os.path.dirname(d), "checkpoints", "checkpoint_last.pt"))
                                  for d in done)
