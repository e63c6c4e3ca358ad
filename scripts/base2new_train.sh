#!/usr/bin/env bash
# Base-to-new, step 1: train TRAINER on the base classes of DATASET (its final test is Base).
# usage: DATA=/data scripts/base2new_train.sh TRAINER DATASET SEED     e.g. CoCoOpPD dtd 1
# An interrupted run is resumed from its checkpoint by running this again. See _common.sh.
source "$(dirname "$0")/_common.sh"
begin "TRAINER DATASET SEED" "$@"
run_once "$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED" \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base
