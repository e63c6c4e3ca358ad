#!/usr/bin/env bash
# Train your fork's trainer with prompt diffusion through the command line, on the toy world
# (no download; the images are rendered under $DATA on first use). The configs are the installed
# package's (configs/... paths not in the working folder), configs/profiles/toy_cpu.yaml the CPU profile:
#   bash examples/fork_trainer/train.sh [DATA] [OUT]
# A bigger run: drop the last line's small settings (shots, epochs, test images).
set -euo pipefail
DATA=${1:-pd_data}
OUT=${2:-pd_examples/fork_trainer}
prompt-diffusion train --import "$(dirname "$0")/my_fork.py" --trainer WideCoCoOpPD --seed 1 \
  --root "$DATA" --output-dir "$OUT/WideCoCoOpPD/seed1" \
  --dataset-config-file configs/datasets/toy_world.yaml \
  --config-file configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml \
  --config-file configs/profiles/toy_cpu.yaml DATASET.SUBSAMPLE_CLASSES base \
  DATASET.NUM_SHOTS ${SHOTS:-4} OPTIM.MAX_EPOCH ${EPOCHS:-1} DATASET.TOY.TEST_PER_CLASS ${TEST_PER_CLASS:-5}
