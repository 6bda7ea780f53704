"""Image experiments (mixing, residual, stability): shared scales, data, one trained run, the grid.

:func:`image_scale` gives one scale's settings (what every image experiment shares at that
scale and the experiment's own), :func:`image_data` the trainer's data settings (synthetic at
``ci``, a CIFAR-10 subset at ``cpu-real`` and ``gpu-small``, CIFAR-10 at ``paper``),
:func:`image_run` trains and measures one model, :func:`image_grid` runs every arm and seed,
:func:`image_info` the provenance of the result files.

>>> image_scale("cpu-real", "tiny", train=cpu_real_schedule(500))["model"]
{'image_shape': (3, 16, 16)}
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from flowlib.data import cifar_subset

from .grid import Arm, ExperimentError, log_line, run_grid
from .provenance import protocol_text, result_info

__all__ = [
    "DIVERGED_BPD",
    "cpu_real_schedule",
    "image_scale",
    "image_data",
    "spec_of",
    "image_run",
    "image_grid",
    "image_info",
]

DIVERGED_BPD = 8.0  # a model worse than uniform over 256 levels (8 bits/dim) has diverged


# What every image experiment shares at a scale: test images (``n_test``, see :func:`image_data`;
# an experiment may use fewer), the downsampling factor of the CIFAR-10 subset (``pool``), images
# per timed sampling call (``sample_n``), model overrides (image shape; at ci two levels) and, at
# ci and paper scale, the training schedule (cpu-real and gpu-small step counts differ per experiment).
_IMAGE_SCALES = {
    "ci": dict(
        n_test=0,
        pool=1,
        sample_n=16,
        model=dict(image_shape=(3, 8, 8), n_subflows=2),
        train=dict(steps=20, batch_size=32, log_every=10, eval_every=10**6, save_every=10**6),
    ),
    "cpu-real": dict(n_test=2000, pool=2, sample_n=16, model=dict(image_shape=(3, 16, 16))),
    "gpu-small": dict(n_test=2000, pool=1, sample_n=64, model=dict(image_shape=(3, 32, 32))),
    "paper": dict(
        n_test=10000,
        pool=1,
        sample_n=256,
        model=dict(image_shape=(3, 32, 32)),
        train=dict(steps=195_000),  # batch 256 and 1000 importance samples: the paper presets' own schedule
    ),
}


def cpu_real_schedule(steps: int, **extra) -> dict:
    """The training schedule of the image experiments at ``cpu-real`` scale: ``steps`` of batch 32.

    Learning rate 2e-3 with half an epoch of warm-up, then ``lr_decay`` 0.99; a log line every
    50 steps, a checkpoint every 100 (so an interrupted run resumes), no evaluation during
    training (the test bpd is measured once at the end). ``extra`` settings (e.g.
    ``grad_clip=1.0``) follow the learning-rate ones.

    >>> cpu_real_schedule(400, grad_clip=1.0)["grad_clip"], cpu_real_schedule(500)["steps"]
    (1.0, 500)
    """
    return dict(
        steps=steps,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=0.5,
        lr_decay=0.99,
        **extra,
        log_every=50,
        eval_every=10**6,
        save_every=100,
    )


def image_scale(
    scale: str,
    preset: str,
    model: dict | None = None,
    train: dict | None = None,
    n_test: int | None = None,
    **settings,
) -> dict:
    """One scale's settings of an image experiment (mixing, residual, stability).

    ``{"preset", **settings, "n_test", "pool", "sample_n", "model", "train"}``: ``n_test``
    (unless given: an experiment may test on fewer images), ``pool``, ``sample_n`` and the
    shared model overrides come from the scale (the same for every image experiment),
    followed in ``model`` by the experiment's own overrides; ``train`` is the scale's shared
    schedule (ci, paper) unless given, and must be given at cpu-real (:func:`cpu_real_schedule`
    with the experiment's steps) and gpu-small.
    ``settings`` are the experiment's own (width knob and base width, learning rates).
    """
    shared = _IMAGE_SCALES[scale]
    if train is None and "train" not in shared:
        raise ValueError(f"image_scale({scale!r}, ...): this scale has no shared schedule; pass train=dict(...)")
    return {
        "preset": preset,
        **settings,
        "n_test": shared["n_test"] if n_test is None else n_test,
        "pool": shared["pool"],
        "sample_n": shared["sample_n"],
        "model": {**shared["model"], **(model or {})},
        "train": dict(shared["train"] if train is None else train),
    }


def image_data(scale: str, data_dir, runs_root: Path, n_test: int, pool: int = 1) -> tuple[dict, str]:
    """The trainer's data settings for a scale and a one-line description of the data.

    ``ci``: the embedded synthetic 3x8x8 set (2,000 train, 500 test). ``cpu-real`` and
    ``gpu-small``: the :func:`flowlib.data.cifar_subset` of ``data_dir`` (train =
    ``data_batch_1[:5 n_test]``, test = ``test_batch[:n_test]``, downsampled ``pool`` x
    ``pool``), written once under ``runs_root``. ``paper``: the full CIFAR-10 in ``data_dir``.
    No ``data_dir`` at those scales is an :class:`ExperimentError`; a directory without the
    files it needs a :class:`flowlib.data.DataError`.
    """
    if scale == "ci":
        return {"dataset": "synthetic"}, "flowlib.data synthetic 3x8x8 (2,000 train / 500 test images)"
    if data_dir is None:
        raise ExperimentError(
            f"--scale {scale} trains on CIFAR-10: pass --data-dir pointing to a cifar-10-batches-py "
            "directory (cpu-real and gpu-small read only batches.meta, data_batch_1 and test_batch)"
        )
    if scale in ("cpu-real", "gpu-small"):
        name = f"cifar10-subset-{n_test}" + (f"-pool{pool}" if pool > 1 else "")
        subset = cifar_subset(data_dir, runs_root / name, n_test, pool)
        side = 32 // pool
        return (
            {"dataset": "cifar10", "data_dir": str(subset)},
            f"CIFAR-10 subset: train = first {5 * n_test:,} images of data_batch_1, "
            f"test = first {n_test:,} images of test_batch"
            + (f", downsampled to 3x{side}x{side} by {pool}x{pool} average pooling" if pool > 1 else ""),
        )
    return {"dataset": "cifar10", "data_dir": str(data_dir)}, "CIFAR-10 (50,000 train / 10,000 test images)"


def spec_of(data: dict, **parts) -> dict:
    """The settings that identify a run (data directory paths left out, so runs can move machines)."""
    return {"data": {k: v for k, v in data.items() if k != "data_dir"}, **parts}


def image_run(preset: str, model: dict, train: dict, seed: int, run_dir: Path, device: str, sample_n: int) -> dict:
    """Train one image model with :func:`flowlib.train.train` and measure it.

    Returns ``params``, ``train_bpd``, ``test_bpd`` (and ``test_bpd_iw``), ``train_images_per_s``,
    ``ms_per_step``, ``epoch_s`` (time of one pass over the training set at that speed),
    ``sample_images_per_s`` (a timed ``model.sample(sample_n)`` after one warm-up call),
    ``diverged`` (a non-finite loss, a series or solver failure, or test bpd above
    :data:`DIVERGED_BPD`) and ``error`` (the message of a failure). A run interrupted by
    Ctrl-C raises ``KeyboardInterrupt`` so nothing half-done is recorded; re-running
    continues it from its ``last.pt``.
    """
    from flowlib.functional import SeriesNotConverged
    from flowlib.train import NonFiniteError, TrainConfig
    from flowlib.train import train as train_fn

    resume = (run_dir / "train" / "last.pt").exists()  # an unfinished run continues; one without a checkpoint restarts
    cfg = TrainConfig.for_preset(
        preset,
        **{"n_samples": 4, "temperatures": (1.0,), "progress": False, "iw_samples": 0, **train},
        model=model,
        seed=seed,
        device=device,
        out=str(run_dir / "train"),
        resume=resume,
        overwrite=not resume,
        on_nonfinite="stop",
    )
    record = {
        "params": None,
        "train_bpd": float("nan"),
        "test_bpd": float("nan"),
        "train_images_per_s": float("nan"),
        "ms_per_step": float("nan"),
        "epoch_s": float("nan"),
        "sample_images_per_s": float("nan"),
        "diverged": False,
        "error": None,
    }
    try:
        summary = train_fn(cfg)
    except (NonFiniteError, SeriesNotConverged, torch.linalg.LinAlgError) as e:
        record.update(diverged=True, error=f"{type(e).__name__}: {e}")
        return record
    if summary["interrupted"]:
        raise KeyboardInterrupt(f"training of {run_dir} was interrupted; run the same command again to continue")
    net = summary.pop("model")
    ips = summary["images_per_s"]
    steps_per_epoch = json.loads((run_dir / "train" / "config.json").read_text())["steps_per_epoch"]
    record.update(
        params=summary["n_params"],
        train_bpd=summary["train_bpd"],
        test_bpd=summary["test_bpd"],
        train_images_per_s=ips,
        ms_per_step=1000 * cfg.batch_size / ips,
        epoch_s=steps_per_epoch * cfg.batch_size / ips,
    )
    if "test_bpd_iw" in summary:
        record["test_bpd_iw"] = summary["test_bpd_iw"]
    if not math.isfinite(summary["test_bpd"]) or summary["test_bpd"] > DIVERGED_BPD:
        record.update(diverged=True, error=f"test bpd {summary['test_bpd']} > {DIVERGED_BPD}")
    net.eval()
    try:
        g = torch.Generator(device=device).manual_seed(seed)
        net.sample(min(sample_n, 8), generator=g)  # warm-up (kernels, caches)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        net.sample(sample_n, generator=g)
        if device == "cuda":
            torch.cuda.synchronize()
        record["sample_images_per_s"] = sample_n / (time.perf_counter() - t0)
    except (SeriesNotConverged, torch.linalg.LinAlgError, ValueError) as e:
        record["error"] = f"sampling failed: {type(e).__name__}: {e}"
    return record


def image_grid(
    arms: list[Arm],
    seeds: int,
    runs: Path,
    s: dict,
    data: dict,
    models: dict[str, dict],
    device: str,
    label: str,
    quiet: bool,
) -> list[dict]:
    """:func:`run_grid` over image arms, each run an :func:`image_run`.

    Arm ``a`` trains the model ``models[a.name]`` (overrides of the preset ``s["preset"]``)
    with the scale's schedule ``s["train"]`` on ``data`` (:func:`image_data`); an arm with an
    ``lr`` setting trains at that learning rate. A run's spec (:func:`spec_of`) holds the
    preset, the model overrides and the schedule with that learning rate.
    """

    def schedule(arm: Arm) -> dict:
        return {**s["train"], "lr": arm.settings["lr"]} if "lr" in arm.settings else s["train"]

    def one(arm: Arm, seed: int, run_dir: Path) -> dict:
        return image_run(s["preset"], models[arm.name], {**schedule(arm), **data}, seed, run_dir, device, s["sample_n"])

    def spec(arm: Arm, seed: int) -> dict:
        return spec_of(data, preset=s["preset"], model=models[arm.name], train=schedule(arm))

    return run_grid(arms, seeds, runs, one, spec, device, label, log_line(quiet))


def image_info(
    title: str,
    command: str,
    scale: str,
    seeds: int,
    device: str,
    doc: str,
    s: dict,
    data_text: str,
    budget: dict,
    **extra,
) -> dict:
    """:func:`result_info` of an image experiment whose module docstring is ``doc``.

    The protocol ends with this run's preset, data, schedule and model overrides; the settings
    are ``preset``, ``model_overrides``, ``train``, then ``extra``, ``data`` and ``budget``.
    """
    this_run = (
        f"preset `{s['preset']}`, data: {data_text}; training settings {s['train']}; model overrides {s['model']}."
    )
    return result_info(
        title,
        command,
        scale,
        seeds,
        device,
        protocol_text(doc, this_run),
        preset=s["preset"],
        model_overrides=s["model"],
        train=s["train"],
        **extra,
        data=data_text,
        budget=budget,
    )
