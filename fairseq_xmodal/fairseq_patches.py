"""Every change this package makes to fairseq at runtime, in one place (installed when fairseq_xmodal is imported).

1. Checkpoint loads (fairseq.checkpoint_utils) and rank 0's checkpoint broadcast (fairseq.distributed.utils) go
   through safe_load.safe_torch_load: weights-only unpickling, widened by an allow-list (safe_load.py). fairseq has
   no hook for how it unpickles: load_checkpoint_to_cpu, load_ema_from_checkpoint and _broadcast_object_slow call the
   module-global `torch.load(f, map_location=...)` directly, so each module's `torch` is replaced by TorchWithSafeLoad
   (torch with only `load` swapped). torch's own hooks do not suffice: `torch.serialization.add_safe_globals` only
   widens the weights-only unpickler, and whether fairseq's plain `torch.load(f)` uses that unpickler at all depends
   on the torch version (< 2.6: full pickle) and on TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD; it would also widen every
   `torch.load` of the process, cannot check config strings after unpickling, and its errors name "<stream>".
2. fairseq.distributed.utils.call_main: data-parallel training without CUDA. fairseq infers its launch from
   torch.cuda.device_count(), which is 0 on a CPU machine: its own spawn then starts 0 workers and exits 0 having
   trained nothing, torchrun divides by 0, and a Slurm job gets world size 0. With `common.cpu=true` and
   `distributed_training.distributed_backend=gloo` the launch is worked out here instead, from the same sources fairseq
   reads (distributed_world_size; torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; Slurm's SLURM_PROCID/SLURM_NTASKS/
   SLURM_LOCALID/SLURM_*NODELIST with distributed_port), and then fairseq's own distributed_main runs every rank: the
   same trainer, DDP wrapper (legacy_ddp), all-reduces and checkpoint broadcast as on GPUs. On GPUs fairseq's call_main
   runs unchanged, after a check that the launch can start.
   A launch that cannot start exits with status 2 and one line saying what to set; a rank that has not reached the
   others within XMODAL_DIST_TIMEOUT_S seconds (default 600; also the timeout of every later collective) exits 2 too,
   as does a data folder the task cannot use (task.data no folder, e.g. a relative path after Hydra changed the
   working directory; a missing, malformed or non-UTF-8 file: tasks.base.DataInputError), on every route.

   Why a patch: fairseq has no launcher plug-in; call_main is what fairseq_cli.hydra_train calls.

   Patches 3-4 wrap fairseq functions for the same reason. Trainer.load_checkpoint reads the file and loads the model
   and optimizer itself and never calls task.load_state_dict (the task's own hook sees only what
   load_model_ensemble_and_task loads), and fairseq has no callback before it, after the read, or after rank 0's
   broadcast; so the check has to sit in Trainer.load_checkpoint, load_checkpoint_to_cpu and broadcast_object.

3. Before fairseq's Trainer.load_checkpoint (training_guard.py): a truncated checkpoint_last.pt is repaired, an
   official SpeechT5 checkpoint is refused with the command that converts it, a checkpoint of other labels or symbols
   with xmodal-transfer's message.
4. Task state on every rank: a checkpoint that a trainer loads (resume or finetune_from_model) must record the class
   labels (order included) and text symbols of the data it now trains on (task_state.check_dictionaries, the check of
   xmodal-transfer and xmodal-evaluate). With several ranks the check runs on each rank, on the state rank 0 broadcast; a mismatch stops
   every rank with status 2 and one line, instead of training a head whose rows mean other labels.

5. A job that must not train (sweeps/callback.py: a sweep job finished before, or a folder reused with other
   overrides): Hydra's callbacks run before and after the task function but cannot replace it, and fairseq has no hook
   before training, so the callback hands call_main (patched here anyway, 2.) what to run instead
   (`stand_in_for_training`).

`PATCHED` records the signature of every fairseq function these patches call or replace (the three torch.load
callers above included). tests/test_distributed.py fails when an installed fairseq's inspect.signature differs;
tests/test_fairseq_patches.py fails when install() replaces a function PATCHED does not record or fairseq gains a
torch.load call site. A fairseq upgrade cannot change what the patches do unnoticed.
"""
import contextvars
import datetime
import functools
import logging
import os
import socket
import subprocess
import sys
import types
import warnings

import torch

from . import safe_load, task_state, training_guard

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "XMODAL_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600
EXIT_CANNOT_START = 2

# "module:function" -> str(inspect.signature(...)) of fairseq-fixed 0.12.3.1 (and fairseq 0.12.2)
PATCHED = {
    "fairseq.distributed.utils:call_main": "(cfg: fairseq.dataclass.configs.FairseqConfig, main, **kwargs)",
    "fairseq.distributed.utils:distributed_main": "(i, main, cfg: fairseq.dataclass.configs.FairseqConfig, kwargs)",
    "fairseq.distributed.utils:distributed_init": "(cfg: fairseq.dataclass.configs.FairseqConfig)",
    "fairseq.distributed.utils:_broadcast_object_slow":
        "(obj: Any, src_rank: int, group: object, dist_device: torch.device) -> Any",
    "fairseq.checkpoint_utils:load_checkpoint_to_cpu": "(path, arg_overrides=None, load_on_all_ranks=False)",
    "fairseq.checkpoint_utils:load_ema_from_checkpoint": "(fpath)",
    "fairseq.distributed.utils:broadcast_object":
        "(obj: Any, src_rank: int, group: object, dist_device: Optional[torch.device] = None) -> Any",
    "fairseq.trainer:Trainer.load_checkpoint": "(self, filename, reset_optimizer=False, reset_lr_scheduler=False, "
                                               "optimizer_overrides=None, reset_meters=False)",
}


def _fail(message: str):
    # one write(2) per line: the ranks share stderr, and a line below PIPE_BUF is not interleaved with another's
    line = f"fairseq-xmodal distributed: {message}\n"
    sys.stderr.flush()
    try:
        os.write(sys.stderr.fileno(), line.encode(errors="backslashreplace"))
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured in-process)
        print(line, end="", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CANNOT_START)


# ---------------------------------------------------------------------------------------------- where ranks come from


def _env_int(name: str, default=None):
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def torchrun_env() -> bool:
    return all(k in os.environ for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"))


def slurm_tasks() -> int:
    """Tasks of the current Slurm step (srun) or job; 0 outside Slurm."""
    return _env_int("SLURM_STEP_NUM_TASKS", _env_int("SLURM_NTASKS", 0)) or 0


def launcher_rank() -> int:
    """This process's rank as its launcher (torchrun, srun) numbered it; 0 for a process that fairseq spawns itself.
    Only rank 0 keeps a sweep's bookkeeping (sweeps.SweepJobCallback)."""
    if torchrun_env():
        return int(os.environ["RANK"])
    if slurm_tasks() > 1:
        return _env_int("SLURM_PROCID", 0)
    return 0


def _first_slurm_host() -> str:
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if not nodes:
        _fail("a Slurm task without SLURM_JOB_NODELIST: run the ranks under srun (one task per rank)")
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        _fail(f"`scontrol show hostnames {nodes}` failed ({e}); set distributed_training.distributed_init_method="
              f"tcp://<first node>:<port> instead")
    return out.stdout.split()[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wants_distributed(d) -> bool:
    return bool(d.distributed_init_method) or d.distributed_world_size > 1 or (
        torchrun_env() and int(os.environ["WORLD_SIZE"]) > 1) or (d.distributed_port > 0 and slurm_tasks() > 1)


def plan_cpu_launch(cfg) -> bool:
    """Fill in cfg.distributed_training for a CPU/gloo launch; True when fairseq must spawn the local ranks itself.

    Sources, in fairseq's order: an explicit distributed_init_method (rank and world size as given); torchrun's
    environment; a Slurm step with several tasks and distributed_port > 0 (one rank per task, the first node hosts the
    rendezvous); otherwise one node, distributed_world_size ranks spawned here on a free local port."""
    d = cfg.distributed_training
    if d.distributed_backend != "gloo":
        _fail(f"common.cpu=true needs distributed_training.distributed_backend=gloo (got {d.distributed_backend}: "
              f"nccl runs on GPUs only)")
    if d.ddp_backend not in ("legacy_ddp", "no_c10d"):
        _fail(f"on CPU set distributed_training.ddp_backend=legacy_ddp (got {d.ddp_backend}: torch's "
              f"DistributedDataParallel as fairseq builds it takes a CUDA device id)")
    if d.distributed_init_method:
        if d.distributed_rank is None or d.distributed_world_size < 2:
            _fail("distributed_init_method is set: also set distributed_training.distributed_world_size (>= 2) and "
                  "distributed_rank, or leave distributed_init_method unset")
        return not d.distributed_no_spawn
    if torchrun_env():
        d.distributed_init_method = "env://"
        d.distributed_world_size = int(os.environ["WORLD_SIZE"])
        d.distributed_rank = int(os.environ["RANK"])
        d.device_id = _env_int("LOCAL_RANK", 0)
        d.distributed_no_spawn = True
        return False
    if slurm_tasks() > 1:
        if d.distributed_port <= 0:
            _fail(f"{slurm_tasks()} Slurm tasks: set distributed_training.distributed_port (e.g. 29671) so that "
                  f"the ranks meet on the first node")
        d.distributed_init_method = f"tcp://{_first_slurm_host()}:{d.distributed_port}"
        d.distributed_world_size = slurm_tasks()
        d.distributed_rank = _env_int("SLURM_PROCID", 0)
        d.device_id = _env_int("SLURM_LOCALID", 0)
        d.distributed_no_spawn = True
        return False
    port = d.distributed_port if d.distributed_port > 0 else _free_port()
    d.distributed_init_method = f"tcp://127.0.0.1:{port}"
    d.distributed_rank = d.distributed_rank or 0
    return True


def check_srun_step(d) -> None:
    """Several srun tasks that would not form one job (no distributed_port, init method or torchrun environment) would
    each train the whole model alone and write the same checkpoints: refuse that instead of running N copies."""
    step_tasks = _env_int("SLURM_STEP_NUM_TASKS", 0) or 0
    if step_tasks > 1 and d.distributed_port <= 0 and not d.distributed_init_method and not torchrun_env():
        _fail(f"this srun step has {step_tasks} tasks but distributed_training.distributed_port is unset, so each "
              f"task would train alone and overwrite the others' checkpoints; set distributed_training."
              f"distributed_port (e.g. 29671) for one {step_tasks}-rank job, or run with srun --ntasks=1")


def check_gpu_launch(cfg) -> None:
    """What fairseq's own GPU launch would fail on later (or silently skip), as one line now."""
    d = cfg.distributed_training
    gpus = torch.cuda.device_count()
    if gpus == 0:
        _fail(f"distributed_world_size={d.distributed_world_size} but no CUDA GPU is visible; to train on CPU set "
              f"common.cpu=true distributed_training.distributed_backend=gloo "
              f"distributed_training.ddp_backend=legacy_ddp")
    if not d.distributed_init_method and not torchrun_env() and slurm_tasks() <= 1 \
            and d.distributed_world_size > gpus:
        _fail(f"distributed_world_size={d.distributed_world_size} but only {gpus} GPU(s) are visible on this node; "
              f"lower it, or start one rank per GPU on several nodes (srun, torchrun)")


# ---------------------------------------------------------------------------------------------- the patched functions


def _timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


def distributed_main(i, main, cfg, kwargs):
    """fairseq's distributed_main, after joining the process group ourselves with a timeout (fairseq gives none)."""
    from fairseq.distributed import utils as dist_utils

    d = cfg.distributed_training
    rank = d.distributed_rank if d.distributed_rank is not None else kwargs.get("start_rank", 0) + i
    timeout = _timeout_s()
    try:
        torch.distributed.init_process_group(backend=d.distributed_backend, init_method=d.distributed_init_method,
                                             world_size=d.distributed_world_size, rank=rank,
                                             timeout=datetime.timedelta(seconds=timeout))
    except Exception as e:  # DistStoreError, RuntimeError, ValueError, depending on where the rendezvous failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _fail(f"rank {rank} of {d.distributed_world_size} could not join the others at {d.distributed_init_method} "
              f"within {timeout:.0f} s ({type(e).__name__}: {first[:200]}); start all "
              f"{d.distributed_world_size} ranks, check that the address is reachable, or raise {TIMEOUT_ENV}")
    logger.info(f"rank {rank} of {d.distributed_world_size} joined at {d.distributed_init_method} (gloo, CPU)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Distributed is already initialized")
        dist_utils.distributed_main(i, main, cfg, kwargs)


_stand_in = None  # set by stand_in_for_training: what runs instead of training the current job (5.)


def stand_in_for_training(fn) -> None:
    """For the job about to run in this process, `fn(cfg, main, **kwargs)` runs instead of training; None: train."""
    global _stand_in
    _stand_in = fn


def _main_refusing_bad_data(main, cfg, **kwargs):
    """fairseq's train `main`, with a data folder the task cannot use (no folder, a missing or malformed file, not
    UTF-8: tasks.base.DataInputError) as one line and exit status 2: Hydra would print a traceback and exit 1 for the
    ValueError. A module-level function (in a partial), so that spawned ranks can unpickle it."""
    from .tasks.base import DataInputError

    try:
        return main(cfg, **kwargs)
    except DataInputError as e:
        print(f"fairseq-xmodal: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CANNOT_START) from None


def call_main(cfg, main, **kwargs):
    """fairseq.distributed.utils.call_main with a CPU/gloo route (module docstring) and no silent no-op."""
    from omegaconf import open_dict

    if _stand_in is not None:
        return _stand_in(cfg, main, **kwargs)
    main = functools.partial(_main_refusing_bad_data, main)

    d = cfg.distributed_training
    check_srun_step(d)
    if cfg.common.tpu or not wants_distributed(d):
        return _original["call_main"](cfg, main, **kwargs)
    if not cfg.common.cpu:
        check_gpu_launch(cfg)
        return _original["call_main"](cfg, main, **kwargs)
    with open_dict(cfg):
        spawn = plan_cpu_launch(cfg)
    logger.info(f"distributed training on CPU: world size {d.distributed_world_size}, "
                f"{d.distributed_init_method}, " + ("ranks spawned here" if spawn else f"rank {d.distributed_rank}"))
    if not spawn:
        return distributed_main(d.device_id, main, cfg, kwargs)
    start_rank = d.distributed_rank
    with open_dict(cfg):
        d.distributed_rank = None  # fairseq's distributed_main then numbers the spawned ranks start_rank + i
    kwargs["start_rank"] = start_rank
    nprocs = d.distributed_world_size - start_rank
    try:
        torch.multiprocessing.spawn(fn=distributed_main, args=(main, cfg, kwargs), nprocs=nprocs, join=True)
    except torch.multiprocessing.ProcessExitedException as e:
        _fail(f"rank {e.error_index + start_rank} exited with status {e.exit_code}; see its messages above")
    except torch.multiprocessing.ProcessRaisedException as e:
        last = [line for line in str(e).strip().splitlines() if line.strip()]
        print(str(e), file=sys.stderr)
        raise RuntimeError(f"rank {e.error_index + start_rank} failed: {last[-1] if last else e}") from None


# ---------------------------------------------------------------------------------------------- task state check

_loading = contextvars.ContextVar("xmodal_trainer_loading", default=None)  # (trainer, file) inside load_checkpoint


def check_loaded_state(state) -> None:
    """The loaded checkpoint's class labels and text symbols against the trainer's task (when it records them)."""
    current = _loading.get()
    if current is None or not isinstance(state, dict) or "model" not in state:
        return
    trainer, filename = current
    task = trainer.task
    if not hasattr(task, "class_dictionary") or "class_labels" not in (state.get("task_state") or {}):
        return
    rank = trainer.data_parallel_rank
    try:
        task_state.check_dictionaries(state, filename, task)
    except task_state.DictionaryMismatch as e:
        _fail(f"rank {rank}: {e}".replace("\n", " "))
    logger.info(f"rank {rank}: {filename} records the class labels and text symbols of {task.cfg.data}")


def trainer_load_checkpoint(self, filename, *args, **kwargs):
    training_guard.before_load(self, filename)  # repair of a truncated checkpoint_last.pt, refusals (single process)
    token = _loading.set((self, filename))
    try:
        return _original["Trainer.load_checkpoint"](self, filename, *args, **kwargs)
    finally:
        _loading.reset(token)


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    state = _original["load_checkpoint_to_cpu"](path, arg_overrides, load_on_all_ranks)
    current = _loading.get()
    if current is not None and (load_on_all_ranks or current[0].data_parallel_world_size == 1):
        check_loaded_state(state)  # otherwise every rank checks what rank 0 broadcast (below)
    return state


def broadcast_object(obj, src_rank, group, dist_device=None):
    obj = _original["broadcast_object"](obj, src_rank, group, dist_device)
    check_loaded_state(obj)
    return obj


# ---------------------------------------------------------------------------------------------- installation


class TorchWithSafeLoad(types.ModuleType):
    """`torch` as seen by fairseq's checkpoint code: everything forwarded, except `load` (patch 1 above)."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    load = staticmethod(safe_load.safe_torch_load)


# modules whose global `torch` is TorchWithSafeLoad once install() ran
SAFE_LOAD_MODULES = ("fairseq.checkpoint_utils", "fairseq.distributed.utils")

_original = {}


def install():
    """Apply every patch of this module (idempotent)."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as dist_utils

    for module in (checkpoint_utils, dist_utils):
        if not isinstance(module.torch, TorchWithSafeLoad):
            module.torch = TorchWithSafeLoad()
    from fairseq.trainer import Trainer

    for owner, name, patch, key in ((dist_utils, "call_main", call_main, "call_main"),
                                    (dist_utils, "broadcast_object", broadcast_object, "broadcast_object"),
                                    (checkpoint_utils, "load_checkpoint_to_cpu", load_checkpoint_to_cpu,
                                     "load_checkpoint_to_cpu"),
                                    (Trainer, "load_checkpoint", trainer_load_checkpoint, "Trainer.load_checkpoint")):
        if getattr(owner, name) is not patch:
            _original[key] = getattr(owner, name)
            setattr(owner, name, patch)
