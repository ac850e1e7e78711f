#!/usr/bin/env bash
# Fingerprint of the demo's first training run (seed 1): steps 1-4 of scripts/demo.sh, then t2c_from_pretrained and
# s2c_from_pretrained for seed 1 with their dev evaluations; prints a sha256 prefix per output file (data folder,
# evaluations) and per checkpoint's model tensors. Two checkouts give the same lines when they compute the same
# thing; OUT must be the same path both times (the data folder's .tsv files record it).
# Usage: [VENV=.venv] [ERA=old] scripts/demo_fingerprint.sh REPO OUT
#   ERA=old: a checkout from before the command convention (--out-dir, xmodal-prep-slue, --config-dir config)
set -euo pipefail
REPO=$(realpath "$1"); OUT=$(realpath -m "$2"); ERA=${ERA:-new}
VENV=$(realpath "${VENV:-$REPO/.venv}")
export OMP_NUM_THREADS=1 PATH=$VENV/bin:$PATH PYTHONPATH=$REPO
cd /tmp
if [ -e "$OUT" ] && [ ! -e "$OUT/.fingerprint" ]; then
  echo "demo_fingerprint.sh: $OUT exists and is not an earlier fingerprint folder; choose another OUT" >&2; exit 2
fi
rm -rf "$OUT"; mkdir -p "$OUT/logs"; touch "$OUT/.fingerprint"
if [ "$ERA" = old ]; then OD=--out-dir; CONFIG="--config-dir $REPO/config"; PREP=xmodal-prep-slue
else OD=--out; CONFIG=""; PREP=xmodal-prepare-slue; fi
xmodal-make-official-checkpoint $OD "$OUT/pretrained" --size tiny --seed 1 --overwrite >/dev/null
xmodal-make-demo-corpus --out "$OUT/slue-voxceleb" --seed 1 --n-fine-tune 480 --n-dev 320 --overwrite --prosody 2 >/dev/null
$PREP --slue-dir "$OUT/slue-voxceleb" --out "$OUT/data" --spm "$OUT/pretrained/spm_char.model" \
  --dict "$OUT/pretrained/dict.txt" --valid-from-fine-tune 0.2 --balance dup_equal --few-shot 4,8 --seed 1 --overwrite >/dev/null
for task in s2c t2c; do
  xmodal-import-official --checkpoint "$OUT/pretrained/speecht5_base.pt" --task $task --data "$OUT/data" \
    --out "$OUT/init/$task.pt" --seed 1 --overwrite >/dev/null
done
for task in t2c s2c; do
  fairseq-hydra-train $CONFIG --config-name ${task}_demo task.data="$OUT/data" dataset.train_subset=train.dup_equal \
    dataset.valid_subset=valid common.seed=1 checkpoint.finetune_from_model="$OUT/init/$task.pt" \
    hydra.run.dir="$OUT/runs/$task" optimization.max_update=600 > "$OUT/logs/$task.log" 2>&1
  xmodal-evaluate --checkpoint "$OUT/runs/$task/checkpoints/checkpoint_best.pt" --task $task --data "$OUT/data" \
    --split dev $OD "$OUT/evals/$task" --overwrite > /dev/null 2>&1
done
python - "$OUT" 2>/dev/null <<'PY'
import hashlib, os, sys, torch
out = sys.argv[1]
def tensors(path):
    sd = torch.load(path, map_location="cpu", weights_only=False)["model"]
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode()); h.update(sd[k].numpy().tobytes())
    return h.hexdigest()[:16]
def fhash(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
rows = []
for root, _, files in os.walk(os.path.join(out, "data")):
    for f in sorted(files):
        if f.endswith((".tsv", ".txt", ".csv")) or f.startswith(("train", "valid", "dev", "test")):
            p = os.path.join(root, f); rows.append((os.path.relpath(p, out), fhash(p)))
for t in ("s2c", "t2c"):
    rows.append((f"init/{t}.pt model tensors", tensors(os.path.join(out, "init", f"{t}.pt"))))
    rows.append((f"runs/{t} checkpoint_best.pt model tensors", tensors(os.path.join(out, "runs", t, "checkpoints", "checkpoint_best.pt"))))
    rows.append((f"runs/{t} checkpoint_last.pt model tensors", tensors(os.path.join(out, "runs", t, "checkpoints", "checkpoint_last.pt"))))
    for f in sorted(os.listdir(os.path.join(out, "evals", t))):
        rows.append((f"evals/{t}/{f}", fhash(os.path.join(out, "evals", t, f))))
for r in sorted(rows):
    print(f"{r[1]}  {r[0]}")
PY
