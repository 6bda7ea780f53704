#!/usr/bin/env bash
# The main job: set up .venv, then train the `tiny` flow on scikit-learn's 8x8 digits for 2000
# steps on the CPU (about half a minute on 2 cores), with a progress bar. Writes config.json,
# metrics.jsonl, TensorBoard events (tb/), last.pt / best.pt checkpoints and sample grids
# (samples/*.png) to runs/demo. Extra arguments go to the trainer, e.g.
#   bash scripts/demo.sh --steps 1000 --mixing conv1x1_exp
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=runs/demo
.venv/bin/python -m flowlib.train --preset tiny --dataset digits --steps 2000 --out "$OUT" --overwrite "$@"
echo
echo "outputs in $OUT/:"
echo "  config.json     train + model configuration"
echo "  metrics.jsonl   step, epoch, train/test bits per dim, images/s, lr, grad norm"
echo "  summary.json    final test bpd, wall time"
echo "  bpd_curve.png   train and test bits per dim against the step"
echo "  last.pt best.pt checkpoints (continue with: .venv/bin/python -m flowlib.train --out $OUT --resume --steps 4000)"
echo "  samples/        sample grids at temperatures 0, 0.5, 0.7, 1.0"
echo "  tb/             TensorBoard events (.venv/bin/tensorboard --logdir $OUT/tb)"
