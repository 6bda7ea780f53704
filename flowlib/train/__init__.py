"""Train a flow on images: :func:`train` reads top to bottom (nanoGPT's loop shape) in :mod:`.loop`.

The package, one job per module: :mod:`.config` (:class:`TrainConfig`, resume checks, the
learning-rate schedule), :mod:`.runtime` (device, DDP, TF32, determinism: set for a run and
restored after it), :mod:`.state` (counters and checkpoints), :mod:`.outputs` (the run
directory's files), :mod:`.evaluate`, :mod:`.signals` (Ctrl-C / SIGTERM), :mod:`.command`
(the command line, flags from :mod:`flowlib.cli`). Presets: :mod:`flowlib.presets`.

A CPU run (seconds on 2 cores; ``bash scripts/demo.sh`` runs it with 2000 steps)::

    python -m flowlib.train --preset tiny --dataset digits --steps 200 --out runs/demo

The paper's mixing model on CIFAR-10 on one GPU, and on 8 GPUs with torchrun::

    python -m flowlib.train --preset paper-mixing --mixing convexp --dataset cifar10 \\
        --data-dir ../shared/data/cifar-10-batches-py --steps 200000 --conditioner-dtype bfloat16 --compile \\
        --out runs/convexp
    torchrun --standalone --nproc_per_node 8 -m flowlib.train --preset paper-mixing ...

Any field of :class:`TrainConfig` and of :class:`flowlib.models.ModelConfig` is a flag
(``--key value`` or ``--key=value``; dashes or underscores), e.g. ``--mixing emerging``,
``--model-type residual``, ``--dequant uniform``, ``--lr 5e-4``. ``--resume`` continues the
run in ``--out`` exactly where ``last.pt`` left it. From Python (notebook 05)::

    from flowlib.train import TrainConfig, train
    summary = train(TrainConfig.for_preset("tiny", dataset="digits", steps=200, out="runs/nb"))

Outputs in ``out``: ``config.json``, ``metrics.jsonl``, TensorBoard events in ``tb/``,
``last.pt`` and ``best.pt`` (plain dicts, written atomically), ``samples/*.png`` at several
temperatures, ``summary.json`` and ``bpd_curve.png`` (bits/dim against the step); while a run
is on, ``train.lock``. Nothing else in ``out`` is ever removed.

Choices worth knowing:

* Schedule: Adamax(lr 1e-3, eps 1e-7) with linear warm-up over ``warmup_epochs`` and decay by
  ``lr_decay`` per epoch, as the official code (which steps it once per epoch; here per step,
  smoothly). Alternative: ``--optimizer adamw`` (same warm-up, cosine to 0 at ``steps``).
* NaN/Inf guard: loss and gradient norm are checked every step (one device sync per step,
  one small all-reduce under DDP); a bad step is never applied, ``--on-nonfinite stop`` ends
  the run naming the step and the first non-finite input batch/parameter/gradient/layer,
  ``skip`` drops the batch. Checkpoints refuse non-finite parameters and optimizer state, so
  ``last.pt`` stays usable.
* Divergence guard: a run whose logged train bpd stays above ``diverge_factor`` times the
  uniform model's ``n_bits`` bits/dim for ``diverge_logs`` logs in a row stops (exit code 1)
  before it writes checkpoints of a useless model (``--diverge-factor 0`` turns it off).
* Exact resume: checkpoints hold model, optimizer, scheduler, step, every rank's RNG state
  and the data order; evaluation and sampling run under forked RNGs so they never shift it.
  ``--resume`` refuses settings that differ from the saved run, except those in
  :data:`RESUME_MAY_CHANGE` (``--steps``, ``--eval-every``, ``--save-every``, ...).
* Ctrl-C or SIGTERM (also during start-up): stop at the next step boundary, write ``last.pt``
  there, exit with code 130. A second Ctrl-C aborts at once and writes nothing more (a
  checkpoint being written is finished first); the message says which step ``last.pt`` holds.
  After the last step, a signal stops the final evaluation; ``--resume`` writes it later.
* The output directory (:mod:`flowlib.rundir`): a fresh run refuses a non-empty ``--out``
  (``--overwrite`` replaces only the trainer's own files), a lock file ``train.lock`` keeps a
  second trainer out, every JSON file is strict (no NaN/Infinity), damaged ``metrics.jsonl``
  lines are set aside into ``metrics.damaged.jsonl``, a full disk names the path and free space.
* DDP: actnorm's data-dependent init runs on every rank before wrapping (it all-reduces its
  statistics); only rank 0 logs and writes.
"""

import importlib

# public name -> the module of this package that defines it; loaded on first use, so that
# ``python -m flowlib.train`` installs its Ctrl-C handling (__main__) before torch is imported
_HOMES = {
    "TrainConfig": "config",
    "RESUME_MAY_CHANGE": "config",
    "ConfigError": "config",
    "NonFiniteError": "config",
    "DivergedError": "config",
    "lr_factor": "config",
    "train": "loop",
    "main": "command",
    "build_parser": "command",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
