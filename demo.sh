#!/usr/bin/env bash
# DTKD demo.
#
#   bash demo.sh          quick demo on embedded data (scikit-image photos), CPU, no download, minutes:
#                         trains a small fidelity teacher (IMDN) and a small EdgeSRN (two stages: L1, then
#                         L1 + edge + a discriminator learned from scratch), an RFDN baseline on ground truth and an RFDN
#                         student with DTKD (adversarial transfer from the perceptual teacher),
#                         evaluates all of them, prints the comparison table, the perception-distortion
#                         plot and the verdict: is the teacher perceptual, is the student sharper than the
#                         baseline at (nearly) the same PSNR?
#                         Published teachers in Checkpoints/IMDN/IMDN_x4.pth or Checkpoints/EdgeSRN/EdgeSRN_x4.pth
#                         are used instead of training small ones when present.
#   bash demo.sh paper    the paper-scale recipe on DIV2K (GPU; downloads DIV2K and the IMDN teacher).
#
# Environment: DTKD_DEMO_OUT (default demo_output), PYTHON (default python), DTKD_NIQE_PARAMS (default: the
# copy shipped in Utils/assets/),
# DTKD_DEMO_ITERS (300: the IMDN and RFDN runs), DTKD_DEMO_TEACHER_ITERS (EdgeSRN's stage 1) and
# DTKD_DEMO_TEACHER_S2_ITERS (its stage 2, the lr cut to a tenth after 13/16 of it): 1000 and 1300 in bf16,
# 2000 and 1600 in float32,
# DTKD_DEMO_AMP (the perceptual teacher's training, the demo's long part; the other runs are float32): auto (bf16
# autocast where the CPU has native bfloat16, AVX512-BF16 or AMX, else none), none or bf16. Each precision has
# its own teacher recipe, the one measured to pass there (docs/results.md, "The demo").
# Every run resumes where it stopped (--auto_resume), so running the demo again is cheap and safe.
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:-quick}
PY=${PYTHON:-python}
OUT=${DTKD_DEMO_OUT:-demo_output}
EXP="$OUT/experiments"
# each step prints the wall time since the demo started, so a slow stage shows where the time goes
step() { printf '\n== [%d:%02d] %s ==\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
weights() { echo "$EXP/$1/weights/final.pth"; }
# the file name a checkpoint is evaluated under: a run's weights/final.pth is copied as <run name>.pth
evalname() { if [ "$(basename "$1")" = "final.pth" ]; then echo "$(basename "$(dirname "$(dirname "$1")")").pth";
             else basename "$1"; fi; }

if [ "$MODE" = "quick" ]; then
  # the precision first: a bad DTKD_DEMO_AMP stops the demo before any work.
  # bf16 autocast (the discriminator's own update too, --adv_amp) trains the perceptual teacher 1.4-1.7x faster on a
  # CPU with native bfloat16 and much slower on one without (docs/performance.md): auto takes it only where the CPU
  # has it. The other runs stay float32: bf16 saves them nothing measurable (docs/performance.md)
  AMP=${DTKD_DEMO_AMP:-auto}
  WHY=""
  if [ "$AMP" = "auto" ]; then
    if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then AMP=bf16; WHY=" (auto: native bfloat16)";
    else AMP=none; WHY=" (auto: no native bfloat16)"; fi
  fi
  # the perceptual teacher's recipe per precision: the bf16 one (shorter, lr 2e-4) made no perceptual teacher in
  # float32 (Demo NIQE 6.738 against F's 6.390), so float32 keeps the longer one (studies/pilots.md, "Second demo
  # budget round")
  case $AMP in
    bf16) T2_AMP=(--amp bf16 --adv_amp True); T1_DEF=1000; S2_DEF=1300; S2_LR=2e-4 ;;
    none) T2_AMP=(--amp none); T1_DEF=2000; S2_DEF=1600; S2_LR=1e-4 ;;
    *) echo "error: DTKD_DEMO_AMP must be auto, none or bf16, got '$AMP'" >&2; exit 2 ;;
  esac
  echo "perceptual teacher's training precision: $AMP$WHY (DTKD_DEMO_AMP=auto|none|bf16); the other runs float32"
  step "demo data (scikit-image sample photos, MATLAB-bicubic x4 LR)"
  $PY -m Utils.demo_data --out demo_data
  TRAIN=(--train_hr demo_data/train/HR --train_lr demo_data/train/LR_bicubic/X4)
  TEST=demo_data/Datasets2023/GTmod12_LRx4/Demo_LRbicx4
  # one progress bar per training stage (no --quiet); logging shows what each stage loads
  COMMON=(--experiments_root "$EXP" --cache_dir "$EXP/cache" --valid_dataset "$TEST" --patch_size 64
          --batch_size 8 --num_workers 0 --auto_resume --seed 0)
  ITERS=${DTKD_DEMO_ITERS:-300}
  T_ITERS=${DTKD_DEMO_TEACHER_ITERS:-$T1_DEF}  # the perceptual teacher needs longer: its texture comes late
  S2=${DTKD_DEMO_TEACHER_S2_ITERS:-$S2_DEF}

  if [ -f Checkpoints/IMDN/IMDN_x4.pth ]; then
    T1=Checkpoints/IMDN/IMDN_x4.pth
  else
    step "fidelity teacher: IMDN on ground truth ($ITERS iterations)"
    $PY main.py --model_name IMDN --name demo_teacher_imdn --iters "$ITERS" --test_every "$ITERS" --lr 1e-3 \
      "${TRAIN[@]}" "${COMMON[@]}"
    T1=$(weights demo_teacher_imdn)
  fi

  if [ -f Checkpoints/EdgeSRN/EdgeSRN_x4.pth ]; then
    T2=Checkpoints/EdgeSRN/EdgeSRN_x4.pth; T2_MODEL=EdgeSRN
  else
    T2_MODEL=EdgeSRN_small  # the EdgeSRN architecture at demo size: minutes on a CPU
    step "perceptual teacher: EdgeSRN stage 1, L1 pre-training ($T_ITERS iterations)"
    $PY main.py --model_name "$T2_MODEL" --name demo_edgesrn_l1 --iters "$T_ITERS" --test_every "$T_ITERS" \
      --lr 1e-3 "${TRAIN[@]}" "${COMMON[@]}" "${T2_AMP[@]}"
    # the T91 teacher's stage 2 (docs/results.md, "The perceptual teacher the project trains"): L1 + edge + a discriminator
    # learned from scratch (the VGG term is off without its weights); the lr cut to a tenth for the last 3/16
    # (studies/pilots.md, "Demo budget round" and "Second demo budget round")
    CUT=$((S2 * 13 / 16))
    step "perceptual teacher: EdgeSRN stage 2, L1 + edge + adversarial ($S2 iterations at lr $S2_LR, / 10 after $CUT)"
    $PY main.py --model_name "$T2_MODEL" --name demo_edgesrn_edge --checkpoint "$(weights demo_edgesrn_l1)" \
      --iters "$S2" --test_every "$S2" --lr "$S2_LR" --scheduler multistep --milestones "$CUT" --gamma 0.1 \
      --Rate_lm 0.05 --Rate_lpts 0 --Rate_adv 0.005 --adv_channels 32 "${TRAIN[@]}" "${COMMON[@]}" "${T2_AMP[@]}" \
      --batch_size 16
    T2=$(weights demo_edgesrn_edge)
  fi

  EVERY=$((ITERS / 3))
  step "baseline student: RFDN on ground truth only ($ITERS iterations)"
  $PY main.py --model_name RFDN --name demo_rfdn_gt --iters "$ITERS" --test_every "$EVERY" --lr 1e-3 \
    "${TRAIN[@]}" "${COMMON[@]}"

  step "DTKD student: RFDN with IMDN + EdgeSRN, entropy routing, error+trust attention, adversarial transfer ($ITERS iterations)"
  # F's pixels for every sample; on texture-rich ones a discriminator learned from scratch tells the student
  # from P (--Rate_adv, docs/method.md, "DTKD: the method"; the fine-tuning study's arm dtkd_adv)
  $PY main.py --model_name RFDN --name demo_rfdn_dtkd --iters "$ITERS" --test_every "$EVERY" --lr 1e-3 \
    --train_by_TT True --t1_model_name IMDN --t1_checkpoint "$T1" --t2_model_name "$T2_MODEL" --t2_checkpoint "$T2" \
    --entropy_gate auto --loss_attn both --Rate_l1 1 --Rate_kd 1 --Rate_lpts 0 \
    --t2_pixel_kd False --Rate_adv "${DTKD_DEMO_STUDENT_ADV:-0.01}" --adv_channels 32 \
    --teacher_cache "$EXP/teacher_cache" "${TRAIN[@]}" "${COMMON[@]}"

  step "evaluation on the demo test set"
  for spec in "IMDN:$T1" "$T2_MODEL:$T2" "RFDN:$(weights demo_rfdn_gt)" "RFDN:$(weights demo_rfdn_dtkd)"; do
    model=${spec%%:*}; ckpt=${spec#*:}
    # weights/final.pth of every run: copy under the run's name so results and rows read clearly
    if [ "$(basename "$ckpt")" = "final.pth" ]; then
      mkdir -p "$OUT/weights"; cp "$ckpt" "$OUT/weights/$(evalname "$ckpt")"; ckpt="$OUT/weights/$(evalname "$ckpt")"
    fi
    $PY main_for_infer.py --Train False --model_name "$model" --checkpoint "$ckpt" --test_folder "$TEST" \
      --output_folder "$OUT/Result"
  done

  step "comparison"
  $PY -m Utils.compare "$OUT/Result/summary.csv" --out "$OUT"
  step "verdict"
  $PY -m Utils.demo_verdict "$OUT/Result/summary.csv" --dataset Demo --fidelity "$(evalname "$T1")" \
    --perceptual "$(evalname "$T2")" --baseline demo_rfdn_gt.pth --student demo_rfdn_dtkd.pth
  echo
  # only what was written: a missing metric leaves no plot, a failed comparison no table
  if [ -f "$OUT/compare.md" ]; then echo "table:  $OUT/compare.md  ($OUT/compare.csv)"; fi
  if [ -f "$OUT/perception_distortion.png" ]; then echo "plot:   $OUT/perception_distortion.png"; fi
  echo "runs:   $EXP/<run>/ (log.csv, curves.png, weights/)"
  printf 'done in %d min %02d s\n' $((SECONDS / 60)) $((SECONDS % 60))

elif [ "$MODE" = "paper" ]; then
  # Paper-scale recipe (GPU). Durations are estimates for one H100-class GPU, from the models' operation
  # counts; measure your own with bench/. Steps resume with --auto_resume after any interruption.
  step "data: DIV2K (train HR + x4 LR) and the benchmark sets"
  $PY -m Utils.download div2k IMDN
  echo "Put Set5/Set14/B100/Urban100/Manga109 HR folders in place and run, for each:"
  echo "  $PY -m Utils.prepare_data --hr <Set>/HR --name <Set> --out Datasets2023"
  COMMON=(--experiments_root experiments --root Datasets --valid_dataset Set5 --datasets_root Datasets2023
          --amp bf16 --channels_last --num_workers 8 --auto_resume --test_every 5000 --save_every 5000)
  step "perceptual teacher: EdgeSRN stage 1 (L1), 200k iterations"
  $PY main.py --model_name EdgeSRN --name edgesrn_l1 --iters 200000 --patch_size 128 --batch_size 16 --lr 2e-4 \
    --scheduler multistep --milestones 100000 150000 "${COMMON[@]}"
  step "perceptual teacher: EdgeSRN stage 2 (L1 + edge + VGG), 100k iterations"
  $PY main.py --model_name EdgeSRN --name edgesrn_edge --checkpoint experiments/edgesrn_l1/weights/final.pth \
    --iters 100000 --patch_size 128 --batch_size 16 --lr 1e-4 --Rate_lm 0.05 --Rate_lpts 0.01 "${COMMON[@]}"
  step "DTKD student: RFDN, 500k iterations, teacher cache"
  $PY main.py --model_name RFDN --name rfdn_dtkd --iters 500000 --patch_size 192 --batch_size 64 --lr 5e-4 \
    --train_by_TT True --t1_model_name IMDN --t1_checkpoint Checkpoints/IMDN/IMDN_x4.pth \
    --t2_model_name EdgeSRN --t2_checkpoint experiments/edgesrn_edge/weights/final.pth \
    --entropy_gate auto --loss_attn both --Rate_lm 0.05 --Rate_lpts 0.01 --teacher_cache experiments/teacher_cache \
    "${COMMON[@]}"
  step "evaluation"
  $PY main_for_infer.py --Train False --model_name RFDN --checkpoint experiments/rfdn_dtkd/weights/best.pth \
    --test_datasets Set5 Set14 B100 Urban100 Manga109 --output_folder Result --lpips
  $PY -m Utils.compare Result/summary.csv --out Result
else
  echo "usage: bash demo.sh [quick|paper]" >&2
  exit 2
fi
