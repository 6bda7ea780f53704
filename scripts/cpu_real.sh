#!/usr/bin/env bash
# The cpu-real grid: the mixing and residual comparisons on a fixed subset of the REAL CIFAR-10,
# downsampled to 16x16, 3 seeds per arm, one torch thread, runs one after another (see
# flowlib/experiments/mixing.py and residual.py for the protocol). Expected duration on an
# otherwise idle core: about 45-55 minutes (mixing: 27 runs x 500 steps, ~25 min; residual:
# 9 runs x 400 steps, ~20 min; from one-thread CPU times measured 2026-12-01). On a shared,
# loaded machine it takes proportionally longer (measured wall/CPU ratios of 3-6 under load). Writes
# results/mixing-cpu-real.{json,csv,md,png} and results/residual-cpu-real.*; every finished
# (arm, seed) run is kept under runs/experiments/, so after an interruption the same command
# continues where it stopped.
#   bash scripts/cpu_real.sh [CIFAR_DIR]   # default ../shared/data/cifar-10-batches-py
# CIFAR_DIR is a cifar-10-batches-py directory (or its parent); only batches.meta, data_batch_1
# and test_batch are read.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${1:-../shared/data/cifar-10-batches-py}"
if [ ! -e "$DATA_DIR/data_batch_1" ] && [ ! -e "$DATA_DIR/cifar-10-batches-py/data_batch_1" ]; then
    echo "cpu_real.sh: no CIFAR-10 batches in $DATA_DIR; pass the cifar-10-batches-py directory as the argument" >&2
    exit 2
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
for name in mixing residual; do
    .venv/bin/python -m flowlib.experiments "$name" --scale cpu-real --device cpu --data-dir "$DATA_DIR"
done
