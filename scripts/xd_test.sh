#!/usr/bin/env bash
# Cross-dataset, step 2: evaluate the ImageNet checkpoint of xd_train.sh on a target DATASET.
# usage: DATA=/data scripts/xd_test.sh TRAINER DATASET SEED     e.g. MaPLePD eurosat 1
source "$(dirname "$0")/_common.sh"
begin "TRAINER DATASET SEED" "$@"
LEAF="shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
run_once "$OUTPUT/xd/test/$DATASET/$LEAF" --model-dir "$OUTPUT/xd/train/imagenet/$LEAF" \
    --load-epoch "$LOADEP" --eval-only
