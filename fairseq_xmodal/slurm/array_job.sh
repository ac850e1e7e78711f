#!/bin/bash
# One job of a sweep as one task of a Slurm job array: array task i trains row i of a sweep table (docs/sweeps.md).
#
# xmodal-slurm-array writes the table and a ready-to-submit copy of this script with every #SBATCH line filled in:
#   xmodal-slurm-array --config-name sweep_lr_batch task.data=/abs/data ... --submit
# Used by hand instead (resources on the sbatch command line):
#   sbatch --array=0-11%4 --partition=gpu --gpus-per-node=1 --cpus-per-task=8 --mem=64G --time=1-00:00:00 \
#     fairseq_xmodal/slurm/array_job.sh /abs/sweep/slurm/jobs-<hash>.tsv /abs/config sweep_lr_batch [max_requeue]
#
# Table row i+1 (for SLURM_ARRAY_TASK_ID i): <job dir> TAB <override> TAB <override> ...
# The task runs `fairseq-hydra-train --config-dir ... --config-name ... hydra.run.dir=<job dir> <overrides>`.
# - A job dir with a DONE marker is finished: the task exits 0 at once (resubmitting a whole sweep is safe).
# - The job dir is stable, so a requeued task resumes from <job dir>/checkpoints/checkpoint_last.pt with the same
#   update count and data order (fairseq restores the epoch iterator; finetune_from_model is then ignored).
# - SIGUSR1 (sent by Slurm signal_delay seconds before the time limit, --signal=B:USR1@...) or SIGTERM (preemption):
#   the task requeues itself with `scontrol requeue $SLURM_JOB_ID` unless max_requeue restarts were used or a CANCEL
#   file exists next to the table or in the job dir. Progress since the last checkpoint save is lost, so set
#   checkpoint.save_interval_updates to what you can afford to recompute.
# - SIGKILL (the out-of-memory killer, a node failure) cannot be trapped: the task records a `killed` event, and
#   resubmitting the array resumes the job from checkpoint_last.pt exactly as a requeue does.
# - To stop a sweep for good: touch <sweep dir>/slurm/CANCEL, then scancel the array.
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append

set -uo pipefail

USAGE="usage: sbatch --array=0-<N-1> $0 TABLE CONFIG_DIR CONFIG_NAME [MAX_REQUEUE]"
TABLE=${XMODAL_TABLE:-${1:?$USAGE}}
CONFIG_DIR=${XMODAL_CONFIG_DIR:-${2:?$USAGE}}
CONFIG_NAME=${XMODAL_CONFIG_NAME:-${3:?$USAGE}}
MAX_REQUEUE=${XMODAL_MAX_REQUEUE:-${4:-20}}
TRAIN=${XMODAL_TRAIN:-fairseq-hydra-train}
TASK_ID=${SLURM_ARRAY_TASK_ID:?"not an array task: submit with sbatch --array=0-<N-1>"}
RESTARTS=${SLURM_RESTART_COUNT:-0}

say() { echo "[xmodal-array $(date '+%F %T')] task $TASK_ID: $*"; }

row=$(sed -n "$((TASK_ID + 1))p" "$TABLE")
if [ -z "$row" ]; then
    say "no row $((TASK_ID + 1)) in $TABLE"
    exit 1
fi
IFS=$'\t' read -r -a fields <<< "$row"
job_dir=${fields[0]}
overrides=("${fields[@]:1}")

if [ -e "$job_dir/DONE" ]; then
    say "$job_dir finished before (DONE): nothing to do"
    exit 0
fi
mkdir -p "$job_dir"

event() {  # one JSON line in the job's sweep_status.jsonl, read by xmodal-sweep-table
    local line
    line=$(printf '{"event": "%s", "time": "%s", "slurm_job_id": "%s", "slurm_array_task_id": "%s"' \
        "$1" "$(date -Iseconds)" "${SLURM_JOB_ID:-}" "$TASK_ID")
    echo "$line, \"slurm_restart_count\": \"$RESTARTS\"${2:-}}" >> "$job_dir/sweep_status.jsonl"
}

child=""
on_signal() {
    trap '' USR1 TERM
    say "received SIG$1"
    if [ -n "$child" ]; then  # stop training (and every process it started) before anything else
        kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null
        wait "$child" 2>/dev/null
    fi
    if [ -e "$job_dir/DONE" ]; then
        say "training had just finished: nothing to requeue"
        exit 0
    elif [ -e "$(dirname "$TABLE")/CANCEL" ] || [ -e "$job_dir/CANCEL" ]; then
        say "CANCEL file present: not requeueing"
        event cancelled ", \"signal\": \"$1\""
        exit 143
    elif [ "$RESTARTS" -ge "$MAX_REQUEUE" ]; then
        say "stopped by SIG$1 after $RESTARTS requeues (max $MAX_REQUEUE): not requeueing"
        event failed ", \"error\": \"stopped by SIG$1 after $RESTARTS requeues (max_num_timeout $MAX_REQUEUE)\""
        exit 143
    fi
    event requeue ", \"signal\": \"$1\""
    say "requeueing $SLURM_JOB_ID; it resumes from $job_dir/checkpoints/checkpoint_last.pt"
    scontrol requeue "${SLURM_JOB_ID}" || say "scontrol requeue failed"
    exit 0
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

say "job dir $job_dir, start $((RESTARTS + 1)); fairseq output goes to $job_dir/train.log"
echo "===== $(date -Iseconds) slurm job ${SLURM_JOB_ID:-} (array ${SLURM_ARRAY_JOB_ID:-}_${TASK_ID})," \
    "restart $RESTARTS on $(hostname)" >> "$job_dir/train.log"
# job dirs are named from overrides ('=', ',', brackets): quote the path for Hydra's override grammar
quoted_dir="'${job_dir//\'/\\\'}'"
# Several tasks per job (#SBATCH --nodes=N --ntasks-per-node=K, N*K > 1): one fairseq rank per task, started by
# srun; fairseq reads its rank from SLURM_PROCID and meets the others on the first node at distributed_port.
launch=()
if [ "${SLURM_NTASKS:-1}" -gt 1 ]; then
    launch=(srun --kill-on-bad-exit=1)
    say "$SLURM_NTASKS ranks (srun) on ${SLURM_JOB_NODELIST:-?}"
fi
# own process group (setsid), so a signal stops fairseq's worker processes too; in the background, so that bash runs
# the trap as soon as a signal arrives instead of after training
setsid ${launch[@]+"${launch[@]}"} "$TRAIN" --config-dir "$CONFIG_DIR" --config-name "$CONFIG_NAME" \
    "hydra.run.dir=$quoted_dir" ${overrides[@]+"${overrides[@]}"} >> "$job_dir/train.log" 2>&1 &
child=$!
wait "$child"
status=$?
child=""

if [ "$status" -eq 0 ]; then
    [ -e "$job_dir/DONE" ] || date -Iseconds > "$job_dir/DONE"
    say "finished"
    exit 0
fi
if [ "$status" -eq 137 ]; then  # 128 + SIGKILL: no trap ran, nothing was reported by the training itself
    why="killed by SIGKILL (exit status 137): most likely the out-of-memory killer (sacct -j ${SLURM_JOB_ID:-<id>} -o JobID,State,MaxRSS,ReqMem; dmesg), or a node failure"
    say "fairseq-hydra-train was $why. Resubmitting the array resumes it from $job_dir/checkpoints/checkpoint_last.pt, as after a requeue"
    event killed ", \"error\": \"$why; resubmit to resume from checkpoint_last.pt\""
    exit "$status"
fi
error=$(grep -E '^[A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Interrupt)\b' "$job_dir/train.log" | tail -n 1)
say "fairseq-hydra-train exited with status $status: ${error:-see $job_dir/train.log}"
if ! tail -n 1 "$job_dir/sweep_status.jsonl" 2>/dev/null | grep -q '"event": "failed"'; then
    event failed ", \"error\": \"fairseq-hydra-train exited with status $status (see train.log)\""
fi
exit "$status"
