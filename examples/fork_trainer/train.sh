#!/usr/bin/env bash
# Train your fork's trainer with prompt diffusion through the command line, on the toy world
# (no download; the images are rendered under $DATA on first use). From the repository root:
#   bash examples/fork_trainer/train.sh [DATA] [OUT]
# A bigger run: drop the last line's small settings (shots, epochs, test images).
set -euo pipefail
DATA=${1:-pd_data}
OUT=${2:-pd_examples/fork_trainer}
CONFIGS=$(python -c "import prompt_diffusion.configs as c, os; print(os.path.dirname(c.__file__))")

prompt-diffusion train --import "$(dirname "$0")/my_fork.py" --trainer WideCoCoOpPD --seed 1 \
  --root "$DATA" --output-dir "$OUT/WideCoCoOpPD/seed1" \
  --dataset-config-file "$CONFIGS/datasets/toy_world.yaml" \
  --config-file "$CONFIGS/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml" \
  MODEL.BACKBONE.NAME toy INPUT.SIZE "(32, 32)" INPUT.TRANSFORMS "['random_flip', 'normalize']" \
  TRAINER.COCOOP.PREC fp32 OPTIM.NAME adamw OPTIM.LR 2e-3 OPTIM.WARMUP_EPOCH 0 DATALOADER.NUM_WORKERS 0 \
  TRAINER.PD.DENOISER.LAYERS 2 TRAINER.PD.DENOISER.WIDTH 128 TRAINER.PD.DENOISER.HEADS 4 \
  TRAINER.PD.SAMPLER dpmpp_2m TRAINER.PD.AMED.DISTILL_ITERS 0 DATASET.SUBSAMPLE_CLASSES base \
  DATASET.NUM_SHOTS ${SHOTS:-4} OPTIM.MAX_EPOCH ${EPOCHS:-1} DATASET.TOY.TEST_PER_CLASS ${TEST_PER_CLASS:-5}
