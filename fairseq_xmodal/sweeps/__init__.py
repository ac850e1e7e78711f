"""Sweeps of `fairseq-hydra-train` jobs: job folder names, per-job bookkeeping, safe resumption, and reading results.

Used by fairseq_xmodal/config/sweep/common.yaml (through the Hydra callback, callback.py), `xmodal-slurm-array` and
`xmodal-sweep-table`; docs/sweeps.md explains the whole workflow. The parts:

  jobs.py      job folder names (the `${xmodal_job_name:}` resolver), per-job status events, the Slurm array table
  resume.py    complete checkpoints and the repair of a half-copied checkpoint_last.pt
  callback.py  the Hydra callback that keeps the books of every job
  results.py   reading a job folder back (status, wall time, best validation) for xmodal-sweep-table

Every job of a sweep lives in `<hydra.sweep.dir>/<job name>`. The job name is built from the job's overrides by the
`${xmodal_job_name:}` resolver (no timestamps), so a relaunched or requeued job finds its
`checkpoints/checkpoint_last.pt` again and fairseq resumes it with the same update count. In that folder:

  DONE                 written when training returned normally; a job started again with DONE present does nothing
  sweep_status.jsonl   one JSON object per event: start / done / failed / skip / requeue / killed (the last two from
                       the Slurm array script), with attempt numbers, Slurm ids, pid and host
  hydra_train.log      fairseq's log (Hydra), appended over attempts; xmodal-sweep-table parses it
  train.log            stdout+stderr of fairseq-hydra-train when run by the Slurm array script
"""
from .jobs import (DONE_FILE, MAX_NAME_BYTES, STATUS_FILE, SweepError, append_event, conflict_message, job_name,
                   override_key, read_events, read_table, recorded_overrides, slurm_ids, write_table)
from .resume import checkpoint_is_complete, newest_complete_checkpoint, repair_last_checkpoint
from .results import last_error_line, read_job, sweep_jobs

__all__ = ["DONE_FILE", "MAX_NAME_BYTES", "STATUS_FILE", "SweepError", "append_event",
           "checkpoint_is_complete", "conflict_message", "job_name", "last_error_line", "newest_complete_checkpoint",
           "override_key", "read_events", "read_job", "read_table", "recorded_overrides", "repair_last_checkpoint",
           "slurm_ids", "sweep_jobs", "write_table"]
