"""Reduced-scale reproductions of the papers' comparisons, with error bars over seeds.

::

    python -m flowlib.experiments mixing --scale ci            # minutes on a CPU: pipeline check
    python -m flowlib.experiments mixing --scale gpu-small --data-dir ../shared/data/cifar-10-batches-py
    python -m flowlib.experiments all --scale ci               # the four experiments in turn

Experiments (one module each; the module docstring is the protocol):

* :mod:`~flowlib.experiments.mixing` - mixing layers in the same Glow-style model on CIFAR-10;
* :mod:`~flowlib.experiments.residual` - convolutional Sylvester vs residual flow vs coupling,
  uniform and variational dequantization;
* :mod:`~flowlib.experiments.stability` - affine vs matrix-exponential coupling across learning
  rates, and plain vs PLU vs matrix-exponential 1x1 convolutions;
* :mod:`~flowlib.experiments.graph` - a graph flow with and without the graph convolution exponential.

Scales: ``ci`` (tiny models and data, CPU; shows the pipeline works, supports no
conclusion), ``cpu-real`` (``mixing`` and ``residual`` only: small models on a fixed subset of
the real CIFAR-10 downsampled to 16x16, a minute or two per run on one CPU thread, the whole
grid about an hour: ``scripts/cpu_real.sh``), ``gpu-small`` (about ten minutes per
experiment on one GPU, on a fixed CIFAR-10 subset: only ``batches.meta``, ``data_batch_1``
and ``test_batch`` are read) and ``paper`` (the official sizes and schedules). Each experiment writes
``<out>/<name>-<scale>.json``, ``.csv``, ``.md`` (table, parameter budget, protocol, notes
that say plainly where the ordering disagrees with the paper) and ``.png``; every file names
the command, scale, device, torch version and date. Finished ``(arm, seed)`` runs are kept
in ``<runs>/<name>-<scale>/<arm>/seed<k>/result.json`` and never re-run, so an interrupted
experiment continues where it stopped when the same command is run again. At ``ci`` scale
and cpu-real scale on a CPU the runs use one thread (small models gain nothing from more).

The machinery the experiments share, one module per job: :mod:`~flowlib.experiments.grid`
(arms, the resumable run over arms and seeds, aggregation), :mod:`~flowlib.experiments.budget`
(matching and checking parameter counts), :mod:`~flowlib.experiments.report` (tables, the
wording of paper comparisons, the result files), :mod:`~flowlib.experiments.provenance`
(scales, command, environment, protocol) and :mod:`~flowlib.experiments.images` (scales,
data, the trained run and the grid of the image experiments).
"""

from __future__ import annotations

from pathlib import Path

import torch

from flowlib.devices import resolve_device

from . import budget, graph, grid, images, mixing, provenance, report, residual, stability
from .grid import MIN_SEEDS, ExperimentError
from .provenance import CPU_SCALES, SCALES, command_line

__all__ = [
    "EXPERIMENTS",
    "run",
    "mixing",
    "residual",
    "stability",
    "graph",
    "ExperimentError",
    "provenance",
    "grid",
    "budget",
    "report",
    "images",
]

EXPERIMENTS = {"mixing": mixing, "residual": residual, "stability": stability, "graph": graph}


def run(
    name: str,
    scale: str = "ci",
    seeds: int = MIN_SEEDS,
    out="results",
    runs=None,
    device: str = "auto",
    data_dir=None,
    quiet: bool = False,
    command: str | None = None,
) -> dict[str, Path]:
    """Run (or resume) experiment ``name`` at ``scale``; return the paths of the written result files.

    Arguments:
        name: ``mixing``, ``residual``, ``stability`` or ``graph``.
        scale: ``ci``, ``cpu-real`` (mixing and residual), ``gpu-small`` or ``paper``.
        seeds: seeds per arm, at least 3.
        out: directory of the result files (``results/`` in the repository).
        runs: directory of the per-run outputs (default ``runs/experiments``); the runs of this
            experiment go to ``<runs>/<name>-<scale>/``.
        device: ``auto``, ``cpu`` or ``cuda``.
        data_dir: the ``cifar-10-batches-py`` directory (image experiments at cpu-real, gpu-small and paper scale).
        quiet: no progress lines.
        command: the command recorded in the result files (default: the equivalent CLI command).

    Raises :class:`ExperimentError` for a bad name, scale, seed count or a missing
    ``data_dir``, :class:`flowlib.devices.DeviceError` for a bad device (``cuda`` without a
    GPU) and :class:`flowlib.data.DataError` for a data directory without the files it needs.
    """
    if name not in EXPERIMENTS:
        raise ExperimentError(
            f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)} (or 'all' on the command line)"
        )
    if scale not in SCALES:
        raise ExperimentError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale not in EXPERIMENTS[name].SCALES:
        raise ExperimentError(
            f"experiment {name!r} has no {scale!r} scale; its scales are {', '.join(EXPERIMENTS[name].SCALES)}"
        )
    if not isinstance(seeds, int) or seeds < MIN_SEEDS:
        raise ExperimentError(
            f"seeds must be an integer >= {MIN_SEEDS} (the protocol reports mean ± std over "
            f"at least {MIN_SEEDS} seeds), got {seeds!r}"
        )
    device = resolve_device(device).type  # 'cpu' or 'cuda'
    runs = Path(runs) if runs is not None else Path("runs") / "experiments"
    if command is None:
        command = command_line(name, scale, seeds, {"data_dir": data_dir})
    threads = torch.get_num_threads()
    if scale in CPU_SCALES and device == "cpu":  # small models: extra threads only add overhead (and contention)
        torch.set_num_threads(1)
    try:
        return EXPERIMENTS[name].run(
            scale=scale,
            seeds=seeds,
            out=Path(out),
            runs=runs / f"{name}-{scale}",
            device=device,
            command=command,
            data_dir=data_dir,
            quiet=quiet,
        )
    finally:
        torch.set_num_threads(threads)
