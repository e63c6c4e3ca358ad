#!/usr/bin/env bash
# Base-to-new, step 2: evaluate the checkpoint of base2new_train.sh on the new classes (New).
# usage: DATA=/data scripts/base2new_test.sh TRAINER DATASET SEED     e.g. CoCoOpPD dtd 1
# See _common.sh (LOADEP: the epoch evaluated).
source "$(dirname "$0")/_common.sh"
begin "TRAINER DATASET SEED" "$@"
LEAF="$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED"
run_once "$OUTPUT/base2new/test_new/$LEAF" --model-dir "$OUTPUT/base2new/train_base/$LEAF" \
    --load-epoch "$LOADEP" --eval-only DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES new
