"""Data-parallel training through fairseq's own distributed code, on CPU with gloo (docs/sweeps.md section 7).

Every run is a real `fairseq-hydra-train` (or `torchrun ... fairseq-hydra-train`) process of a tiny demo recipe on the
conftest corpus. The reference is one process with batch B and update_freq 2; the parallel runs are 2 ranks with batch
B each. fairseq's sharded iterator gives rank r the batches r, r+2, ... of the same seeded batch list, so update k sees
the same two batches in both runs, and the summed gradient is the same sum of the same two per-batch gradients:
the parameters must agree to TOLERANCE (measured: bit-identical, max |diff| = 0.0, for t2c, s2c and bucketed s2c).
"""
import importlib
import inspect
import io
import os
import re
import signal
import socket
import subprocess
import time

import pytest
import torch

from conftest import BIN, CONFIG_DIR, hydra_train, run_cli, shared_run
from fairseq_xmodal import fairseq_log, fairseq_patches, sweeps

TOLERANCE = 1e-6  # max |parameter difference| allowed between 2 ranks and 1 process x update_freq 2 (measured: 0.0)
BATCH = 4
T2C_UPDATES = 24  # 60 training rows / (4 x 2) -> 8 updates per epoch: three epochs, interval saves inside them
SAVE_EVERY = 4
TWO_RANKS = ("distributed_training.distributed_world_size=2",)
UF2 = ("optimization.update_freq=[2]",)
TIMING = {"wps", "ups", "wall", "train_wall", "gb_free"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe(corpus_dir, init, updates, *extra):
    return (f"task.data={corpus_dir}", f"checkpoint.finetune_from_model={init}", f"optimization.max_update={updates}",
            f"dataset.batch_size={BATCH}", "common.log_interval=1", *extra)


def t2c_recipe(corpus_dir, imported_init):
    return recipe(corpus_dir, imported_init["t2c"], T2C_UPDATES, f"checkpoint.save_interval_updates={SAVE_EVERY}")


def t2c_reference(tmp_path_factory, corpus_dir, imported_init):
    """1 process x batch 4 x update_freq 2, shared by this file and test_distributed_slurm.py."""
    return shared_run(tmp_path_factory, "t2c_uf2_reference", *t2c_recipe(corpus_dir, imported_init), *UF2)


def last_state(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoints", "checkpoint_last.pt"), map_location="cpu",
                      weights_only=False)


def max_param_diff(run_a, run_b) -> float:
    a, b = last_state(run_a), last_state(run_b)
    assert a["model"].keys() == b["model"].keys()
    assert a["optimizer_history"][-1]["num_updates"] == b["optimizer_history"][-1]["num_updates"]
    return max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])


def assert_same_logs(run_a, run_b):
    """Criterion sums (loss, accuracy, macro P/R/F1, per-class recall from summed confusion counts), wpb, bsz, lr:
    identical. gnorm: the norm of identical gradients, reduced in another order (last logged digit may differ)."""
    a, b = logged(run_a), logged(run_b)
    assert [(name, sorted(s)) for name, s in a] == [(name, sorted(s)) for name, s in b]
    for (name, sa), (_, sb) in zip(a, b):
        assert {k: v for k, v in sa.items() if k != "gnorm"} == {k: v for k, v in sb.items() if k != "gnorm"}, name
        if "gnorm" in sa:  # train lines only
            assert sa["gnorm"] == pytest.approx(sb["gnorm"], rel=1e-5)
    return a


def logged(run_dir, loggers=("train_inner", "valid")):
    """Every progress line of these loggers, without timing: [(logger, {stat: value})]."""
    out = []
    for rec in fairseq_log.log_lines(os.path.join(run_dir, "hydra_train.log")):
        if rec.logger in loggers:
            stats = fairseq_log.parse_stats(rec.logger, rec.msg)
            # valid wpb/bsz are means per validation step, and 2 ranks take 2 valid batches per step: not sums
            skip = TIMING | ({"wpb", "bsz"} if rec.logger == "valid" else set())
            out.append((rec.logger, {k: v for k, v in stats.items() if k not in skip}))
    return out


# ------------------------------------------------------------------------------------------------ the patches


def test_patched_fairseq_functions_keep_their_signatures():
    """fairseq_patches was written against these signatures; a fairseq upgrade that changes one must be looked at."""
    for name, expected in fairseq_patches.PATCHED.items():
        module, func = name.split(":")
        fn = fairseq_patches._original.get(func) or getattr(importlib.import_module(module), func)
        assert str(inspect.signature(fn)) == expected, f"{name} changed: {inspect.signature(fn)}"
    from fairseq.distributed import utils as dist_utils

    assert dist_utils.call_main is fairseq_patches.call_main  # installed by importing fairseq_xmodal


def test_rank0_checkpoint_broadcast_loads_weights_only(imported_init):
    """What rank 0 sends the other ranks (fairseq's _broadcast_object_slow: torch.save of the loaded state, tensors
    split out) loads through the weights-only loader; an object that would run code still does not."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as dist_utils
    from omegaconf import DictConfig

    from fairseq_xmodal.safe_load import UnsafeCheckpointError, safe_torch_load

    state = checkpoint_utils.load_checkpoint_to_cpu(imported_init["t2c"])
    assert isinstance(state["cfg"], DictConfig)  # fairseq turns the saved dict back into a DictConfig
    tensors = []
    obj = dist_utils._split_tensors_from_obj(state, tensors)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    received = safe_torch_load(buffer, map_location="cpu")
    assert isinstance(received["cfg"], DictConfig) and received["cfg"].task._name == "t2c"
    assert len(tensors) == len(state["model"])

    class RunsCode:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = io.BytesIO()
    torch.save({"cfg": state["cfg"], "x": RunsCode()}, evil)
    evil.seek(0)
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        safe_torch_load(evil, map_location="cpu")


def test_launch_that_cannot_start_exits_2_with_one_line(corpus_dir, tmp_path):
    """No GPU and no CPU route; and a rank whose peers never come (torchrun-style environment, one rank started)."""
    if torch.cuda.device_count() == 0:  # the machines this runs on in CI
        proc = hydra_train("t2c_demo", str(tmp_path / "gpu"), f"task.data={corpus_dir}", "common.cpu=false",
                           *TWO_RANKS, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "no CUDA GPU is visible; to train on CPU set common.cpu=true" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "gpu" / "checkpoints").exists()

    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "XMODAL_DIST_TIMEOUT_S": "4"}
    proc = run_cli(["fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", "t2c_demo",
                    f"task.data={corpus_dir}", f"hydra.run.dir={tmp_path / 'alone'}"], check=False, env=env,
                   cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("fairseq-xmodal distributed:")]
    assert "rank 0 of 2 could not join the others at env:// within 4 s" in line and "XMODAL_DIST_TIMEOUT_S" in line
    assert "Traceback" not in proc.stderr


def test_cpu_route_refuses_nccl_and_torch_ddp(capsys):
    from omegaconf import OmegaConf

    def cfg(**dist):
        return OmegaConf.create({"common": {"cpu": True, "tpu": False}, "distributed_training": {
            "distributed_world_size": 2, "distributed_backend": "gloo", "ddp_backend": "legacy_ddp",
            "distributed_init_method": None, "distributed_port": -1, "distributed_rank": 0,
            "distributed_no_spawn": False, "device_id": 0, **dist}})

    assert fairseq_patches.plan_cpu_launch(cfg()) is True  # one node: fairseq spawns the 2 ranks
    for bad, hint in (({"distributed_backend": "nccl"}, "distributed_backend=gloo"),
                      ({"ddp_backend": "pytorch_ddp"}, "ddp_backend=legacy_ddp")):
        with pytest.raises(SystemExit) as e:
            fairseq_patches.plan_cpu_launch(cfg(**bad))
        assert e.value.code == 2 and hint in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- 2 ranks = uf 2


@pytest.fixture(scope="module")
def t2c_runs(tmp_path_factory, corpus_dir, imported_init):
    reference = t2c_reference(tmp_path_factory, corpus_dir, imported_init)
    spawned = tmp_path_factory.mktemp("dist") / "t2c_2ranks"
    hydra_train("t2c_demo", str(spawned), *t2c_recipe(corpus_dir, imported_init), *TWO_RANKS)
    return str(reference), str(spawned)


def check_same_training(reference, parallel, corpus_dir, task, updates):
    diff = max_param_diff(reference, parallel)
    assert diff <= TOLERANCE, diff
    par_logs = assert_same_logs(reference, parallel)
    assert len([1 for name, _ in par_logs if name == "train_inner"]) == updates
    assert sorted(os.listdir(os.path.join(parallel, "checkpoints"))) == sorted(
        os.listdir(os.path.join(reference, "checkpoints")))  # rank 1 wrote no checkpoint of its own
    with open(os.path.join(parallel, "hydra_train.log")) as f:
        log = f.read()
    assert "distributed training on CPU: world size 2" in log
    # the last validation (after the last update, both ranks sharing the valid batches) scored every valid row once:
    # it equals xmodal-evaluate's single-process score of the final weights on the full split
    from fairseq_xmodal.evaluation.evaluate import EvalConfig, evaluate_checkpoint

    m = evaluate_checkpoint(EvalConfig(checkpoint=os.path.join(parallel, "checkpoints", "checkpoint_last.pt"), task=task,
                            data=corpus_dir, split="valid", out_dir=os.path.join(parallel, "eval_valid"), cpu=True))
    last_valid = [s for name, s in par_logs if name == "valid"][-1]
    assert last_valid["num_updates"] == updates and m["rows"] == 24
    assert sum(map(sum, m["confusion_matrix"]["counts"])) == 24
    for key in ("accuracy", "macro_f1", "macro_precision", "macro_recall"):
        assert last_valid[key] == pytest.approx(m[key] / 100, abs=6e-5), key  # logged with 4 decimals


def test_two_ranks_equal_update_freq_2_t2c(t2c_runs, corpus_dir):
    check_same_training(*t2c_runs, corpus_dir, "t2c", T2C_UPDATES)


@pytest.mark.parametrize("config", ["s2c_demo", "s2c_bucketed_demo"])
def test_two_ranks_equal_update_freq_2_s2c(config, corpus_dir, imported_init, tmp_path):
    """s2c with fixed batches of 4, and with length-bucketed batches (at most 48,000 padded samples each)."""
    updates = 6
    extra = () if config == "s2c_demo" else ("dataset.batch_size=null",)
    common = recipe(corpus_dir, imported_init["s2c"], updates, *extra)
    reference, parallel = str(tmp_path / "uf2"), str(tmp_path / "2ranks")
    hydra_train(config, reference, *common, *UF2)
    hydra_train(config, parallel, *common, *TWO_RANKS)
    check_same_training(reference, parallel, corpus_dir, "s2c", updates)


def test_two_ranks_equal_update_freq_2_t2c_bucketed(corpus_dir, imported_init, tmp_path):
    """t2c with length-bucketed batches (at most 80 padded tokens, 2 or 3 rows, fairseq's max_tokens) instead of fixed 4."""
    updates = 6
    common = recipe(corpus_dir, imported_init["t2c"], updates, "dataset.batch_size=null", "dataset.max_tokens=80",
                    "dataset.required_batch_size_multiple=1")
    reference, parallel = str(tmp_path / "uf2"), str(tmp_path / "2ranks")
    hydra_train("t2c_demo", reference, *common, *UF2)
    hydra_train("t2c_demo", parallel, *common, *TWO_RANKS)
    check_same_training(reference, parallel, corpus_dir, "t2c", updates)
    sizes = {stats["bsz"] for name, stats in logged(parallel) if name == "train_inner"}
    assert len(sizes) > 1, sizes  # the buckets really differ in size


def test_torchrun_takes_ranks_from_the_environment(t2c_runs, corpus_dir, imported_init, tmp_path):
    """torchrun starts both ranks (fairseq reads RANK/WORLD_SIZE/MASTER_*); the sweep callback keeps the books on rank
    0 only (one start, one done), and only rank 0 writes checkpoints."""
    reference, _ = t2c_runs
    run = tmp_path / "torchrun"
    run_cli(["torchrun", "--nproc_per_node=2", f"--master_port={free_port()}", os.path.join(BIN, "fairseq-hydra-train"),
             "--config-dir", CONFIG_DIR, "--config-name", "sweep_init", "sweep/base=t2c_demo",
             f"hydra.run.dir={run}", *t2c_recipe(corpus_dir, imported_init)], cwd=str(tmp_path))
    assert max_param_diff(reference, str(run)) <= TOLERANCE
    assert_same_logs(reference, str(run))
    assert [e["event"] for e in sweeps.read_events(str(run))] == ["start", "done"] and (run / "DONE").exists()
    assert sorted(os.listdir(run / "checkpoints")) == sorted(os.listdir(os.path.join(reference, "checkpoints")))


def test_killed_two_rank_run_resumes_on_two_ranks(t2c_runs, corpus_dir, imported_init, tmp_path):
    """Killed (SIGKILL, both ranks) right after its first interval checkpoint; started again on 2 ranks it resumes
    from checkpoint_last.pt at that update and ends bit-identical to the uninterrupted runs."""
    reference, spawned = t2c_runs
    run = tmp_path / "killed"
    run.mkdir()
    args = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", CONFIG_DIR, "--config-name", "t2c_demo",
            f"hydra.run.dir={run}", *t2c_recipe(corpus_dir, imported_init), *TWO_RANKS]
    proc = subprocess.Popen(args, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    log = run / "hydra_train.log"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and f"checkpoint_1_{SAVE_EVERY}.pt (epoch" in log.read_text():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first = log.read_text()
    assert "done training" not in first
    run_cli(args, cwd=str(tmp_path))
    second = log.read_text()[len(first):]
    resumed = re.findall(r"Loaded checkpoint checkpoints/checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", second)
    assert len(resumed) == 1 and int(resumed[0]) % SAVE_EVERY == 0 and 0 < int(resumed[0]) < T2C_UPDATES
    assert "distributed training on CPU: world size 2" in second and "loading pretrained model" not in second
    assert max_param_diff(spawned, str(run)) == 0.0
    assert max_param_diff(reference, str(run)) <= TOLERANCE
    assert last_state(str(run))["extra_state"]["train_iterator"] == last_state(spawned)["extra_state"][
        "train_iterator"]


def test_task_state_check_runs_on_every_rank(corpus_dir, imported_init, tmp_path):
    """The init checkpoint records Negative, Neutral, Positive; the data folder lists the same labels in another order.
    Rank 0 loads and broadcasts the checkpoint, and each rank checks what it received: both stop, status 2."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    (data / "labels.sent.txt").write_text("Positive\nNeutral\nNegative\n")
    proc = hydra_train("t2c_demo", str(tmp_path / "run"), f"task.data={data}", "optimization.max_update=2",
                       f"checkpoint.finetune_from_model={imported_init['t2c']}", *TWO_RANKS, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # a rank's line is one write, but another process's C++ warning (gloo, as its peer exits) may have begun the line
    lines = [x for x in proc.stderr.splitlines() if "fairseq-xmodal distributed:" in x]
    for rank in (0, 1):
        assert any(f"fairseq-xmodal distributed: rank {rank}: class dictionary mismatch (same labels, "
                   f"other order" in x for x in lines), proc.stderr[-4000:]
    assert not (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").exists()
