#!/bin/bash
# A smoke pass of the three distillation steps (README "Distillation into a pruned student"):
# the recipes with short runs (79 + 79 + 78 steps), to check the pipeline end to end. Its figures
# are not results (docs/results.md, "A smoke pass of the three steps"). About 25 min on one core.
# Usage: SIMPRUNE_DATA=../shared/data bash scripts/distill_smoke.sh [out folder, default runs/kd_smoke]
set -e
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
S=${1:-runs/kd_smoke}
SP=${SIMPRUNE:-simprune}
short=(--knn-test 2000 --progress-bar false --log-every 20)
$SP train --config configs/cifar10_distill_teacher.toml --epochs 0.1 --out "$S/teacher" "${short[@]}"
$SP eval --ckpt "$S/teacher" --linear --knn-test 2000 --json
$SP train --config configs/cifar10_distill_evit.toml --epochs 0.1 --teacher-path "$S/teacher" \
    --out "$S/distill_evit" "${short[@]}"
$SP eval --ckpt "$S/distill_evit" --linear --knn-test 2000 --json
$SP finetune --ckpt "$S/distill_evit" --config configs/cifar10_distill_finetune.toml --epochs 0.2 \
    --method evit --keep-rate 0.5 --out "$S/distill_evit_ft" "${short[@]}"
$SP train --config configs/cifar10_distill_finetune.toml --epochs 0.2 --method evit --keep-rate 0.5 \
    --out "$S/scratch_evit" "${short[@]}"
