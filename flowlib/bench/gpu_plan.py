"""What the GPU check runs and within what time: its sizes, its two configurations, the official figures, the budget.

* :class:`Sizes` with :data:`FULL` (a lent GPU) and :data:`QUICK` (``--quick``, a CPU
  rehearsal): the GPU check's sizes (model preset, batch, timed and warm-up steps, the layer
  shape of the correctness step) and the least time worth starting each step with (``min_s``).
* :data:`CONFIGS`: the ``baseline`` and ``fast`` arguments of ``flowlib.bench.train.measure``;
  :data:`OFFICIAL` and :data:`TARGET_RATIO`: what their throughput is compared with (issue 7).
* :class:`Run`: the state the steps share (settings, device, clock, the JSONL records);
  :func:`hard_limit` cuts a step at its deadline by raising :class:`StepTimeout`.

>>> QUICK.preset, QUICK.compile, sum(FULL.min_s.values())
('tiny', False, 290)
>>> try:
...     with hard_limit(0.05):
...         time.sleep(1)
... except StepTimeout as e:
...     print(e)
cut at its deadline after 0.1 s (time budget)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["OFFICIAL", "TARGET_RATIO", "CONFIGS", "Sizes", "FULL", "QUICK", "StepTimeout", "hard_limit", "Run", "fmt"]

# Issue 7, item 4: the official implementation of the paper-mixing convexp model on one H100
# (55.9 M parameters, batch 256, Adamax, 6 series terms, TF32 on, PyTorch 2.11).
OFFICIAL = {"train": 493.0, "eval": 1712.0, "sample": 1872.0, "n_params": 55.9e6, "ms_per_step": 519.0}
TARGET_RATIO = 2.0  # flowlib must reach at least twice the official rates

CONFIGS = {  # name -> flowlib.bench.train.measure() arguments; "fast" also drops compile under --quick
    "baseline": dict(conditioner_dtype="float32", compile=False, channels_last=False),
    "fast": dict(conditioner_dtype="bfloat16", compile=True, channels_last=True),
}


@dataclass(frozen=True)
class Sizes:
    """The GPU check's sizes: :data:`FULL` on a lent GPU, :data:`QUICK` (everything shrunk) for ``--quick``.

    Not a model or training preset: ``preset`` names the model preset the throughput and CIFAR
    steps build; ``min_s`` is the least time (s) worth starting each step with.
    """

    preset: str
    batch_size: int
    steps: int  # timed steps of the throughput measurements
    warmup: int  # untimed steps first (compilation, cuDNN autotuning)
    compile: bool  # part of the fast configuration
    layer_shape: tuple = (12, 16, 16)
    layer_batch: int = 8
    max_train_steps: int | None = None  # cap of the CIFAR run (None: as many as the time allows)
    log_every: int = 10  # CIFAR run: steps between metrics lines (train bpd is their mean)
    final_margin_s: float = 5.0  # kept free at the end of the budget for the summary
    cifar_final_s: float = 20.0  # CIFAR run after its last step: checkpoint, evaluation, samples, plot
    min_s: dict = field(default_factory=dict)


FULL = Sizes(
    "paper-mixing",
    256,
    steps=20,
    warmup=5,
    compile=True,
    min_s={"env": 0, "correctness": 20, "train": 90, "sample": 60, "cifar": 120},
)
QUICK = Sizes(
    "tiny",
    16,
    steps=2,
    warmup=1,
    compile=False,
    max_train_steps=20,
    log_every=5,
    final_margin_s=0.5,
    cifar_final_s=2.0,
    min_s={"env": 0, "correctness": 1, "train": 1, "sample": 1, "cifar": 3},
)


class StepTimeout(BaseException):
    """Raised in the main thread by SIGALRM when a step reaches its deadline.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that the ``except Exception`` of a
    step's per-layer loop, or of library code, cannot swallow the cut.
    """


@contextlib.contextmanager
def hard_limit(seconds: float):
    """Raise :class:`StepTimeout` inside the block after ``seconds`` (SIGALRM, main thread only)."""

    def on_alarm(signum, frame):
        raise StepTimeout(f"cut at its deadline after {seconds:.1f} s (time budget)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fmt(value) -> str:
    """A number as the echo lines and the summary show it (3-4 significant digits)."""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


class Run:
    """The state the steps share: settings, device, clock, the JSONL file and step 3's results."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, device: torch.device | None):
        self.args, self.sizes, self.device = args, sizes, device
        self.t0 = time.perf_counter()
        self.end = self.t0 + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.file = open(self.out / "gpu_check.jsonl", "w")
        self.records: list[dict] = []
        self.throughput: dict[str, dict] = {}  # "baseline" / "fast" -> train result (+ "overhead_s")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.end - time.perf_counter()

    def record(self, step: str, **fields) -> dict:
        """Append one JSON line (flushed at once, so a cut run keeps what it measured) and echo it."""
        rec = {"step": step, **fields, "t_s": round(self.elapsed(), 2)}
        self.records.append(rec)
        self.file.write(json.dumps(rec, default=str) + "\n")
        self.file.flush()
        brief = {k: fmt(v) for k, v in rec.items() if k not in ("step", "t_s") and not isinstance(v, (dict, list))}
        print(f"[{rec['t_s']:7.1f} s] {step}: " + ", ".join(f"{k}={v}" for k, v in brief.items()), flush=True)
        return rec
