#!/usr/bin/env bash
# The whole experiment on the embedded demo corpus, with the same commands a researcher runs on SLUE-VoxCeleb.
# Usage: scripts/demo.sh [OUT_DIR]   (make demo runs it inside the project venv)
set -euo pipefail
OUT=$(realpath -m "${1:-demo_out}")
CONFIG=$(cd "$(dirname "$0")/../config" && pwd)
SEED=${SEED:-1}
# The tiny demo model gains nothing from intra-op threads on a 2-core machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
step() { printf '\n=== %s\n' "$*"; }

step "1. A tiny SpeechT5 checkpoint in the official format (stands in for speecht5_base.pt) + its vocabulary"
xmodal-make-official-checkpoint --out-dir "$OUT/pretrained" --size tiny --seed "$SEED" --overwrite

step "2. A SLUE-VoxCeleb-format corpus spoken by espeak-ng"
xmodal-make-demo-corpus --out "$OUT/slue-voxceleb" --seed "$SEED" --overwrite

step "3. Data preparation for both modalities (valid carved from fine-tune; dev kept for reporting)"
xmodal-prep-slue --slue-dir "$OUT/slue-voxceleb" --out "$OUT/data" --spm "$OUT/pretrained/spm_char.model" \
  --dict "$OUT/pretrained/dict.txt" --valid-from-fine-tune 0.2 --balance dup_equal --few-shot 4,8 \
  --seed "$SEED" --overwrite

step "4. Import the pretrained checkpoint for s2c and t2c (strict, with a report)"
for task in s2c t2c; do
  xmodal-import-official --checkpoint "$OUT/pretrained/speecht5_base.pt" --task $task --data "$OUT/data" \
    --out "$OUT/init/$task.pt" --seed "$SEED" --overwrite
done

train() {  # train <task> <run name> <init checkpoint> <train split> [overrides...]
  local task=$1 name=$2 init=$3 split=$4; shift 4
  fairseq-hydra-train --config-dir "$CONFIG" --config-name ${task}_demo task.data="$OUT/data" \
    dataset.train_subset="$split" dataset.valid_subset=valid common.seed="$SEED" \
    checkpoint.finetune_from_model="$init" hydra.run.dir="$OUT/runs/$name" "$@" \
    > "$OUT/logs/$name.log" 2>&1 || { tail -30 "$OUT/logs/$name.log"; exit 1; }
  grep "valid on 'valid'" "$OUT/runs/$name/hydra_train.log" | tail -1 | sed "s/^.*| valid on 'valid' subset/$name: last valid/"
}
evaluate() {  # evaluate <checkpoint> <task> <name>: always on the untouched dev split
  xmodal-evaluate --checkpoint "$1" --task "$2" --data "$OUT/data" --split dev --out-dir "$OUT/evals/$3" \
    --overwrite 2>"$OUT/logs/eval_$3.log" | grep -v "^wrote"
}
# Fresh runs (finetune_from_model is ignored where a checkpoint_last.pt exists) and no stale evaluations.
rm -rf "$OUT/runs" "$OUT/evals" "$OUT/report"
mkdir -p "$OUT/logs" "$OUT/evals"

step "5. Fine-tune t2c and s2c from the pretrained checkpoint (balanced training split, selection on valid)"
train t2c t2c_from_pretrained "$OUT/init/t2c.pt" train.dup_equal optimization.max_update=600
train s2c s2c_from_pretrained "$OUT/init/s2c.pt" train.dup_equal optimization.max_update=600
evaluate "$OUT/runs/t2c_from_pretrained/checkpoints/checkpoint_best.pt" t2c t2c_from_pretrained
evaluate "$OUT/runs/s2c_from_pretrained/checkpoints/checkpoint_best.pt" s2c s2c_from_pretrained

step "6. Transfer both ways (the target modality's prenet comes from the pretrained model; accounting in *.transfer.json)"
xmodal-transfer --source "$OUT/runs/s2c_from_pretrained/checkpoints/checkpoint_best.pt" --task t2c \
  --data "$OUT/data" --modality-from "$OUT/init/t2c.pt" --out "$OUT/init/t2c_from_s2c.pt" --overwrite
xmodal-transfer --source "$OUT/runs/t2c_from_pretrained/checkpoints/checkpoint_best.pt" --task s2c \
  --data "$OUT/data" --modality-from "$OUT/init/s2c.pt" --out "$OUT/init/s2c_from_t2c.pt" --overwrite

step "7. Zero-shot cross-modal evaluation on dev: each trained model, unchanged, on the other modality"
evaluate "$OUT/runs/s2c_from_pretrained/checkpoints/checkpoint_best.pt" t2c zero_shot_s2c_model_on_text
evaluate "$OUT/runs/t2c_from_pretrained/checkpoints/checkpoint_best.pt" s2c zero_shot_t2c_model_on_speech

step "8. Few-shot t2c: from the transferred s2c model versus from the pretrained model (nested k-per-class subsets)"
for k in 4 8; do
  train t2c t2c_from_s2c_k$k "$OUT/init/t2c_from_s2c.pt" train.k$k optimization.max_update=120
  train t2c t2c_from_pretrained_k$k "$OUT/init/t2c.pt" train.k$k optimization.max_update=120
  evaluate "$OUT/runs/t2c_from_s2c_k$k/checkpoints/checkpoint_best.pt" t2c t2c_from_s2c_k$k
  evaluate "$OUT/runs/t2c_from_pretrained_k$k/checkpoints/checkpoint_best.pt" t2c t2c_from_pretrained_k$k
done

step "9. Report: table (markdown + CSV) and plots"
xmodal-report "$OUT/runs" "$OUT/evals" --out "$OUT/report" --overwrite > "$OUT/logs/report.log"
sed '/^!\[/d' "$OUT/report/report.md" | cat -s
python3 - "$OUT/data/dev.sent" "$OUT/evals" <<'PY'
import collections, json, os, sys
gold = [l.strip() for l in open(sys.argv[1]) if l.strip()]
labels = sorted(set(gold)); top = collections.Counter(gold).most_common(1)[0][0]
n = gold.count(top); f1 = 2 * (n / len(gold)) / (n / len(gold) + 1) / len(labels)
print(f"\nmajority-class baseline on dev (always {top}): macro-F1 {100 * f1:.2f}")
for run in ("t2c_from_pretrained", "s2c_from_pretrained"):
    m = json.load(open(os.path.join(sys.argv[2], run, "metrics.json")))
    print(f"{run:22s} dev macro-F1 {m['macro_f1']:.2f}  ({'beats' if m['macro_f1'] > 100 * f1 else 'does NOT beat'} the baseline)")
PY
echo
echo "plots (loss, valid F1, F1 vs shots, confusion matrices) and results.csv: $OUT/report"
