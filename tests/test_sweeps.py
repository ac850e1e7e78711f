"""Sweeps end to end (docs/sweeps.md): a local multirun with the submitit launcher, the plain `sbatch --array` path run
by the fake Slurm commands in tests/fakebin, a job killed mid-training and requeued (it must resume at its last saved
update, with the same data order as an uninterrupted run), resubmission of finished jobs (a no-op), and the sweep table.

Every real training run is a separate `fairseq-hydra-train` process of the tiny demo recipe on the conftest corpus."""
import csv
import glob
import io
import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from conftest import BIN, CONFIG_DIR, THREADS, fake_slurm_env, run_cli, slurm_array_in_process
from fairseq_xmodal import fairseq_log, sweeps
from fairseq_xmodal.cli import slurm_array, sweep_table
from fairseq_xmodal.sweeps.callback import SweepJobCallback

LOCAL_MAX_UPDATE = 12
SLURM_MAX_UPDATE = 24
SAVE_EVERY = 4


def _valid_lines(job_dir, subset="valid"):
    lines = []
    for rec in fairseq_log.log_lines(os.path.join(job_dir, "hydra_train.log")):
        if rec.logger == subset:
            lines.append(fairseq_log.parse_stats(subset, rec.msg))
    return lines


def _ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------------------------------------ unit level


def test_job_names():
    name = sweeps.job_name(["sweep/batch=bs4_uf2", "optimization.lr=[1e-3]", "task.data=/data/slue",
                            "checkpoint.finetune_from_model=/ckpt/a/speecht5_s2c_init.pt", "+task.foo=1"])
    assert "/" not in name and "task.data" not in name
    assert name.startswith("+task.foo=1,batch=bs4_uf2,checkpoint.finetune_from_model=speecht5_s2c_init.pt-")
    assert name.endswith(",optimization.lr=[1e-3]")
    # same file name in two folders: two job folders
    assert sweeps.job_name(["checkpoint.finetune_from_model=/a/x.pt"]) != sweeps.job_name(
        ["checkpoint.finetune_from_model=/b/x.pt"])
    assert sweeps.job_name([]) == "default"
    long = sweeps.job_name([f"+task.k{i}={'v' * 30}" for i in range(20)])
    assert len(long.encode()) <= sweeps.MAX_NAME_BYTES


def _zip(path, payload=b"x" * 1000):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)


def test_repair_last_checkpoint(tmp_path):
    d = str(tmp_path / "optimization.lr=[0.001]" / "checkpoints")  # job folder names hold glob characters
    os.makedirs(d)
    last = os.path.join(d, "checkpoint_last.pt")
    _zip(os.path.join(d, "checkpoint_1_4.pt"))
    _zip(last)
    assert sweeps.repair_last_checkpoint(d) is None  # complete and newest: untouched
    with open(last, "r+b") as f:  # killed while fairseq copied it
        f.truncate(300)
    os.utime(last, (os.path.getmtime(last) + 5,) * 2)
    assert not sweeps.checkpoint_is_complete(last)
    assert "incomplete" in sweeps.repair_last_checkpoint(d)
    assert sweeps.checkpoint_is_complete(last)
    _zip(os.path.join(d, "checkpoint_2_8.pt"), b"y" * 1000)  # killed before the copy to checkpoint_last.pt
    os.utime(os.path.join(d, "checkpoint_2_8.pt"), (os.path.getmtime(last) + 5,) * 2)
    assert "stale" in sweeps.repair_last_checkpoint(d)
    with zipfile.ZipFile(last) as z:
        assert z.read("archive/data.pkl") == b"y" * 1000
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "checkpoint_last.pt").write_bytes(b"PK\x03\x04 cut")
    assert "moved aside" in sweeps.repair_last_checkpoint(str(lone))  # fairseq then starts over instead of crashing
    assert not (lone / "checkpoint_last.pt").exists()


def test_parse_stats_json_and_simple():
    simple = ("epoch 002 | valid on 'valid' subset | loss 1.602 | accuracy 0.3333 | macro_f1 0.1667 | num_updates 16 "
              "| best_macro_f1 0.1667")
    assert fairseq_log.parse_stats("valid", simple) == {"epoch": 2, "loss": 1.602, "accuracy": 0.3333, "macro_f1": 0.1667,
                                                   "num_updates": 16, "best_macro_f1": 0.1667}
    js = '{"epoch": 1, "dev_loss": "1.708", "dev_macro_f1": "0.25", "dev_num_updates": "8"}'
    assert fairseq_log.parse_stats("dev", js) == {"epoch": 1, "loss": 1.708, "macro_f1": 0.25, "num_updates": 8}
    inner = "epoch 003:      4 / 8 loss=1.701, macro_f1=0.2343, num_updates=20, lr=0.000666667, wall=3"
    assert fairseq_log.parse_stats("train_inner", inner)["num_updates"] == 20


def test_callback_refuses_reused_folder_and_skips_finished(tmp_path):
    from fairseq.distributed import utils as distributed_utils

    real = distributed_utils.call_main
    job_dir = str(tmp_path)

    def cfg(overrides):
        return OmegaConf.create({"hydra": {"runtime": {"output_dir": job_dir}, "overrides": {"task": overrides}},
                                 "checkpoint": {"save_dir": "checkpoints"}})

    first = cfg(["task.data=/data/a", "optimization.lr=[1e-3]"])
    cb = SweepJobCallback()
    cb.on_job_start(config=first)
    assert distributed_utils.call_main is real
    cb.on_job_end(config=first, job_return=JobReturn(status=JobStatus.COMPLETED, _return_value=None))
    assert os.path.exists(os.path.join(job_dir, "DONE"))

    other = cfg(["task.data=/data/b", "optimization.lr=[1e-3]"])  # task.data is not in the folder name
    cb.on_job_start(config=other)
    with pytest.raises(sweeps.SweepError, match="other overrides"):
        distributed_utils.call_main(None, None)
    cb.on_job_end(config=other, job_return=JobReturn(status=JobStatus.FAILED, _return_value=RuntimeError()))
    assert distributed_utils.call_main is real

    cb.on_job_start(config=cfg(["optimization.lr=[1e-3]", "task.data=/data/a"]))  # same job, finished
    assert distributed_utils.call_main(None, None) is None  # training replaced by a no-op
    cb.on_job_end(config=first, job_return=JobReturn(status=JobStatus.COMPLETED, _return_value=None))
    assert distributed_utils.call_main is real
    assert [e["event"] for e in sweeps.read_events(job_dir)] == ["start", "done", "skip"]


def _sweep_params(config_name, *overrides):
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    hydra_init(config_name)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.1"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    params = cfg.hydra.sweeper.params
    return (OmegaConf.to_container(params, resolve=True) if params is not None else {}), cfg


def test_sweep_configs_axes():
    """The axes each sweep config sweeps by default, per recipe (sweep/base)."""
    params, cfg = _sweep_params("sweep_lr_batch")
    assert params == {"lr_scheduler.max_lr": "5e-5,1e-4,2e-4,4e-4", "sweep/batch": "bs1_uf16,bs2_uf8,bs4_uf4"}
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher") and cfg.task._name == "s2c"
    assert list(cfg.optimization.lr) == [1e-8]  # the triangular floor, below every swept peak
    params, cfg = _sweep_params("sweep_lr_batch", "sweep/base=t2c_base", "sweep/batch=bs8_uf2")
    assert params["sweep/batch"] == "bs2_uf8,bs4_uf4,bs8_uf2,bs16_uf1" and cfg.task._name == "t2c"
    assert (cfg.dataset.batch_size, list(cfg.optimization.update_freq)) == (8, [2])  # the pair, from one group option
    assert _sweep_params("sweep_lr_batch", "sweep/base=s2c_demo")[0]["optimization.lr"] == "[3e-4],[1e-3],[3e-3]"
    params, cfg = _sweep_params("sweep_crop", "sweep/base=s2c_demo")
    assert params == {"task.train_crop_samples": "null,80000,160000,320000,457440"}
    assert "train_crop_samples" in cfg.task  # so that the demo recipe can be swept without '+'
    assert _sweep_params("sweep_balance")[0] == {
        "dataset.train_subset": "fine-tune,fine-tune.prune,fine-tune.dup_floor,fine-tune.dup_equal"}
    assert _sweep_params("sweep_fewshot", "sweep/base=t2c_demo")[0] == {
        "dataset.train_subset": "train.k4,train.k8,train.k16,train.k32"}
    params, cfg = _sweep_params("sweep_seeds", "sweep/base=s2c_demo")
    assert params == {"common.seed": "1,2,3"} and cfg.task._name == "s2c"
    params, cfg = _sweep_params("sweep_init")
    assert params == {} and OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${xmodal_job_name:}"
    assert list(cfg.hydra.job.config.override_dirname.exclude_keys) == ["task.data"]
    assert cfg.hydra.callbacks.xmodal_sweep._target_ == "fairseq_xmodal.sweeps.callback.SweepJobCallback"
    slurm = _sweep_params("sweep_init", "hydra/launcher=slurm")[1].hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.max_num_timeout > 0 and slurm.array_parallelism > 0


def _generate(capsys, tmp_path, config_name, *overrides):
    sweep_dir = tmp_path / f"{config_name}-{len(list(tmp_path.iterdir()))}"
    code = slurm_array.main(["--config-dir", CONFIG_DIR, "--config-name", config_name, f"hydra.sweep.dir={sweep_dir}",
                             *overrides])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    table = glob.glob(str(sweep_dir / "slurm" / "jobs-*.tsv"))
    script = glob.glob(str(sweep_dir / "slurm" / "array-*.sbatch"))
    assert len(table) == 1 and len(script) == 1
    return sweeps.read_table(table[0]), open(script[0]).read(), out.out


def test_slurm_array_generation(corpus_dir, tmp_path, capsys):
    """Hydra expands the sweep, every job passes fairseq's config checks, mistakes stop before anything is queued."""
    data = f"task.data={corpus_dir}"
    a, b = tmp_path / "a" / "init.pt", tmp_path / "b" / "init.pt"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"")
    rows, script, out = _generate(capsys, tmp_path, "sweep_init", "sweep/base=t2c_demo", data,
                                  f"checkpoint.finetune_from_model={a},{b}", "hydra.launcher.partition=gpu",
                                  "--submit", "--sbatch", "echo")
    assert len({r[0] for r in rows}) == 2 and all("init.pt-" in r[0] for r in rows)  # same file name, two folders
    assert all(r[0].startswith(str(tmp_path)) and "task.data" not in os.path.basename(r[0]) for r in rows)
    assert "#SBATCH --array=0-1%32" in script and "#SBATCH --requeue" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --signal=B:USR1@300" in script and "#SBATCH --gpus-per-node=1" in script
    assert "array-" in out  # `echo <script>` stood in for sbatch
    assert glob.glob(str(tmp_path / "sweep_init-*" / "slurm" / "submissions.log"))

    # a sweep dir reused with another task.data: its finished jobs would otherwise be skipped as if they were new
    other = tmp_path / "other_data"
    shutil.copytree(corpus_dir, other)
    args = ["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", "sweep/base=t2c_demo",
            f"checkpoint.finetune_from_model={a},{b}", f"hydra.sweep.dir={os.path.dirname(rows[0][0])}"]
    sweeps.append_event(rows[0][0], "start", overrides=rows[0][1])
    assert slurm_array.main(args + [f"task.data={other}"]) != 0
    assert "already holds a job with other overrides" in capsys.readouterr().err

    assert slurm_array.main(["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", "sweep/base=t2c_demo", data,
                             f"hydra.sweep.dir={tmp_path / 'bad'}", "+task.no_such_key=1"]) != 0
    assert slurm_array.main(["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", "sweep/base=t2c_demo",
                             "task.data=relative/data", f"hydra.sweep.dir={tmp_path / 'bad'}"]) != 0
    assert "must be an existing folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ local multirun

LOCAL_SAVE_EVERY = 10  # 8 updates per epoch: an interval checkpoint inside epoch 2
LOCAL_JOBS = {  # folder name -> (batch_size, update_freq, lr): 8 examples per update everywhere
    f"base=t2c_demo,batch={b},checkpoint.save_interval_updates={LOCAL_SAVE_EVERY},optimization.lr=[{lr}],"
    f"optimization.max_update={LOCAL_MAX_UPDATE}": (int(b[2]), int(b[-1]), lr)
    for b in ("bs4_uf2", "bs8_uf1") for lr in (0.001, 0.003)
}


def _quoted(path):
    """A job folder name has '=' and ',': quote it for Hydra's override grammar (as slurm/array_job.sh does)."""
    return "'" + path.replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def local_sweep(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    sweep_dir = str(root / "lr_batch")
    run_cli(["fairseq-hydra-train", "--multirun", "--config-dir", CONFIG_DIR, "--config-name", "sweep_lr_batch",
             "sweep/base=t2c_demo", f"task.data={corpus_dir}", f"hydra.sweep.dir={sweep_dir}",
             "optimization.lr=[1e-3],[3e-3]", "sweep/batch=bs4_uf2,bs8_uf1",
             f"optimization.max_update={LOCAL_MAX_UPDATE}", f"checkpoint.save_interval_updates={LOCAL_SAVE_EVERY}"],
            cwd=str(root), env=THREADS, timeout=600)
    return sweep_dir


def test_local_multirun_sweep(local_sweep):
    jobs = sorted(e for e in os.listdir(local_sweep) if not e.startswith(".") and e != "multirun.yaml")
    assert jobs == sorted(LOCAL_JOBS)
    assert len(os.listdir(os.path.join(local_sweep, ".submitit"))) >= 4  # launched by submitit, not in-process
    pids = set()
    for name, (batch, freq, lr) in LOCAL_JOBS.items():
        job_dir = os.path.join(local_sweep, name)
        cfg = OmegaConf.load(os.path.join(job_dir, ".hydra", "config.yaml"))
        assert cfg.dataset.batch_size == batch and list(cfg.optimization.update_freq) == [freq]
        assert list(cfg.optimization.lr) == [lr]
        assert cfg.dataset.batch_size * cfg.optimization.update_freq[0] == 8
        assert cfg.task._name == "t2c" and cfg.model._name == "speecht5" and cfg.model.encoder_layers == 2  # the tiny preset
        for f in ("DONE", "checkpoints/checkpoint_last.pt", "checkpoints/checkpoint_best.pt"):
            assert os.path.exists(os.path.join(job_dir, f)), (name, f)
        assert _ckpt(os.path.join(job_dir, "checkpoints", "checkpoint_last.pt"))["optimizer_history"][-1][
            "num_updates"] == LOCAL_MAX_UPDATE
        job = sweeps.read_job(job_dir)
        assert job["status"] == "done" and job["num_updates"] == LOCAL_MAX_UPDATE and job["best_macro_f1"] is not None
        # fairseq's best is process-global: with separate processes, each job's logged best is its own
        valid = _valid_lines(job_dir)
        assert len(valid) >= 2
        assert valid[-1]["best_macro_f1"] == max(v["macro_f1"] for v in valid)
        starts = [e for e in sweeps.read_events(job_dir) if e["event"] == "start"]
        assert len(starts) == 1 and starts[0]["pid"] != os.getpid()
        pids.add(starts[0]["pid"])
    assert len(pids) == 4  # one process per job


def test_relaunching_a_finished_job_is_a_noop(local_sweep):
    """The submitit path: the same job started again (e.g. the whole sweep relaunched) trains no further update."""
    name = sorted(LOCAL_JOBS)[0]
    job_dir = os.path.join(local_sweep, name)
    overrides = [e for e in sweeps.read_events(job_dir) if e["event"] == "start"][0]["overrides"]
    last = os.path.join(job_dir, "checkpoints", "checkpoint_last.pt")
    before = os.path.getmtime(last)
    run_cli(["fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", "sweep_lr_batch",
             f"hydra.run.dir={_quoted(job_dir)}", *overrides], cwd=local_sweep, env=THREADS)
    assert os.path.getmtime(last) == before
    assert _ckpt(last)["optimizer_history"][-1]["num_updates"] == LOCAL_MAX_UPDATE
    assert sweeps.read_events(job_dir)[-1]["event"] == "skip"
    with open(os.path.join(job_dir, "hydra_train.log")) as f:
        assert "nothing to do" in f.read()


def test_resume_in_a_later_epoch_keeps_data_order(local_sweep, tmp_path):
    """A requeue inside epoch 2: the job resumes from the interval checkpoint saved at update 10 (epoch 2) and sees
    the same batches as the uninterrupted job (the datasets rebuild batches per epoch from seed + epoch)."""
    name = next(n for n, (batch, _, _) in LOCAL_JOBS.items() if batch == 8)
    job_dir = os.path.join(local_sweep, name)
    overrides = [e for e in sweeps.read_events(job_dir) if e["event"] == "start"][0]["overrides"]
    resumed_dir = str(tmp_path / name)
    os.makedirs(os.path.join(resumed_dir, "checkpoints"))
    (interval,) = glob.glob(os.path.join(glob.escape(job_dir), "checkpoints", f"checkpoint_2_{LOCAL_SAVE_EVERY}.pt"))
    shutil.copyfile(interval, os.path.join(resumed_dir, "checkpoints", "checkpoint_last.pt"))
    run_cli(["fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", "sweep_lr_batch",
             f"hydra.run.dir={_quoted(resumed_dir)}", *overrides], cwd=str(tmp_path), env=THREADS)
    with open(os.path.join(resumed_dir, "hydra_train.log")) as f:
        assert f"(epoch 2 @ {LOCAL_SAVE_EVERY} updates)" in f.read()
    resumed = _ckpt(os.path.join(resumed_dir, "checkpoints", "checkpoint_last.pt"))
    reference = _ckpt(os.path.join(job_dir, "checkpoints", "checkpoint_last.pt"))
    assert resumed["optimizer_history"][-1]["num_updates"] == LOCAL_MAX_UPDATE
    assert all(torch.equal(resumed["model"][k], reference["model"][k]) for k in reference["model"])


# ------------------------------------------------------------------------------------------------ sbatch --array


@pytest.fixture(scope="module")
def slurm_sweep(corpus_dir, imported_init, tmp_path_factory):
    """xmodal-slurm-array --submit against the fake sbatch: 2 jobs (the imported init, a broken init file), 2 at a
    time; task 0 gets SIGUSR1 (Slurm's time-limit warning) right after its first checkpoint save and requeues itself.
    An uninterrupted run of task 0's row is trained alongside, as the reference."""
    root = tmp_path_factory.mktemp("slurm")
    sweep_dir = str(root / "init")
    broken = root / "broken" / "init.pt"
    broken.parent.mkdir()
    broken.write_bytes(b"not a checkpoint\n")
    inits = [imported_init["t2c"], str(broken)]
    # batch 2: 30 updates per epoch, so the kill and the resume happen inside epoch 1 (a later-epoch resume is tested below)
    common = ["sweep/base=t2c_demo", f"task.data={corpus_dir}", f"optimization.max_update={SLURM_MAX_UPDATE}",
              f"checkpoint.save_interval_updates={SAVE_EVERY}", "common.log_format=json", "dataset.batch_size=2"]
    first_row = common + [f"checkpoint.finetune_from_model={inits[0]}"]
    first_dir = os.path.join(sweep_dir, sweeps.job_name(first_row))
    fake = fake_slurm_env(root, first_dir, SAVE_EVERY)
    reference_dir = str(root / "reference")
    reference = subprocess.Popen([os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name",
                                  "sweep_init", f"hydra.run.dir={reference_dir}", *first_row], cwd=str(root),
                                 env={**os.environ, **THREADS}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 text=True)
    code, submitted = slurm_array_in_process(
        ["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", *common,
         "checkpoint.finetune_from_model=" + ",".join(inits), f"hydra.sweep.dir={sweep_dir}",
         "hydra.launcher.partition=gpu", "hydra.launcher.array_parallelism=2", "hydra.launcher.max_num_timeout=3",
         "hydra.launcher.timeout_min=90", "--submit"], fake, root)
    assert code == 0, submitted
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    (table,) = glob.glob(os.path.join(sweep_dir, "slurm", "jobs-*.tsv"))
    (script,) = glob.glob(os.path.join(sweep_dir, "slurm", "array-*.sbatch"))
    return {"root": str(root), "sweep_dir": sweep_dir, "table": table, "script": script,
            "rows": sweeps.read_table(table),
            "inits": inits, "first_dir": first_dir, "reference_dir": reference_dir, "fake": fake,
            "submit": submitted}


def test_slurm_array_files_and_run(slurm_sweep):
    s = slurm_sweep
    assert "Submitted batch job" in s["submit"]
    assert [r[0] for r in s["rows"]][0] == s["first_dir"]
    assert [o for r in s["rows"] for o in r[1] if o.startswith("checkpoint.finetune_from_model")] == [
        f"checkpoint.finetune_from_model={p}" for p in s["inits"]]
    with open(s["script"]) as f:
        script = f.read()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", "#SBATCH --mem=64GB", "XMODAL_MAX_REQUEUE=3"):
        assert line in script
    with open(os.path.join(s["fake"]["FAKE_SLURM_DIR"], "submissions.log")) as f:
        submitted = json.loads(f.readline())
    assert submitted["options"]["array"] == "0-1%2" and submitted["script"] == s["script"]

    good = [s["rows"][0][0]]
    for job_dir in good:
        assert os.path.exists(os.path.join(job_dir, "DONE"))
        with open(os.path.join(job_dir, "hydra_train.log")) as f:
            log = f.read()
        assert log.count("loading pretrained model from") == 1  # only at the first start
        job = sweeps.read_job(job_dir)
        assert job["status"] == "done" and job["num_updates"] == SLURM_MAX_UPDATE and "macro_f1" in job["metric"]
    bad = sweeps.read_job(s["rows"][1][0])
    assert bad["status"] == "failed" and re.search(r"Error|Exception", bad["error"]), bad
    logs = sorted(glob.glob(os.path.join(s["sweep_dir"], "slurm", "logs", "*.out")))
    assert len(logs) == 2 and "exited with status" in open(logs[1]).read()


def test_killed_job_requeues_and_resumes(slurm_sweep):
    s = slurm_sweep
    job_dir = s["first_dir"]
    events = sweeps.read_events(job_dir)
    assert [e["event"] for e in events] == ["start", "requeue", "start", "done"]
    assert events[1]["signal"] == "USR1" and events[2]["slurm_restart_count"] == "1"
    assert events[0]["slurm_job_id"] == events[2]["slurm_job_id"]  # requeued, not resubmitted
    with open(os.path.join(job_dir, "hydra_train.log")) as f:
        log = f.read()
    first, second = log.split("loading pretrained model from")[1].split("{'_name'", 1)  # the two starts
    saved = [int(u) for u in re.findall(r"Saved checkpoint \S+ \(epoch \d+ @ (\d+) updates", first)]
    resumed = re.findall(r"Loaded checkpoint checkpoints/checkpoint_last.pt \(epoch (\d+) @ (\d+) updates\)", second)
    assert saved and len(resumed) == 1
    updates = int(resumed[0][1])
    assert saved[-1] <= updates < SLURM_MAX_UPDATE and updates % SAVE_EVERY == 0
    assert sweeps.read_job(job_dir)["resumed_at"] == str(updates)

    # same update count and data order as a run that was never interrupted: bit-identical weights and iterator
    resumed_ckpt = _ckpt(os.path.join(job_dir, "checkpoints", "checkpoint_last.pt"))
    reference = _ckpt(os.path.join(s["reference_dir"], "checkpoints", "checkpoint_last.pt"))
    assert resumed_ckpt["optimizer_history"][-1]["num_updates"] == SLURM_MAX_UPDATE
    assert reference["optimizer_history"][-1]["num_updates"] == SLURM_MAX_UPDATE
    assert resumed_ckpt["extra_state"]["train_iterator"] == reference["extra_state"]["train_iterator"]
    assert resumed_ckpt["model"].keys() == reference["model"].keys()
    assert all(torch.equal(resumed_ckpt["model"][k], reference["model"][k]) for k in reference["model"])


def test_resubmitting_finished_jobs_is_a_noop(slurm_sweep):
    s = slurm_sweep
    done = [s["rows"][0][0]]
    before = {d: (os.path.getsize(os.path.join(d, "hydra_train.log")),
                  os.path.getmtime(os.path.join(d, "checkpoints", "checkpoint_last.pt")),
                  len(sweeps.read_events(d))) for d in done}
    env = {**os.environ, **s["fake"]}
    env.pop("FAKE_SBATCH_SIGNAL")
    proc = subprocess.run(["sbatch", "--array=0", s["script"]], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[-1]
    for task in (0,):
        with open(os.path.join(s["sweep_dir"], "slurm", "logs", f"{job_id}_{task}.out")) as f:
            assert "nothing to do" in f.read()
    after = {d: (os.path.getsize(os.path.join(d, "hydra_train.log")),
                 os.path.getmtime(os.path.join(d, "checkpoints", "checkpoint_last.pt")),
                 len(sweeps.read_events(d))) for d in done}
    assert after == before


def test_submitit_slurm_launcher_with_fake_slurm(corpus_dir, tmp_path):
    """hydra/launcher=slurm (config/hydra/launcher/slurm.yaml) through submitit, against the fake Slurm commands."""
    sweep_dir = str(tmp_path / "sweep")
    env = fake_slurm_env(tmp_path, FAKE_SLURM_MODE="async")  # submitit renames its job files after sbatch returns
    run_cli(["fairseq-hydra-train", "--multirun", "--config-dir", CONFIG_DIR, "--config-name", "sweep_lr_batch",
             "sweep/base=t2c_demo", f"task.data={corpus_dir}", f"hydra.sweep.dir={sweep_dir}", "optimization.lr=[1e-3]",
             "sweep/batch=bs8_uf1", "optimization.max_update=4", "hydra/launcher=slurm",
             "hydra.launcher.partition=gpu"], cwd=str(tmp_path), env=env, timeout=300)
    job_dir = os.path.join(sweep_dir, "base=t2c_demo,batch=bs8_uf1,optimization.lr=[0.001],optimization.max_update=4")
    assert sweeps.read_job(job_dir)["status"] == "done"
    (script,) = glob.glob(os.path.join(sweep_dir, ".submitit", "*", "*_submission.sh"))
    with open(script) as f:
        text = f.read()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@300", "srun"):
        assert line in text


# ------------------------------------------------------------------------------------------------ the table


def test_sweep_table(local_sweep, slurm_sweep, tmp_path, capsys):
    md_path, csv_path = str(tmp_path / "sweeps.md"), str(tmp_path / "sweeps.csv")
    assert sweep_table.main([local_sweep, slurm_sweep["sweep_dir"], "--markdown", md_path, "--csv", csv_path]) == 0
    stdout = capsys.readouterr().out
    with open(md_path) as f:
        assert f.read() == stdout
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert [r["status"] for r in rows].count("done") == 5 and rows[-1]["status"] == "failed"  # no score: last
    assert rows[-1]["error"] and rows[-1]["path"] == slurm_sweep["rows"][1][0]
    scores = [float(r["best_macro_f1"]) for r in rows[:-1]]
    assert scores == sorted(scores, reverse=True)
    for r in rows[:-1]:  # the table's best is the best validation of that job's own log (json and simple formats)
        valid = _valid_lines(r["path"])
        best = max(valid, key=lambda v: v["macro_f1"])
        assert float(r["best_macro_f1"]) == best["macro_f1"] and int(r["best_update"]) == best["num_updates"]
        assert float(r["accuracy"]) == best["accuracy"] and int(r["num_updates"]) == int(r["max_update"])
        assert float(r["wall_s"]) >= 0
    requeued = next(r for r in rows if r["path"] == slurm_sweep["first_dir"])
    assert (requeued["attempts"], requeued["requeues"]) == ("2", "1") and requeued["resumed_at"]
    assert "optimization.lr=[0.003]" in next(r["overrides"] for r in rows if "lr=[0.003]" in r["job"])
    assert "| job | status | best_macro_f1 | best_update |" in stdout
    common = next(line for line in stdout.splitlines() if line.startswith("Common overrides:"))
    assert "sweep/base=t2c_demo" in common and "task.data=" in common

    assert sweep_table.main([local_sweep, "--sort", "loss", "--format", "csv", "--columns", "job,status,loss"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 4 and list(table[0]) == ["job", "status", "loss"]
    losses = [float(r["loss"]) for r in table]
    assert losses == sorted(losses)
