#!/usr/bin/env bash
# Cross-dataset and domain generalization, step 1: train TRAINER on ImageNet, all 1000 classes
# (its final test is the ImageNet column of Tables 2 and 3).
# usage: DATA=/data scripts/xd_train.sh TRAINER SEED     e.g. MaPLePD 1     (SHOTS=4: Table 6)
source "$(dirname "$0")/_common.sh"
begin "TRAINER SEED" "$@"
run_once "$OUTPUT/xd/train/imagenet/shots_$SHOTS/$TRAINER/$CFG/seed$SEED" DATASET.NUM_SHOTS "$SHOTS"
