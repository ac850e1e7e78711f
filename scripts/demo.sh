#!/usr/bin/env bash
# The whole experiment on the embedded demo corpus, with the same commands a researcher runs on SLUE-VoxCeleb.
# Usage: scripts/demo.sh [OUT_DIR]   (make demo runs it inside the project venv)
set -euo pipefail
OUT=$(realpath -m "${1:-demo_out}")
CONFIG=$(cd "$(dirname "$0")/../config" && pwd)
SEED=${SEED:-1}
mkdir -p "$OUT"
step() { printf '\n=== %s\n' "$*"; }

step "1. A tiny SpeechT5 checkpoint in the official format (stands in for speecht5_base.pt) + its vocabulary"
xmodal-make-official-checkpoint --out-dir "$OUT/pretrained" --size tiny --seed "$SEED"

step "2. A SLUE-VoxCeleb-format corpus spoken by espeak-ng"
xmodal-make-demo-corpus --out "$OUT/slue-voxceleb" --seed "$SEED" --overwrite

step "3. Data preparation for both modalities (valid carved from fine-tune; dev kept for reporting)"
xmodal-prep-slue --slue-dir "$OUT/slue-voxceleb" --out "$OUT/data" --spm "$OUT/pretrained/spm_char.model" \
  --dict "$OUT/pretrained/dict.txt" --valid-from-fine-tune 0.2 --balance dup_equal --few-shot 4,8 \
  --seed "$SEED" --overwrite

step "4. Import the pretrained checkpoint for s2c and t2c (strict, with a report)"
for task in s2c t2c; do
  xmodal-import-official --checkpoint "$OUT/pretrained/speecht5_base.pt" --task $task --data "$OUT/data" \
    --out "$OUT/init/$task.pt"
done

step "5. Fine-tune t2c and s2c with fairseq-hydra-train"
for task in t2c s2c; do
  fairseq-hydra-train --config-dir "$CONFIG" --config-name ${task}_demo task.data="$OUT/data" \
    dataset.train_subset=train.dup_equal dataset.valid_subset=valid common.seed="$SEED" \
    checkpoint.finetune_from_model="$OUT/init/$task.pt" hydra.run.dir="$OUT/runs/$task" \
    > "$OUT/runs_$task.log" 2>&1 || { tail -30 "$OUT/runs_$task.log"; exit 1; }
  grep "valid on 'valid'" "$OUT/runs/$task/hydra_train.log" | tail -1 | sed "s/^.*| valid on/$task: valid on/"
done
