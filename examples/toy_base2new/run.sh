#!/usr/bin/env bash
# Run the spec toy_base2new.yaml (every method x seed: train on the base classes, evaluate on the
# new ones and on the sketch domain), then print its paper-style table with the paired difference
# CoOpPD makes over CoOp. Finished runs are skipped when it runs again. From the repository root:
#   bash examples/toy_base2new/run.sh [DATA] [OUT]
set -euo pipefail
DATA=${1:-pd_data}
OUT=${2:-pd_examples/toy_base2new}
SPEC=$(dirname "$0")/toy_base2new.yaml

prompt-diffusion sweep "$SPEC" --root "$DATA" --output-dir "$OUT" --jobs "${JOBS:-2}"
prompt-diffusion table "$SPEC" --output-dir "$OUT" --csv "$OUT/table.csv" --markdown "$OUT/table.md"
