"""The settings of a training run: :class:`TrainConfig`, what ``--resume`` may change, the schedule.

>>> cfg = TrainConfig.for_preset("tiny", steps=10)
>>> cfg.batch_size, cfg.lr
(64, 0.01)
>>> round(lr_factor(cfg, step=0, steps_per_epoch=10), 3)  # linear warm-up over one epoch
0.1
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from flowlib import data, precision, presets, rundir
from flowlib.devices import DEVICES
from flowlib.validate import ConfigError, check_int, check_number, check_numbers

__all__ = [
    "TrainConfig",
    "CHOICES",
    "RESUME_MAY_CHANGE",
    "ConfigError",
    "NonFiniteError",
    "DivergedError",
    "lr_factor",
    "resume_checkpoint",
]


class NonFiniteError(RuntimeError):
    """The loss or a gradient became NaN/Inf; the message names the step and, if it can, the layer."""


class DivergedError(NonFiniteError):
    """The train bpd stayed above the divergence bound: finite, but as useless as a NaN (a subclass so
    callers that handle non-finite runs handle these too)."""


CHOICES = {
    "dataset": data.DATASETS,
    "optimizer": ("adamax", "adamw"),
    "on_nonfinite": ("stop", "skip"),
    "device": DEVICES,
    "conditioner_dtype": tuple(precision.CONDITIONER_DTYPES),
}


@dataclass
class TrainConfig:
    """Everything a run needs, as plain values (stored in ``config.json`` and every checkpoint)."""

    # model
    preset: str = "tiny"  # a name of flowlib.presets.PRESETS (model and training defaults)
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {"mixing": "emerging"}
    # data
    dataset: str = "digits"  # cifar10 | digits | synthetic
    data_dir: str | None = None  # cifar10: cifar-10-batches-py (or its parent); None: flowlib.data.find_cifar10
    download: bool = False  # cifar10: fetch the official archive into data_dir when missing
    flip: bool = True  # random horizontal flips
    # optimisation
    steps: int = 1000  # optimizer steps in total (a resumed run continues up to this number)
    batch_size: int = 64  # global batch, split evenly over DDP ranks
    optimizer: str = "adamax"  # adamax: warm-up + exponential decay (official) | adamw: warm-up + cosine
    lr: float = 1e-3
    warmup_epochs: float = 10.0  # linear warm-up from lr/warmup_steps to lr
    lr_decay: float = 0.995  # adamax: lr factor per epoch after warm-up, applied smoothly per step
    adam_eps: float = 1e-7  # official Adamax eps
    weight_decay: float = 0.0  # adamw only
    grad_clip: float = 0.0  # max global gradient norm (0: no clipping; the norm is always logged)
    on_nonfinite: str = "stop"  # stop | skip: what a NaN/Inf loss or gradient does
    max_skips: int = 20  # skip mode: stop after this many non-finite steps in a row
    diverge_factor: float = 2.0  # stop when train bpd > this * n_bits (the uniform model's bpd); 0: never
    diverge_logs: int = 3  # ... for this many logged values in a row
    # evaluation, logging, checkpoints
    out: str = "runs/flow"
    resume: bool = False  # continue exactly from out/last.pt
    overwrite: bool = False  # allow starting afresh in an out dir that holds a run
    log_every: int = 50  # steps between metrics.jsonl lines
    eval_every: int = 1000  # steps between test-set evaluations (and best.pt updates)
    eval_images: int = 0  # test images per periodic evaluation (0: all); the final one uses all
    save_every: int = 1000  # steps between last.pt writes (also written at the end and on Ctrl-C)
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    n_samples: int = 64  # images per sample grid
    temperatures: tuple = (0.0, 0.5, 0.7, 1.0)
    iw_samples: int = 16  # importance samples of the final log_prob_iw (flow dequantization; paper presets: 1000)
    progress: bool = True  # tqdm bar
    # system
    device: str = "auto"  # auto | cuda | cpu
    conditioner_dtype: str = "float32"  # float32 | bfloat16 (conditioner networks only; log-dets stay float32)
    compile: bool = False  # torch.compile the model's loss
    channels_last: bool = True  # CUDA only
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume tests)

    @classmethod
    def for_preset(cls, preset: str, **overrides) -> TrainConfig:
        """The training defaults of ``preset`` (:data:`flowlib.presets.PRESETS`) with ``overrides``."""
        try:
            defaults = presets.preset(preset).train
        except ValueError as e:
            raise ConfigError(f"preset (--preset): {e}") from None
        return cls(**{"preset": preset, **defaults, **overrides})

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field (and its flag), the allowed range and the value.

        Every value is checked here, before any data is loaded, for the command line and for
        ``train(TrainConfig(...))`` alike; what needs the data or the checkpoint (batch size
        against the training set, ``steps`` against the saved step) is checked by :func:`train`
        right after loading them, still before the first step.
        """
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("batch_size", "log_every", "eval_every", "save_every", "n_samples", "max_skips", "diverge_logs"):
            check_int(name, getattr(self, name), low=1)
        for name in ("steps", "eval_images", "sample_every", "iw_samples"):
            check_int(name, getattr(self, name), low=0)
        check_int("seed", self.seed, low=0, high=2**32 - 1)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("warmup_epochs", self.warmup_epochs, low=0)
        check_number("lr_decay", self.lr_decay, low=0, high=1, low_open=True)
        check_number("adam_eps", self.adam_eps, low=0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0)
        check_number("grad_clip", self.grad_clip, low=0)
        check_number("diverge_factor", self.diverge_factor, low=0)
        check_numbers("temperatures", self.temperatures, low=0)
        if not isinstance(self.model, dict):
            raise ConfigError(f"model must be a dict of ModelConfig overrides, got {self.model!r}")
        if not isinstance(self.out, str) or not self.out.strip():
            raise ConfigError(f'out (--out) must name a directory for the run, e.g. "runs/flow"; got {self.out!r}')


# Settings a --resume may change (they do not change what the run computes step by step);
# any other difference from the saved run is refused with the list of differences.
RESUME_MAY_CHANGE = (
    "steps",
    "log_every",
    "eval_every",
    "eval_images",
    "save_every",
    "sample_every",
    "n_samples",
    "temperatures",
    "iw_samples",
    "progress",
    "on_nonfinite",
    "max_skips",
    "diverge_factor",
    "diverge_logs",
    "data_dir",
    "download",
    "device",
    "compile",
    "out",
    "resume",
    "overwrite",
)


def resume_differences(saved: dict, now: dict) -> list[str]:
    """``"name: saved A, now B"`` for each field outside :data:`RESUME_MAY_CHANGE` that differs."""

    def plain(v):
        return json.loads(rundir.strict_json(v))  # tuples and lists, NaN and null compare alike

    return [
        f"{name} (saved {saved[name]!r}, now {now[name]!r})"
        for name in now
        if name not in RESUME_MAY_CHANGE and name in saved and plain(saved[name]) != plain(now[name])
    ]


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at ``step`` (0-based).

    adamax (official): ``min(1, (step+1)/warmup) * lr_decay ** epoch``; the official code steps
    a LambdaLR once per epoch (a staircase), here ``epoch = step / steps_per_epoch`` is continuous.
    adamw (alternative): the same linear warm-up, then a cosine from 1 to 0 at ``cfg.steps``.
    """
    warmup = max(1.0, cfg.warmup_epochs * steps_per_epoch)
    ramp = min(1.0, (step + 1) / warmup)
    if cfg.optimizer == "adamax":
        return ramp * cfg.lr_decay ** (step / steps_per_epoch)
    progress = min(1.0, max(0.0, (step - warmup) / max(1.0, cfg.steps - warmup)))
    return ramp * 0.5 * (1 + math.cos(math.pi * progress))


def resume_checkpoint(cfg: TrainConfig, out: Path) -> dict | None:
    """The checkpoint ``out/last.pt`` to continue from (``None`` for a fresh run), checked before any work.

    Refused, with what to do: no checkpoint, settings outside :data:`RESUME_MAY_CHANGE` that differ
    from the saved run, an edited ``config.json``, ``--steps`` below the saved step.
    """
    last_path = out / "last.pt"
    if not cfg.resume:
        return None
    if not last_path.exists():
        held = [p.name for p in out.iterdir() if p.name != rundir.LOCK_NAME]
        hint = " (the run stopped before its first checkpoint)" if held else ""
        raise ConfigError(f"--resume: no checkpoint {last_path} to continue from{hint}; start afresh with --overwrite")
    ckpt = rundir.load_checkpoint(last_path)
    diff = resume_differences(ckpt["config"], asdict(cfg))
    if diff:
        raise ConfigError(
            f"--resume: these settings differ from the run saved in {last_path}: {'; '.join(diff)}. "
            f"A resumed run keeps its settings except {', '.join(RESUME_MAY_CHANGE[:-3])}; "
            "to change the others start a new run (another --out, or --overwrite)"
        )
    try:
        recorded = json.loads((out / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None  # missing or unreadable: it is rewritten below from the checkpoint's settings
    if isinstance(recorded, dict) and (edited := resume_differences(ckpt["config"], recorded)):
        raise ConfigError(
            f"--resume: {out / 'config.json'} was edited ({'; '.join(edited)} against {last_path}); "
            "config.json only records the run's settings, the run continues with those in last.pt. "
            f"Undo the edit (or delete config.json); flags that may change on --resume: "
            f"{', '.join('--' + n.replace('_', '-') for n in RESUME_MAY_CHANGE[:-3])}"
        )
    if cfg.steps < ckpt["step"]:
        raise ConfigError(
            f"steps (--steps) {cfg.steps} is below the step {ckpt['step']} saved in {last_path}; "
            f"pass --steps {ckpt['step']} or more"
        )
    return ckpt
