#!/usr/bin/env bash
# How cheap can the demo's perceptual teacher be? (studies/pilots.md, "Demo budget round", 2026-12-03)
#
#   bash studies/demo_teacher_budget.sh ARM [ARM ...]     ARM: one of the names in the case below
#
# The demo's own data (python -m Utils.demo_data), its stage 1 shortened to S1_ITERS (default 1000,
# lr 1e-3 cosine, batch 8, patch 64, seed 0), then each ARM's stage 2 at a constant lr (1e-4 unless the arm says) for
# S2_ITERS (default 1200) with weights kept every 100 iterations (--snapshots); each kept copy is
# evaluated on the Demo photos, so one run gives the whole NIQE trajectory of an arm. Second round
# (2026-12-03, later): arms that move the network faster (a 4x learning rate, a 4x adversarial weight) and
# arms that average its walk (--ema: the snapshots are then the EMA's weights). Results:
# $OUT/<arm>/eval/summary.csv (a row per snapshot) and $OUT/trajectories.csv (all arms).
# One thread per process (OMP_NUM_THREADS=1, two arms may run side by side on 2 cores); the demo
# itself runs with the default threads, so its figures differ in the last digits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-experiments/demo_teacher_budget}
S1=${S1_ITERS:-1000}
S2=${S2_ITERS:-1200}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
[ -d demo_data/train/HR ] || $PY -m Utils.demo_data --out demo_data
TEST=demo_data/Datasets2023/GTmod12_LRx4/Demo_LRbicx4
COMMON=(--model_name EdgeSRN_small --train_hr demo_data/train/HR --train_lr demo_data/train/LR_bicubic/X4
        --valid_dataset "$TEST" --patch_size 64 --num_workers 0 --experiments_root "$OUT" --cache_dir "$OUT/cache"
        --auto_resume --seed 0 --quiet)
S1_NAME=stage1_$S1
$PY main.py "${COMMON[@]}" --name "$S1_NAME" --iters "$S1" --test_every "$S1" --lr 1e-3 --batch_size 8
MARKS=$(seq 100 100 "$S2")
for arm in "$@"; do
  LR=1e-4
  case $arm in
    bs16_d32) FLAGS=(--batch_size 16 --adv_channels 32 --Rate_adv 0.005) ;;  # the demo's stage 2 until 2026-12-03
    bs16_d16) FLAGS=(--batch_size 16 --adv_channels 16 --Rate_adv 0.005) ;;
    bs8_d16)  FLAGS=(--batch_size 8 --adv_channels 16 --Rate_adv 0.005) ;;
    bs8_d16_fast) FLAGS=(--batch_size 8 --adv_channels 16 --Rate_adv 0.01 --adv_lr 2e-4) ;;
    bs8_d32)  FLAGS=(--batch_size 8 --adv_channels 32 --Rate_adv 0.005) ;;
    bs16_d32_lr4) FLAGS=(--batch_size 16 --adv_channels 32 --Rate_adv 0.005); LR=4e-4 ;;
    bs16_d32_adv02) FLAGS=(--batch_size 16 --adv_channels 32 --Rate_adv 0.02) ;;
    bs16_d32_lr4_ema) FLAGS=(--batch_size 16 --adv_channels 32 --Rate_adv 0.005 --ema 0.995); LR=4e-4 ;;
    bs16_d32_adv02_ema) FLAGS=(--batch_size 16 --adv_channels 32 --Rate_adv 0.02 --ema 0.995) ;;
    *) echo "error: unknown arm '$arm'" >&2; exit 2 ;;
  esac
  $PY main.py "${COMMON[@]}" --name "$arm" --checkpoint "$OUT/$S1_NAME/weights/final.pth" --iters "$S2" \
    --test_every "$S2" --lr "$LR" --scheduler constant --Rate_lm 0.05 --Rate_lpts 0 "${FLAGS[@]}" \
    --snapshots $MARKS
  for n in $MARKS; do
    $PY main_for_infer.py --Train False --model_name EdgeSRN_small --checkpoint "$OUT/$arm/weights/iter_$n.pth" \
      --test_folder "$TEST" --output_folder "$OUT/$arm/eval" --no_save --quiet
  done
done
$PY - "$OUT" <<'PY'
import sys
from pathlib import Path
import pandas as pd
out = Path(sys.argv[1])
frames = [pd.read_csv(p).assign(arm=p.parent.parent.name) for p in sorted(out.glob("*/eval/summary.csv"))]
if not frames:
    sys.exit(0)
table = pd.concat(frames, ignore_index=True)
table.to_csv(out / "trajectories.csv", index=False)
print(table.to_string(index=False))
PY
