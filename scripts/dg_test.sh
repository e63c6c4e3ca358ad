#!/usr/bin/env bash
# Domain generalization: evaluate the ImageNet checkpoint of xd_train.sh on ImageNetV2, -Sketch,
# -A and -R (Table 3; with SHOTS=4, Table 6).
# usage: DATA=/data scripts/dg_test.sh TRAINER SEED     e.g. CoCoOpPD 1
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 TRAINER SEED" >&2; exit 2; }
for DATASET in imagenetv2 imagenet_sketch imagenet_a imagenet_r; do
    "$(dirname "$0")/xd_test.sh" "$1" "$DATASET" "$2"
done
