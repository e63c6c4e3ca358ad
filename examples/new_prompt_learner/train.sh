#!/usr/bin/env bash
# Train the new prompt learner with prompt diffusion (FeaturePromptPD) on the toy world, then
# evaluate the saved model on the new classes. From the repository root:
#   bash examples/new_prompt_learner/train.sh [DATA] [OUT]
set -euo pipefail
DATA=${1:-pd_data}
OUT=${2:-pd_examples/new_prompt_learner}
HERE=$(dirname "$0")
CONFIGS=$(python -c "import prompt_diffusion.configs as c, os; print(os.path.dirname(c.__file__))")
COMMON=(--import "$HERE/feature_prompt_pd.py" --trainer FeaturePromptPD --seed 1 --root "$DATA"
        --dataset-config-file "$CONFIGS/datasets/toy_world.yaml")
OPTS=(MODEL.BACKBONE.NAME toy INPUT.SIZE "(32, 32)" INPUT.TRANSFORMS "['random_flip', 'normalize']"
      INPUT.PIXEL_MEAN "[0.48145466, 0.4578275, 0.40821073]" INPUT.PIXEL_STD "[0.26862954, 0.26130258, 0.27577711]"
      OPTIM.NAME adamw OPTIM.LR 2e-3 OPTIM.MAX_EPOCH "${EPOCHS:-1}" DATALOADER.NUM_WORKERS 0
      TRAINER.PD.GENERATOR_SIZE.LAYERS 2 TRAINER.PD.GENERATOR_SIZE.WIDTH 128 TRAINER.PD.GENERATOR_SIZE.HEADS 4
      TRAINER.PD.SAMPLER dpmpp_2m TRAINER.PD.AMED.DISTILL_ITERS 0
      DATASET.NUM_SHOTS "${SHOTS:-4}" DATASET.TOY.TEST_PER_CLASS "${TEST_PER_CLASS:-5}")

prompt-diffusion train "${COMMON[@]}" --output-dir "$OUT/train_base" "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES base
prompt-diffusion train "${COMMON[@]}" --output-dir "$OUT/test_new" --eval-only \
  --model-dir "$OUT/train_base" --load-epoch "${EPOCHS:-1}" "${OPTS[@]}" DATASET.SUBSAMPLE_CLASSES new
