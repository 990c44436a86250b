#!/usr/bin/env bash
# The perceptual teacher the project trains on a CPU (issue 10, item 3; studies/pilots.md, eighth round).
#
#   bash studies/teacher_edgesrn_small.sh [SEED]      (SEED: stage 2's seed, default 0)
#
# EdgeSRN_small on T91, batch 16, patch 96, one thread per process:
#   stage 1, L1: 4000 iterations at lr 1e-3 cosine (seed 0), 4000 more at lr 2e-4 cosine (seed 1),
#                4000 more at lr 1e-4 cosine (seed 2)                          about 80 min on one core
#   stage 2, L1 + edge + a discriminator learned from scratch: 1600 iterations, lr 1e-4, a tenth after
#                1300 (seed SEED)                                                about 17-22 min
# then evaluates the final weights (no checkpoint is chosen) and the published IMDN on Set14 and Set5 and
# prints the criterion's verdict on Set14: NIQE at least 0.5 below IMDN's, PSNR at most 1.5 dB below.
# Measured (eighth round of studies/pilots.md, 2026-12-01): Set14 27.134 / 5.511 (seed 0, PASS), 27.091 / 5.459 (seed 1, PASS),
# 27.263 / 5.791 (seed 2, FAIL by 0.005 NIQE), 27.057 / 5.341 (seed 3, FAIL by 0.025 dB), 27.127 / 5.523
# (seed 4, PASS); IMDN 28.582 / 6.285.
# Every run resumes where it stopped (--auto_resume). Environment: DATA (default ../shared/data),
# OUT (default experiments/teacher_edgesrn_small), PYTHON; S1_ITERS and S2_ITERS scale the stages for a
# quick check of the plumbing (defaults 4000 and 1600; the cut stays at 13/16 of stage 2).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}
PY=${PYTHON:-python}
DATA=${DATA:-../shared/data}
OUT=${OUT:-experiments/teacher_edgesrn_small}
S1=${S1_ITERS:-4000}
S2=${S2_ITERS:-1600}
CUT=$((S2 * 13 / 16))
T91=$DATA/train/T91
for f in "$T91/HR" "$T91/LR_bicubic/X4" "$DATA/weights/IMDN/IMDN_x4.pth" "$DATA/benchmark/Set14/LR_bicubic/X4"; do
  [ -e "$f" ] || { echo "error: $f not found (set DATA to the folder that holds train/T91, weights and benchmark)" >&2; exit 2; }
done
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ -z "${DTKD_NIQE_PARAMS:-}" ] && [ -f "$DATA/weights/perceptual/niqe_pris_params.npz" ]; then
  export DTKD_NIQE_PARAMS=$DATA/weights/perceptual/niqe_pris_params.npz
fi
COMMON=(--model_name EdgeSRN_small --train_hr "$T91/HR" --train_lr "$T91/LR_bicubic/X4" --valid_dataset ''
        --test_every 0 --patch_size 96 --batch_size 16 --num_workers 0 --experiments_root "$OUT"
        --cache_dir "$OUT/cache" --auto_resume)
final() { echo "$OUT/$1/weights/final.pth"; }

$PY main.py "${COMMON[@]}" --name stage1a --iters "$S1" --lr 1e-3 --scheduler cosine --eta_min 1e-5 --seed 0
$PY main.py "${COMMON[@]}" --name stage1b --iters "$S1" --lr 2e-4 --scheduler cosine --eta_min 1e-6 --seed 1 \
  --checkpoint "$(final stage1a)"
$PY main.py "${COMMON[@]}" --name stage1c --iters "$S1" --lr 1e-4 --scheduler cosine --eta_min 1e-6 --seed 2 \
  --checkpoint "$(final stage1b)"
$PY main.py "${COMMON[@]}" --name "stage2_seed$SEED" --iters "$S2" --lr 1e-4 --scheduler multistep \
  --milestones "$CUT" --gamma 0.1 --seed "$SEED" --Rate_lm 0.05 --Rate_adv 0.005 --adv_channels 32 \
  --checkpoint "$(final stage1c)"

TEACHER=$OUT/teacher_seed$SEED.pth
cp "$(final "stage2_seed$SEED")" "$TEACHER"
SETS=("$DATA/benchmark/Set14/LR_bicubic/X4")
[ -d "$DATA/benchmark/Set5/LR_bicubic/X4" ] && SETS+=("$DATA/benchmark/Set5/LR_bicubic/X4")
$PY main_for_infer.py --model_name IMDN --checkpoint "$DATA/weights/IMDN/IMDN_x4.pth" --test_folder "${SETS[@]}" \
  --output_folder "$OUT/eval" --no_save --quiet
$PY main_for_infer.py --model_name EdgeSRN_small --checkpoint "$TEACHER" --test_folder "${SETS[@]}" \
  --output_folder "$OUT/eval" --no_save --quiet
$PY -m Utils.demo_verdict "$OUT/eval/summary.csv" --dataset Set14 --fidelity IMDN_x4.pth \
  --perceptual "$(basename "$TEACHER")"
