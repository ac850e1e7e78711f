"""The Hydra callback of sweep jobs (fairseq_xmodal/config/sweep/common.yaml: hydra.callbacks.xmodal_sweep)."""
import logging
import os
import socket
from typing import Any, Dict, Optional

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .. import fairseq_patches
from .jobs import (DONE_FILE, SweepError, append_event, conflict_message, last_line, read_events, recorded_overrides,
                   slurm_ids, timestamp)
from .resume import repair_last_checkpoint

logger = logging.getLogger(__name__)


def _skip_finished(cfg, main, **kwargs):
    logger.info("this job finished before (DONE marker in its folder): nothing to do. Delete DONE to train again.")


class _Refuse:
    def __init__(self, message: str):
        self.message = message

    def __call__(self, cfg, main, **kwargs):
        raise SweepError(self.message)


class SweepJobCallback(Callback):
    """Hydra callback for sweep jobs (fairseq_xmodal/config/sweep/common.yaml: hydra.callbacks.xmodal_sweep; on_job_start and
    on_job_end are Hydra's hooks).

    At job start, in the job's own folder: a job with a DONE marker does not train again (fairseq would otherwise run
    one more update past max_update); a folder that already holds a job with *other* overrides (e.g. the same sweep
    relaunched on another task.data, which is left out of folder names) is refused instead of resumed; a half-copied
    checkpoint_last.pt is repaired; a `start` event is recorded. At job end: DONE and a `done` event, or a `failed`
    event with the error. Hydra runs callbacks in the job's process, for submitit jobs as for single runs."""

    def __init__(self) -> None:
        self._action: Optional[str] = None

    @staticmethod
    def _replace_training(fn) -> None:
        # Hydra's callbacks run around the task function but none can stand in for it: fairseq_patches.call_main
        # (fairseq's one training entry, already patched there) runs `fn` instead of training for this job.
        fairseq_patches.stand_in_for_training(fn)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_dir = str(config.hydra.runtime.output_dir)
        overrides = [str(x) for x in config.hydra.overrides.task]
        events = read_events(job_dir)
        previous = recorded_overrides(job_dir, events)
        conflict = conflict_message(job_dir, previous, overrides) if previous is not None else None
        if conflict:
            self._action = "refuse"
            self._replace_training(_Refuse(conflict))
            return
        if os.path.exists(os.path.join(job_dir, DONE_FILE)):
            self._action = "skip"
            append_event(job_dir, "skip", pid=os.getpid(), **slurm_ids())
            self._replace_training(_skip_finished)
            return
        self._action = "run"
        if fairseq_patches.launcher_rank() != 0:  # one process per rank (srun tasks, torchrun): rank 0 keeps the books
            self._action = "rank"
            return
        save_dir = str(OmegaConf.select(config, "checkpoint.save_dir", default="checkpoints"))
        repaired = repair_last_checkpoint(os.path.join(job_dir, save_dir))
        if repaired:
            logger.warning(repaired)
        attempt = 1 + sum(e.get("event") == "start" for e in events)
        extra: Dict[str, Any] = {}
        if os.environ.get("SUBMITIT_EXECUTOR"):
            try:
                import submitit

                env = submitit.JobEnvironment()
                extra = {"submitit_job_id": env.job_id, "logs": [str(env.paths.stdout), str(env.paths.stderr)]}
            except Exception:  # not inside a submitit job after all
                pass
        append_event(job_dir, "start", attempt=attempt, overrides=overrides, pid=os.getpid(),
                     host=socket.gethostname(), repaired=repaired, **slurm_ids(), **extra)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        fairseq_patches.stand_in_for_training(None)
        action, self._action = self._action, None
        if action != "run":  # skipped, refused, or not rank 0
            return
        job_dir = str(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.COMPLETED:
            with open(os.path.join(job_dir, DONE_FILE), "w") as f:
                f.write(timestamp() + "\n")
            append_event(job_dir, "done", pid=os.getpid())
        else:
            error = job_return._return_value
            append_event(job_dir, "failed", error=f"{type(error).__name__}: {last_line(error)}", pid=os.getpid())
