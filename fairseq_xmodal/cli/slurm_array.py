"""xmodal-slurm-array: turn a Hydra sweep into a plain `sbatch --array` job, for clusters where the submitit launcher
is not wanted (docs/sweeps.md).

    xmodal-slurm-array --config-name sweep_lr_batch task.data=/abs/data \\
        hydra.sweep.dir=/scratch/me/sweeps/lr hydra.launcher.partition=gpu [--submit]

Arguments after the options are exactly those of `fairseq-hydra-train --multirun`: the sweep is expanded by Hydra
itself (the sweep config's hydra.sweeper.params plus your overrides), every job's config is composed and checked
(unknown keys, missing values, task.data and finetune_from_model paths) before anything is submitted, and job folders
are named as the submitit launchers name them. Resources are the `hydra.launcher.*` keys of the submitit_slurm
launcher config (fairseq_xmodal/config/hydra/launcher/slurm.yaml unless you choose another `hydra/launcher=`), so one set of cluster
settings serves both paths. Written to <hydra.sweep.dir>/slurm/:

    jobs-<hash>.tsv       the sweep table: line i+1 = array task i = `<job dir>\\t<override>\\t...`
    array-<hash>.sbatch   fairseq_xmodal/slurm/array_job.sh with the #SBATCH lines filled in (--array=0-(N-1)%array_parallelism,
                          --requeue, --signal=B:USR1@signal_delay_s, ...); submit it with plain `sbatch`
    logs/%A_%a.out        the tasks' Slurm output (fairseq's own output is in <job dir>/train.log)

The hash is over the table's content, so regenerating a changed sweep never rewrites a table that queued tasks still
read. Resubmitting the same script is safe: finished jobs (DONE) exit at once, the others resume from their
checkpoint_last.pt.
"""
import argparse
import copy
import datetime
import hashlib
import importlib.resources
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Dict, List, Optional, Sequence

from fairseq_xmodal import console, sweeps

from .errors import console_main

# package data of any install (pyproject.toml), never relative to a checkout
TEMPLATE = str(importlib.resources.files("fairseq_xmodal") / "slurm" / "array_job.sh")
CONFIG_DIR = str(importlib.resources.files("fairseq_xmodal") / "config")
# hydra overrides that only matter to the multirun itself, not to a single job run by the array script
_MULTIRUN_ONLY = ("hydra.launcher", "hydra/launcher", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.run",
                  "hydra.mode", "hydra.job.config.override_dirname")
# submitit_slurm launcher keys -> sbatch options (the other keys are handled below)
_SBATCH_KEYS = ("partition", "account", "qos", "constraint", "exclude", "gres", "comment", "cpus_per_gpu",
                "gpus_per_task", "mem_per_gpu", "mem_per_cpu")


LAUNCHER = "hydra_plugins.xmodal.array_launcher.ArrayTableLauncher"


class _Collector:
    """ArrayTableLauncher's launch (hydra_plugins/xmodal/array_launcher.py): composes and checks every job of the sweep
    instead of submitting it."""

    def __init__(self) -> None:
        self.jobs: List[List[str]] = []
        self.names: Dict[str, List[str]] = {}
        self.config = None
        self.params: Dict[str, Any] = {}

    def launch(self, launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.utils import JobReturn, JobStatus
        from omegaconf import open_dict

        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
        from omegaconf import OmegaConf

        if not issubclass(OmegaConf.get_type(launcher.config.hydra.launcher) or object, SlurmQueueConf):
            raise sweeps.SweepError("the launcher must be a submitit_slurm config (hydra/launcher=slurm, or your own "
                                    "config based on submitit_slurm)")
        self.config, self.params = launcher.config, dict(launcher.params)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
            with open_dict(job_cfg.hydra.job):
                job_cfg.hydra.job.num = idx
                job_cfg.hydra.job.id = f"array_{idx}"
            HydraConfig.instance().set_config(job_cfg)
            job_dir = os.path.abspath(os.path.join(str(job_cfg.hydra.sweep.dir), str(job_cfg.hydra.sweep.subdir)))
            task_overrides = [str(x) for x in job_cfg.hydra.overrides.task]
            _check_job(job_cfg, job_dir, ranks_per_job(launcher.params))
            previous = sweeps.recorded_overrides(job_dir)  # the bash script skips DONE folders without asking
            conflict = sweeps.conflict_message(job_dir, previous, task_overrides) if previous is not None else None
            if conflict:
                raise sweeps.SweepError(conflict)
            if job_dir in self.names:
                raise sweeps.SweepError(
                    f"two jobs would share the folder {job_dir}:\n  {' '.join(self.names[job_dir])}\n"
                    f"  {' '.join(task_overrides)}\nRemove the key that tells them apart from "
                    f"hydra.job.config.override_dirname.exclude_keys")
            self.names[job_dir] = task_overrides
            self.jobs.append([job_dir] + task_overrides)
            returns.append(JobReturn(overrides=list(overrides), working_dir=job_dir, status=JobStatus.COMPLETED,
                                     _return_value=None))
        return returns


def ranks_per_job(params: Dict[str, Any]) -> int:
    """Slurm tasks of one job: more than one means one fairseq rank per task, started by srun in array_job.sh."""
    return int(params.get("nodes") or 1) * int(params.get("tasks_per_node") or 1)


def _check_job(job_cfg, job_dir: str, ranks: int = 1) -> None:
    """What fairseq would reject at job start, found before anything waits in a queue."""
    from fairseq.dataclass.initialize import add_defaults
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from omegaconf import OmegaConf, open_dict, read_write

    cfg = copy.deepcopy(job_cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    where = f"job {os.path.basename(job_dir)}"
    try:
        add_defaults(cfg)
        with omegaconf_no_object_check():
            resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception as e:
        raise sweeps.SweepError(f"{where}: {type(e).__name__}: {e}") from e
    port = int((resolved.get("distributed_training") or {}).get("distributed_port") or -1)
    if ranks > 1 and port <= 0:
        raise sweeps.SweepError(f"{where}: {ranks} Slurm tasks per job (nodes x tasks_per_node) run one fairseq rank "
                                f"each and meet on the job's first node: set distributed_training.distributed_port "
                                f"(e.g. 29671)")
    data = (resolved.get("task") or {}).get("data")
    for path in str(data).split(":") if data else []:
        if not os.path.isabs(path) or not os.path.isdir(path):
            raise sweeps.SweepError(f"{where}: task.data={path} must be an existing folder, given as an absolute path "
                                    f"(every job runs in its own folder)")
    init = (resolved.get("checkpoint") or {}).get("finetune_from_model")
    if init and (not os.path.isabs(init) or not os.path.isfile(init)):
        raise sweeps.SweepError(f"{where}: checkpoint.finetune_from_model={init} must be an existing file, given as an "
                                f"absolute path")


def _keep_for_job(override: str) -> bool:
    key = sweeps.override_key(override)
    return not any(key == k or key.startswith(k + ".") for k in _MULTIRUN_ONLY)


def sbatch_directives(params: Dict[str, Any], n_jobs: int, log_dir: str) -> List[str]:
    """#SBATCH lines for the array from the submitit_slurm launcher keys."""
    parallel = params.get("array_parallelism")
    opts = [("job-name", params.get("name") or "sweep"),
            ("array", f"0-{n_jobs - 1}" + (f"%{parallel}" if parallel else "")),
            ("nodes", int(params.get("nodes") or 1)), ("ntasks-per-node", int(params.get("tasks_per_node") or 1))]
    if params.get("gpus_per_node"):
        opts.append(("gpus-per-node", params["gpus_per_node"]))
    if params.get("cpus_per_task"):
        opts.append(("cpus-per-task", params["cpus_per_task"]))
    if params.get("mem_gb"):
        opts.append(("mem", f"{params['mem_gb']}GB"))
    if params.get("timeout_min"):
        opts.append(("time", params["timeout_min"]))
    opts += [(key.replace("_", "-"), params[key]) for key in _SBATCH_KEYS if params.get(key) is not None]
    opts += [("signal", f"B:USR1@{int(params.get('signal_delay_s') or 120)}"), ("requeue", True),
             ("open-mode", "append"), ("output", os.path.join(log_dir, "%A_%a.out"))]
    extra = {str(k).replace("_", "-"): v for k, v in (params.get("additional_parameters") or {}).items()}
    opts = [(k, v) for k, v in opts if k not in extra] + list(extra.items())  # additional_parameters win
    lines = []
    for key, value in opts:
        if value is True:
            lines.append(f"#SBATCH --{key}")
        elif value is not False and value is not None:
            if re.search(r"\s", str(value)):
                raise sweeps.SweepError(f"sbatch option --{key}={value!r}: an #SBATCH line cannot hold spaces")
            lines.append(f"#SBATCH --{key}={value}")
    return lines


def render_script(template: str, directives: List[str], settings: Dict[str, str], setup: Sequence[str],
                  note: str) -> str:
    lines = template.splitlines()
    shebang = lines[0] if lines and lines[0].startswith("#!") else "#!/bin/bash"
    body = [line for line in lines[1:] if not line.startswith("#SBATCH")]
    out = [shebang] + directives + ["", f"# {note}"]
    out += [f"XMODAL_{key}={shlex.quote(value)}" for key, value in settings.items()]
    out += list(setup) + body
    return "\n".join(out) + "\n"


@console_main("xmodal-slurm-array")
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="xmodal-slurm-array", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write a Hydra sweep as a Slurm job array (sweep table + sbatch script), optionally submit it.",
        epilog="Everything after the options is passed to Hydra as for fairseq-hydra-train --multirun, e.g.\n"
               "  xmodal-slurm-array --config-name sweep_lr_batch task.data=/abs/data \\\n"
               "    hydra.sweep.dir=/scratch/me/sweeps/lr hydra.launcher.partition=gpu --submit\n"
               "See docs/sweeps.md.")
    parser.add_argument("--config-dir", "-cd", default=CONFIG_DIR,
                        help="as for fairseq-hydra-train: a folder of your own configs (default: the packaged ones, "
                             f"{CONFIG_DIR})")
    parser.add_argument("--config-name", "-cn", required=True, help="the sweep config, e.g. sweep_lr_batch")
    parser.add_argument("--submit", action="store_true", help="run sbatch on the generated script")
    parser.add_argument("--sbatch", default="sbatch", help="sbatch command (default: sbatch on PATH)")
    parser.add_argument("--template", default=TEMPLATE, help=f"array job script to fill in (default: {TEMPLATE})")
    parser.add_argument("--train", default=None,
                        help="fairseq-hydra-train to run in the jobs (default: the one next to this Python)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides and sweeps, as for fairseq-hydra-train -m")
    console.add_verbose(parser)
    args = parser.parse_args(argv)

    from fairseq_cli import hydra_train
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins

    Plugins.instance()  # Hydra's plugin scan imports hydra_plugins/xmodal/array_launcher.py
    launcher_cls = Plugins.instance().class_name_to_class.get(LAUNCHER)
    if launcher_cls is None:
        print("xmodal-slurm-array: hydra-submitit-launcher is not installed (pip install hydra-submitit-launcher)",
              file=sys.stderr)
        return 2

    overrides = list(args.overrides)
    if not any(sweeps.override_key(o) == "hydra/launcher" for o in overrides):
        overrides.append("hydra/launcher=slurm")
    # Hydra's own sweeper expands the sweep; the launcher it instantiates is ours: it collects instead of submitting
    overrides.append(f"hydra.launcher._target_={LAUNCHER}")
    config_dir = os.path.abspath(args.config_dir)
    collector = _Collector()
    # Kept: sys.argv. Hydra's one public entry to a multirun is the @hydra.main-decorated function (fairseq's
    # hydra_train.cli_main), and it reads its arguments from sys.argv only; the alternative is Hydra's private
    # _run_hydra. Scoped to this call and restored.
    saved_argv = sys.argv
    launcher_cls.collect = collector.launch
    sys.argv = ["xmodal-slurm-array", "--multirun", "--config-dir", config_dir, "--config-name", args.config_name,
                *overrides]
    try:
        GlobalHydra.instance().clear()
        hydra_train.cli_main()
    except SystemExit as e:  # Hydra reports a composition error itself, then exits
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    finally:
        launcher_cls.collect, sys.argv = None, saved_argv
        GlobalHydra.instance().clear()
    if collector.config is None:
        print("xmodal-slurm-array: no jobs were collected: the launcher must be a submitit_slurm config "
              "(hydra/launcher=slurm, or your own config based on submitit_slurm)", file=sys.stderr)
        return 2

    cfg, params = collector.config, collector.params
    sweep_dir = os.path.abspath(str(cfg.hydra.sweep.dir))
    passthrough = [str(o) for o in cfg.hydra.overrides.hydra if _keep_for_job(str(o))]
    rows = [job + passthrough for job in collector.jobs]
    slurm_dir = os.path.join(sweep_dir, "slurm")
    log_dir = os.path.join(slurm_dir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    train = args.train or os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
    settings = {"TABLE": "", "CONFIG_DIR": config_dir, "CONFIG_NAME": args.config_name,
                "MAX_REQUEUE": str(int(params.get("max_num_timeout") or 0)), "TRAIN": train}
    digest = hashlib.sha1(repr((rows, settings, params)).encode()).hexdigest()[:8]
    table = os.path.join(slurm_dir, f"jobs-{digest}.tsv")
    script = os.path.join(slurm_dir, f"array-{digest}.sbatch")
    settings["TABLE"] = table
    try:
        sweeps.write_table(table, rows)
        with open(args.template) as f:
            template = f.read()
        text = render_script(template, sbatch_directives(params, len(rows), log_dir), settings,
                             params.get("setup") or [],
                             f"generated by xmodal-slurm-array {datetime.datetime.now():%Y-%m-%d %H:%M} from "
                             f"--config-name {args.config_name}: {len(rows)} jobs")
    except sweeps.SweepError as e:
        print(f"xmodal-slurm-array: {e}", file=sys.stderr)
        return 2
    with open(script, "w") as f:
        f.write(text)
    os.chmod(script, 0o755)
    done = sum(os.path.exists(os.path.join(r[0], sweeps.DONE_FILE)) for r in rows)
    print(f"{len(rows)} jobs ({done} already DONE) in {sweep_dir}\n  table:  {table}\n  script: {script}")
    if not args.submit:
        print(f"submit with:  sbatch {script}")
        return 0
    proc = subprocess.run([args.sbatch, script], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    with open(os.path.join(slurm_dir, "submissions.log"), "a") as f:
        f.write(f"{datetime.datetime.now().isoformat(timespec='seconds')}\t{script}\t{proc.stdout.strip()}\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
