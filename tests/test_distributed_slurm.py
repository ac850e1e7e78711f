"""Multi-node Slurm against the fake sbatch/srun/scontrol of tests/fakebin: a job of 2 "nodes" x 1 task runs one fairseq
rank per task (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST; every node is this machine), meets on
the first node at distributed_port, trains with gloo, and must end with the parameters of the single-process
reference (1 process x batch 4 x update_freq 2, test_distributed.py). Both Slurm paths: the plain sbatch array
(xmodal-slurm-array) with a requeue after a kill, and submitit (hydra/launcher=slurm)."""
import glob
import os
import re

from conftest import CONFIG_DIR, fake_slurm_env, run_cli, slurm_array_in_process
from fairseq_xmodal import sweeps
from fairseq_xmodal.cli import slurm_array
from test_distributed import (SAVE_EVERY, T2C_UPDATES, TOLERANCE, assert_same_logs, free_port, max_param_diff,
                              t2c_recipe, t2c_reference)

TWO_NODES = ("hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1")


def test_array_path_needs_a_port_for_several_tasks(corpus_dir, imported_init, tmp_path, capsys):
    code = slurm_array.main(["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", "sweep/base=t2c_demo",
                             *t2c_recipe(corpus_dir, imported_init), f"hydra.sweep.dir={tmp_path / 'sweep'}",
                             *TWO_NODES])
    assert code != 0
    err = capsys.readouterr().err
    assert "2 Slurm tasks per job" in err and "set distributed_training.distributed_port" in err


def test_srun_step_of_several_tasks_without_a_port_is_refused(corpus_dir, tmp_path):
    """Under `srun --ntasks=2` without distributed_port each task would train the whole model alone into the same
    folder: refused at start, one line, exit 2, nothing written."""
    env = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
           "SLURM_JOB_NODELIST": "node1", "SLURM_STEP_NODELIST": "node1"}
    run = tmp_path / "run"
    proc = run_cli(["fairseq-hydra-train", "--config-dir", CONFIG_DIR, "--config-name", "t2c_demo",
                    f"task.data={corpus_dir}", f"hydra.run.dir={run}"], check=False, env=env, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("fairseq-xmodal distributed:")]
    assert "srun step has 2 tasks but distributed_training.distributed_port is unset" in line
    assert "Traceback" not in proc.stderr and not (run / "checkpoints").exists()


def test_two_node_array_job_matches_reference_and_requeues_on_both_ranks(corpus_dir, imported_init,
                                                                         tmp_path_factory):
    """xmodal-slurm-array --submit with nodes=2: the fake sbatch runs slurm/array_job.sh, which starts the 2 ranks with
    srun. USR1 (Slurm's time-limit warning) right after the first interval checkpoint: the job stops both ranks,
    requeues itself, and both ranks resume from checkpoint_last.pt."""
    reference = str(t2c_reference(tmp_path_factory, corpus_dir, imported_init))
    root = tmp_path_factory.mktemp("slurm_2nodes")
    sweep_dir = str(root / "sweep")
    job = ["sweep/base=t2c_demo", *t2c_recipe(corpus_dir, imported_init),
           f"distributed_training.distributed_port={free_port()}"]
    job_dir = os.path.join(sweep_dir, sweeps.job_name(job))
    code, submitted = slurm_array_in_process(
        ["--config-dir", CONFIG_DIR, "--config-name", "sweep_init", *job, f"hydra.sweep.dir={sweep_dir}", *TWO_NODES,
         "hydra.launcher.max_num_timeout=3", "--submit"], fake_slurm_env(root, job_dir, SAVE_EVERY), root)
    assert code == 0, submitted
    (script,) = glob.glob(os.path.join(sweep_dir, "slurm", "array-*.sbatch"))
    with open(script) as f:
        text = f.read()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text
    (slurm_log,) = glob.glob(os.path.join(sweep_dir, "slurm", "logs", "*.out"))
    with open(slurm_log) as f:
        assert f.read().count("2 ranks (srun)") == 2  # both starts ran 2 tasks

    events = sweeps.read_events(job_dir)
    assert [e["event"] for e in events] == ["start", "requeue", "start", "done"]  # rank 0's books only
    with open(os.path.join(job_dir, "hydra_train.log")) as f:
        log = f.read()
    assert log.count("distributed training on CPU: world size 2, tcp://localhost:") == 4
    for rank in (0, 1):  # each start ran both ranks (logged before rank 1 turns to warnings only)
        assert len(re.findall(rf"world size 2, tcp://localhost:\d+, rank {rank}\n", log)) == 2
    first, second = log.split("loading pretrained model from")[1].split("{'_name'", 1)  # the two starts
    resumed = re.findall(r"Loaded checkpoint checkpoints/checkpoint_last\.pt \(epoch \d+ @ (\d+) updates\)", second)
    assert len(resumed) == 1 and int(resumed[0]) % SAVE_EVERY == 0 and 0 < int(resumed[0]) < T2C_UPDATES
    assert sweeps.read_job(job_dir)["status"] == "done"
    assert max_param_diff(reference, job_dir) <= TOLERANCE  # measured: 0.0


def test_two_node_submitit_job_matches_reference(corpus_dir, imported_init, tmp_path_factory, tmp_path):
    """hydra/launcher=slurm with nodes=2: submitit's own sbatch script starts one task per node with srun, each task
    runs the Hydra job, fairseq takes its rank from SLURM_PROCID."""
    reference = str(t2c_reference(tmp_path_factory, corpus_dir, imported_init))
    sweep_dir = str(tmp_path / "sweep")
    env = fake_slurm_env(tmp_path, FAKE_SLURM_MODE="async")
    job = ["sweep/base=t2c_demo", *t2c_recipe(corpus_dir, imported_init),
           f"distributed_training.distributed_port={free_port()}"]
    run_cli(["fairseq-hydra-train", "--multirun", "--config-dir", CONFIG_DIR, "--config-name", "sweep_init", *job,
             f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=slurm", *TWO_NODES], cwd=str(tmp_path), env=env,
            timeout=600)
    (job_dir,) = [d for d in glob.glob(os.path.join(sweep_dir, "*")) if os.path.isdir(d)]
    assert sweeps.read_job(job_dir)["status"] == "done"
    assert [e["event"] for e in sweeps.read_events(job_dir)] == ["start", "done"]
    (script,) = glob.glob(os.path.join(sweep_dir, ".submitit", "*", "*_submission.sh"))
    with open(script) as f:
        text = f.read()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=1" in text and "srun" in text
    assert max_param_diff(reference, job_dir) <= TOLERANCE
    assert_same_logs(reference, job_dir)
