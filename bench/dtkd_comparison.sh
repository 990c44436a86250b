#!/usr/bin/env bash
# Fixed-budget comparison on the shared data (CPU): RFDN from the same initialisation (same seed), the
# same iterations and batches, trained (a) on ground truth only, (b) with the fidelity teacher only
# (IMDN, published weights), (c) with full DTKD (IMDN + an EdgeSRN trained here, entropy routing,
# error+trust attention, edge loss). Train on T91, test on Set5 and Set14 (official LR files).
#
#   OMP_NUM_THREADS=1 bash bench/dtkd_comparison.sh [ITERS]   (default 1000; results in bench/results/dtkd_comparison/)
#
# The perceptual teacher is EdgeSRN_small (the EdgeSRN architecture with 2 blocks and 32 features),
# trained here in two stages (L1, then L1 + edge), because the full EdgeSRN is too slow to train on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ITERS=${1:-1000}
OUT=${DTKD_CMP_OUT:-bench/results/dtkd_comparison}
SHARED=../shared/data
EXP="$OUT/experiments"
export DTKD_NIQE_PARAMS=${DTKD_NIQE_PARAMS:-$SHARED/weights/perceptual/niqe_pris_params.npz}
TRAIN=(--train_hr $SHARED/train/T91/HR --train_lr $SHARED/train/T91/LR_bicubic/X4)
COMMON=(--experiments_root "$EXP" --cache_dir "$EXP/cache" --valid_dataset $SHARED/benchmark/Set5/LR_bicubic/X4
        --patch_size 64 --batch_size 16 --num_workers 0 --auto_resume --quiet --seed 0 --lr 1e-3
        --scheduler cosine --test_every "$ITERS" --save_every 250)
T1=$SHARED/weights/IMDN/IMDN_x4.pth

$PY main.py --model_name EdgeSRN_small --name edgesrn_l1 --iters "$ITERS" "${TRAIN[@]}" "${COMMON[@]}"
$PY main.py --model_name EdgeSRN_small --name edgesrn_edge --checkpoint "$EXP/edgesrn_l1/weights/final.pth" \
  --iters $((ITERS / 2)) --Rate_lm 0.1 "${TRAIN[@]}" "${COMMON[@]}" --lr 2e-4 --test_every $((ITERS / 2))
T2="$EXP/edgesrn_edge/weights/final.pth"

$PY main.py --model_name RFDN --name rfdn_gt --iters "$ITERS" "${TRAIN[@]}" "${COMMON[@]}"
$PY main.py --model_name RFDN --name rfdn_fidelity --iters "$ITERS" --train_by_TT True \
  --t1_model_name IMDN --t1_checkpoint "$T1" --t2_checkpoint '' --loss_attn both \
  --teacher_cache "$EXP/teacher_cache" "${TRAIN[@]}" "${COMMON[@]}"
$PY main.py --model_name RFDN --name rfdn_dtkd --iters "$ITERS" --train_by_TT True \
  --t1_model_name IMDN --t1_checkpoint "$T1" --t2_model_name EdgeSRN_small --t2_checkpoint "$T2" \
  --entropy_gate auto --loss_attn both --Rate_lm 0.05 --teacher_cache "$EXP/teacher_cache" "${TRAIN[@]}" "${COMMON[@]}"

mkdir -p "$OUT/weights"
for spec in "IMDN:$T1" "EdgeSRN_small:$T2" "RFDN:$EXP/rfdn_gt/weights/final.pth" \
            "RFDN:$EXP/rfdn_fidelity/weights/final.pth" "RFDN:$EXP/rfdn_dtkd/weights/final.pth"; do
  model=${spec%%:*}; ckpt=${spec#*:}
  if [ "$(basename "$ckpt")" = "final.pth" ]; then
    run=$(basename "$(dirname "$(dirname "$ckpt")")"); cp "$ckpt" "$OUT/weights/$run.pth"; ckpt="$OUT/weights/$run.pth"
  fi
  $PY main_for_infer.py --Train False --model_name "$model" --checkpoint "$ckpt" \
    --test_folder $SHARED/benchmark/Set5/LR_bicubic/X4 $SHARED/benchmark/Set14/LR_bicubic/X4 \
    --output_folder "$OUT/Result" --no_save --quiet
done
$PY -m Utils.compare "$OUT/Result/summary.csv" --out "$OUT" --metrics psnr ssim niqe
