"""Train a flow on images; one readable file (nanoGPT's train.py shape).

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

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import flowlib
from flowlib import cli, data, precision, presets, rundir
from flowlib.validate import ConfigError, check_int, check_number, check_numbers

__all__ = [
    "TrainConfig",
    "RESUME_MAY_CHANGE",
    "train",
    "main",
    "ConfigError",
    "NonFiniteError",
    "DivergedError",
    "lr_factor",
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
    "device": ("auto", "cuda", "cpu"),
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


def _differences(saved: dict, now: dict) -> list[str]:
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


# --------------------------------------------------------------------------------------------
# Helpers: checkpoints, evaluation, samples, diagnosis
# --------------------------------------------------------------------------------------------


def _atomic_save(obj, path: Path) -> None:
    """``torch.save`` through :func:`flowlib.rundir.atomic_write`: never half a file, no temporary left."""
    rundir.atomic_write(path, lambda f: torch.save(obj, f))


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@torch.no_grad()
def _evaluate(model, images, batch_size: int, device, rank: int, world: int, seed: int, iw_samples: int = 0) -> float:
    """Mean test bpd over ``images`` (sharded over ranks); ``iw_samples > 0`` uses ``log_prob_iw``.

    Runs under its own seeded RNG so evaluations neither disturb nor depend on the training RNG.
    """
    was_training = model.training
    model.eval()
    shard = images[rank::world]
    D = math.prod(images.shape[1:])
    total = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of bpd, count]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for i in range(0, len(shard), batch_size):
            x = shard[i : i + batch_size].to(device)
            if iw_samples > 0:
                bpd = -model.log_prob_iw(x, n_samples=iw_samples) / (D * math.log(2))
            else:
                bpd = model(x)
            total += torch.stack([bpd.double().sum(), torch.tensor(float(len(x)), device=device)])
    if world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


@torch.no_grad()
def _save_samples(model, cfg: TrainConfig, step: int, out: Path, device, writer) -> list[str]:
    """Sample grids at each temperature as PNG (and TensorBoard images); same noise at every call."""
    from PIL import Image

    was_training = model.training
    model.eval()
    paths = []
    (out / "samples").mkdir(exist_ok=True)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for t in cfg.temperatures:
            torch.manual_seed(cfg.seed + 1)
            g = torch.Generator(device=device).manual_seed(cfg.seed + 1)
            x = model.sample(cfg.n_samples, temperature=float(t), generator=g).cpu()  # [n, C, H, W] uint8
            n, C, H, W = x.shape
            cols = math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
            grid = torch.zeros(C, rows * (H + 1) + 1, cols * (W + 1) + 1, dtype=torch.uint8)
            for i in range(n):
                r, c = divmod(i, cols)
                grid[:, 1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = x[i]
            writer.add_image(f"samples/T{t:.2f}", grid, step)
            scale = max(1, 256 // grid.shape[-1])  # small images (8x8) are enlarged, pixels stay sharp
            img = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2).permute(1, 2, 0).numpy()  # [h, w, C]
            path = out / "samples" / f"step{step:07d}_T{t:.2f}.png"
            with rundir.write_guard(path):
                Image.fromarray(img[..., 0] if C == 1 else img).save(path)
            paths.append(str(path))
    model.train(was_training)
    return paths


def _plot_curves(out: Path) -> Path:
    """``bpd_curve.png``: train and test bits/dim against the step, from ``metrics.jsonl``."""
    from matplotlib.figure import Figure

    records = rundir.read_metrics(out / "metrics.jsonl")
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.subplots()
    for key, style in (("train_bpd", "-"), ("test_bpd", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r and "step" in r and not r.get("final")]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=key.replace("_bpd", ""), markersize=3)
    ax.set(xlabel="step", ylabel="bits per dimension", title=out.name)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend()
    path = out / "bpd_curve.png"
    with rundir.write_guard(path):
        fig.savefig(path, dpi=120)
    return path


def _first_nonfinite(model: nn.Module, x) -> str:
    """Name the input batch, or the first parameter, gradient or layer output that is not finite.

    Only called on failure. A non-finite input is bad data, reported as such (not blamed on a layer).
    """
    if x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        return f"bad data: the input batch holds {bad} NaN/Inf value(s) (check the data set, not the model)"
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            return f"first non-finite parameter: {name}"
    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return f"first non-finite gradient: {name}"
    found = []

    def hook(module, args, output):
        outs = output if isinstance(output, (tuple, list)) else (output,)
        if not found and any(
            torch.is_tensor(o) and o.is_floating_point() and not torch.isfinite(o).all() for o in outs
        ):
            found.append(module)

    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # a layer may refuse NaN input; the layer found so far is what we want
        pass
    finally:
        for h in handles:
            h.remove()
    if found:
        m = found[0]
        return f"first layer with non-finite output: {names[m] or 'model'} ({type(m).__name__})"
    return "parameters and gradients are finite (the loss itself overflowed)"


class _StopRequests:
    """Ctrl-C / SIGTERM handling with exact semantics at any moment.

    * First Ctrl-C or SIGTERM: ``stop`` becomes True; the loop stops at the next step boundary
      and writes ``last.pt`` there (step, data order and RNG all taken at that boundary).
    * A second Ctrl-C raises ``KeyboardInterrupt`` at once: the run aborts and writes nothing
      more. Inside :meth:`protect` (a checkpoint write) it is deferred to the end of the write,
      so the file on disk and what the message says about it always agree.
    * :meth:`finishing` (after the last step): any signal raises ``KeyboardInterrupt`` at once;
      ``last.pt`` is complete and ``--resume`` redoes the final evaluation.
    * ``quiet`` (closing files at the very end): signals are ignored, everything is written.

    Handlers are installed only from the main thread; elsewhere nothing changes.
    """

    def __init__(self):
        self.stop, self.critical, self.abort_pending, self.final = False, False, False, False
        self.started, self.quiet = False, False  # the training loop has begun / the run is closing
        self.old = {}
        if threading.current_thread() is threading.main_thread():
            self.old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            for s in self.old:
                signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if self.quiet:
            return
        if self.final:
            raise KeyboardInterrupt
        if self.stop:
            if signum != signal.SIGINT:
                return  # already stopping
            if self.critical:
                self.abort_pending = True
                return
            raise KeyboardInterrupt
        self.stop = True
        print(
            f"\n{signal.Signals(signum).name}: stopping at the next step boundary and saving last.pt there "
            "(Ctrl-C again to abort at once without saving)",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def protect(self):
        """A second Ctrl-C inside waits until the block (a checkpoint write and its bookkeeping) is done."""
        self.critical = True
        try:
            yield
        finally:
            self.critical = False
        if self.abort_pending:
            raise KeyboardInterrupt

    def finishing(self) -> None:
        self.final = True
        if self.abort_pending:
            raise KeyboardInterrupt

    def restore(self) -> None:
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}


def _close(bar, old_det: bool, metrics, writer, own_group: bool) -> None:
    """Release what a run holds: progress bar, global settings, files, process group."""
    bar.close()
    torch.use_deterministic_algorithms(old_det)
    if metrics is not None:
        metrics.close()
        writer.close()
    if own_group and dist.is_initialized():
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> dict:
    """Run ``cfg`` and return a summary dict (also written to ``out/summary.json``).

    The summary holds ``step``, ``train_bpd``, ``test_bpd`` (full test set), ``test_bpd_iw``
    (flow dequantization), ``best_test_bpd``, ``images_per_s``, ``wall_s``, ``n_params``,
    ``interrupted`` (stopped by a signal; ``aborted`` too after a second Ctrl-C, which writes
    nothing more), ``out``, and ``model`` (the trained :class:`flowlib.models.FlowModel`, not
    written to disk). Raises :class:`NonFiniteError` when the loss diverges and
    ``on_nonfinite="stop"`` (:class:`DivergedError` past the divergence bound);
    :class:`ConfigError` / :class:`flowlib.data.DataError` for bad settings, a busy or unsafe
    ``out`` or a damaged checkpoint; :class:`flowlib.rundir.WriteError` when an output cannot be
    written; ``KeyboardInterrupt`` for a second Ctrl-C during start-up (nothing trained).
    """
    cfg.validate()
    out = rundir.check_out(cfg.out)
    last_path = out / "last.pt"
    stop = _StopRequests()  # from here on a signal ends the run cleanly, also during start-up
    lock = rundir.RunLock(out) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        if lock is not None:
            lock.acquire()  # first: a second trainer stops here, whatever else is wrong
        if cfg.resume and not last_path.exists():
            held = [p.name for p in out.iterdir() if p.name != rundir.LOCK_NAME]
            hint = " (the run stopped before its first checkpoint)" if held else ""
            raise ConfigError(
                f"--resume: no checkpoint {last_path} to continue from{hint}; start afresh with --overwrite"
            )
        return _run(cfg, out, stop)
    except KeyboardInterrupt:
        if not stop.started:
            kept = f"{last_path} is unchanged" if last_path.exists() else "no checkpoint was written"
            message = f"aborted during start-up: nothing was trained; {kept}"
            print(message, file=sys.stderr)
            raise KeyboardInterrupt(message) from None
        raise
    finally:
        stop.restore()
        if lock is not None:
            lock.release()


def _run(cfg: TrainConfig, out: Path, stop: _StopRequests) -> dict:
    """The body of :func:`train`, with the lock held and the signal handlers installed."""
    from torch.utils.tensorboard import SummaryWriter

    from flowlib.models import ModelConfig, build_model

    t_start = time.perf_counter()
    last_path, best_path = out / "last.pt", out / "best.pt"

    # ---- the checkpoint to continue from: readable, same settings, not past --steps
    ckpt = None
    if cfg.resume:
        ckpt = rundir.load_checkpoint(last_path)
        diff = _differences(ckpt["config"], asdict(cfg))
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
        if isinstance(recorded, dict) and (edited := _differences(ckpt["config"], recorded)):
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

    # ---- devices and processes: DDP when launched by torchrun (RANK/WORLD_SIZE in the environment)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    ddp = "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    own_group = ddp and not dist.is_initialized()
    if ddp:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if own_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    master = rank == 0
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} DDP processes")
    batch = cfg.batch_size // world  # per rank
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls/convs: ~3x faster, ample for flows
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic
    old_det = torch.are_deterministic_algorithms_enabled()
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    # ---- the output directory: a fresh run only replaces the trainer's own files, and only with --overwrite
    if master:
        rundir.prepare_out(out, cfg.resume, cfg.overwrite)

    # ---- data on the device
    if ddp and not master:
        dist.barrier()  # rank 0 downloads (if asked) before the others read
    train_x, _ = data.load_dataset(cfg.dataset, cfg.data_dir, "train", download=cfg.download)
    test_x, _ = data.load_dataset(cfg.dataset, cfg.data_dir, "test")
    if ddp and master:
        dist.barrier()
    if batch > len(train_x) // world:
        raise ConfigError(
            f"batch_size (--batch-size) {cfg.batch_size} is larger than the {len(train_x)} {cfg.dataset} "
            f"training images; use at most {len(train_x) // world * world}"
        )
    test_x = test_x.to(device)
    batches = data.GPUBatches(train_x, batch, device=device, flip=cfg.flip, seed=cfg.seed, rank=rank, world_size=world)
    spe = batches.steps_per_epoch

    # ---- the model (architecture forced from the checkpoint on resume)
    torch.manual_seed(cfg.seed)
    try:
        if ckpt is not None:
            model = build_model(ModelConfig(**ckpt["model_config"]))
        else:
            overrides = dict(cfg.model)
            shape = tuple(train_x.shape[1:])
            if tuple(overrides.get("image_shape", shape)) != shape:
                raise ConfigError(
                    f"image_shape {overrides['image_shape']} does not match the {cfg.dataset} "
                    f"images {shape}; leave image_shape out, it is taken from the data"
                )
            overrides["image_shape"] = shape
            model = build_model(cfg.preset, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"bad model configuration (preset {cfg.preset!r}, overrides {cfg.model}): {e}") from e
    model.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    precision.set_conditioner_dtype(model, cfg.conditioner_dtype)

    # ---- data-dependent init (actnorm) on every rank BEFORE DDP; actnorm all-reduces its statistics
    torch.manual_seed(cfg.seed + rank)  # per-rank dequantization noise
    if ckpt is None:
        with torch.no_grad(), flowlib.validation("shape"):
            init_x = next(
                data.GPUBatches(
                    train_x,
                    min(len(train_x) // world, max(batch, 256)),
                    device=device,
                    seed=cfg.seed + 1,
                    rank=rank,
                    world_size=world,
                )
            )
            model.train()(init_x)

    if cfg.optimizer == "adamax":
        opt = torch.optim.Adamax(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, spe))
    step, best, last_train_bpd, high = 0, math.inf, math.nan, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, best = ckpt["step"], ckpt["best_test_bpd"]
        last_train_bpd, high = ckpt.get("train_bpd", math.nan), ckpt.get("diverge_streak", 0)
        batches.load_state_dict(ckpt["rng"]["data"])
        states = ckpt["rng"]["ranks"]
        if len(states) == world:
            _set_rng_state(states[rank], device)
        else:  # world size changed: same model and data order, fresh per-rank noise
            torch.manual_seed(cfg.seed + 1000 * step + rank)

    # ---- speed: bf16 conditioners, compile, DDP
    fwd = torch.compile(model) if cfg.compile else model
    net = (
        nn.parallel.DistributedDataParallel(fwd, device_ids=[device] if device.type == "cuda" else None) if ddp else fwd
    )
    params = [p for p in model.parameters() if p.requires_grad]

    writer = SummaryWriter(str(out / "tb"), purge_step=step if ckpt else None) if master else None
    if master:
        if ckpt is not None:  # drop lines written after the checkpoint; damaged lines are set aside
            records = rundir.read_metrics(out / "metrics.jsonl", set_aside=True)
            keep = [r for r in records if r.get("step", 0) <= step and "final" not in r]
            rundir.atomic_write(out / "metrics.jsonl", "".join(rundir.strict_json(r) + "\n" for r in keep).encode())
        info = {
            "train": asdict(cfg),
            "model": asdict(model.config),
            "n_params": n_params,
            "world_size": world,
            "device": str(device),
            "steps_per_epoch": spe,
            "torch": torch.__version__,
        }
        rundir.atomic_write(out / "config.json", rundir.strict_json(info, indent=2).encode())
        with rundir.write_guard(out / "metrics.jsonl"):
            metrics = open(out / "metrics.jsonl", "a")

    names = {p: n for n, p in model.named_parameters()}

    def checkpoint(path: Path) -> None:
        """Collective (every rank's RNG is gathered); rank 0 writes, never non-finite parameters or optimizer state."""
        bad = [f"parameter {n}" for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        bad += [
            f"optimizer state {k!r} of {names.get(p, '?')}"
            for p, state in opt.state.items()
            for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise NonFiniteError(
                f"step {step}: {bad[0]} is not finite; not writing {path} (last good checkpoint: step {last_saved})"
            )
        states = [None] * world
        if ddp:
            dist.all_gather_object(states, _rng_state(device))
        else:
            states = [_rng_state(device)]
        if master:
            _atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": step,
                    "best_test_bpd": best,
                    "train_bpd": last_train_bpd,
                    "diverge_streak": high,
                    "config": asdict(cfg),
                    "model_config": asdict(model.config),
                    "rng": {"ranks": states, "data": batches.state_dict()},
                },
                path,
            )

    def log(record: dict) -> None:
        if master:
            with rundir.write_guard(out / "metrics.jsonl"):
                metrics.write(rundir.strict_json(record) + "\n")
                metrics.flush()
            for k, v in record.items():
                if k not in ("step", "epoch", "time") and isinstance(v, float):
                    writer.add_scalar(k.replace("_", "/", 1) if k.startswith(("train", "test")) else k, v, step)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and master), unit="step", dynamic_ncols=True)
    last_saved = ckpt["step"] if ckpt else None
    skips, interrupted, aborted = 0, False, False
    sums, t_log, n_log, train_time = [0.0, 0.0], time.perf_counter(), 0, 0.0
    bound = cfg.diverge_factor * model.config.n_bits  # the uniform model has n_bits bits/dim

    def save_last() -> None:
        nonlocal last_saved
        with stop.protect():  # a second Ctrl-C waits for the write and the bookkeeping
            checkpoint(last_path)
            last_saved = step

    model.train()
    stop.started = True
    try:
        with flowlib.validation("shape"):  # shape checks only: no device syncs in the forward pass
            while step < cfg.steps:
                if stop.stop and not ddp:  # a step boundary: nothing of the next step is drawn yet
                    interrupted = True
                    break
                t0 = time.perf_counter()
                x = next(batches)
                if device.type == "cuda" and cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss = net(x).mean()  # bpd of the batch
                loss.backward()
                grad_norm = nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                # The NaN/Inf guard: one small tensor, one device sync per step (and one all-reduce in DDP).
                flags = torch.stack(
                    [loss.detach().float(), grad_norm.float(), torch.tensor(float(stop.stop), device=device)]
                )
                if ddp:
                    dist.all_reduce(flags)
                    flags[:2] /= world
                loss_v, gn_v, stop_v = flags.tolist()
                if not (math.isfinite(loss_v) and math.isfinite(gn_v)):
                    skips += 1
                    where = _first_nonfinite(model, x) if master else ""
                    msg = (
                        f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient'} at step {step + 1} "
                        f"(loss {loss_v}, grad norm {gn_v}); {where}"
                    )
                    log({"step": step + 1, "event": "nonfinite", "message": msg})
                    opt.zero_grad(set_to_none=True)
                    if cfg.on_nonfinite == "stop" or skips > cfg.max_skips:
                        kept = (
                            f"last good checkpoint: {last_path} (step {last_saved})"
                            if last_saved is not None
                            else "no checkpoint was written before it"
                        )
                        reason = "" if cfg.on_nonfinite == "stop" else f" ({skips} in a row, max_skips {cfg.max_skips})"
                        raise NonFiniteError(f"{msg}{reason}; stopped, {kept}")
                    bar.write(f"skipping batch: {msg}")
                else:
                    skips = 0
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    sums[0] += loss_v
                    sums[1] += gn_v
                    n_log += 1
                sched.step()
                step += 1
                train_time += time.perf_counter() - t0
                bar.update(1)
                log_now = step % cfg.log_every == 0 or step == cfg.steps
                eval_now = step % cfg.eval_every == 0 or step == cfg.steps
                if log_now or eval_now:
                    now = time.perf_counter()
                    record = {"step": step, "epoch": round(step / spe, 4), "time": round(now - t_start, 3)}
                    if log_now:
                        last_train_bpd = sums[0] / max(n_log, 1)
                        images = cfg.batch_size * (step % cfg.log_every or cfg.log_every)
                        record.update(
                            train_bpd=last_train_bpd,
                            images_per_s=images / (now - t_log),
                            lr=opt.param_groups[0]["lr"],
                            grad_norm=sums[1] / max(n_log, 1),
                        )
                        bar.set_postfix(
                            bpd=f"{last_train_bpd:.3f}", img_s=f"{images / (now - t_log):.0f}", refresh=False
                        )
                        high = high + 1 if cfg.diverge_factor > 0 and last_train_bpd > bound else 0
                    if eval_now:
                        sub = test_x[: cfg.eval_images] if cfg.eval_images else test_x
                        record["test_bpd"] = _evaluate(model, sub, batch, device, rank, world, cfg.seed)
                    log(record)
                    if log_now:
                        sums, t_log, n_log = [0.0, 0.0], time.perf_counter(), 0
                    if high >= cfg.diverge_logs:
                        kept = f"{last_path} (step {last_saved})" if last_saved is not None else "none was written"
                        raise DivergedError(
                            f"diverged: train bpd {last_train_bpd:.4g} at step {step} is above {bound:g} "
                            f"(diverge_factor {cfg.diverge_factor:g} x the uniform model's {model.config.n_bits} "
                            f"bits/dim) for {high} logs in a row; stopped without writing a checkpoint of it "
                            f"(last good checkpoint: {kept}). Lower --lr, set --grad-clip, or pass "
                            "--diverge-factor 0 to train on regardless"
                        )
                    if eval_now and record["test_bpd"] < best:
                        best = record["test_bpd"]
                        with stop.protect():
                            checkpoint(best_path)
                if step % cfg.save_every == 0 or step == cfg.steps or stop_v > 0:
                    save_last()
                if master and cfg.sample_every and step % cfg.sample_every == 0:
                    _save_samples(model, cfg, step, out, device, writer)
                if stop_v > 0:
                    interrupted = True
                    break
        if (interrupted or step == cfg.steps) and last_saved != step:  # e.g. --steps 0: a step-0 checkpoint
            save_last()
    except KeyboardInterrupt:  # a second Ctrl-C: abort now, write nothing more
        interrupted = aborted = True
    except BaseException:
        stop.quiet = True
        _close(bar, old_det, metrics if master else None, writer, own_group)
        raise
    bar.close()

    summary = {
        "step": step,
        "epoch": round(step / spe, 4),
        "train_bpd": last_train_bpd,
        "best_test_bpd": best,
        "n_params": n_params,
        "interrupted": interrupted,
        "out": str(out),
    }
    saved = f"{last_path} holds step {last_saved}" if last_saved is not None else "no checkpoint was written"
    try:
        if aborted:
            summary["aborted"] = True
            how = "continue with --resume" if last_saved is not None else "start again with --overwrite"
            print(
                f"aborted at step {step} by a second Ctrl-C: nothing more was written; {saved}; {how}", file=sys.stderr
            )
            summary["model"] = model
            return summary
        stop.finishing()  # from here any signal stops at once: last.pt is complete
        if stop.stop and not interrupted:
            raise KeyboardInterrupt
        if not interrupted:
            # ---- final evaluation on the full test set (and the importance-weighted bound for flow dequant)
            with flowlib.validation("shape"):
                summary["test_bpd"] = _evaluate(model, test_x, batch, device, rank, world, cfg.seed)
                if model.config.dequant == "flow" and cfg.iw_samples > 0:
                    summary["test_bpd_iw"] = _evaluate(
                        model, test_x, max(1, batch // 4), device, rank, world, cfg.seed, iw_samples=cfg.iw_samples
                    )
            if master:
                summary["samples"] = _save_samples(model, cfg, step, out, device, writer)
        summary["images_per_s"] = cfg.batch_size * (step - (ckpt["step"] if ckpt else 0)) / max(train_time, 1e-9)
        summary["wall_s"] = round(time.perf_counter() - t_start, 2)
        if master:
            final = {k: v for k, v in summary.items() if k != "samples"}
            if not interrupted:
                log({"final": True, **final})
            rundir.atomic_write(out / "summary.json", rundir.strict_json(final, indent=2).encode())
            _plot_curves(out)
            if interrupted:
                print(f"interrupted at step {step}: {saved}; continue with --resume", file=sys.stderr)
            else:
                iw = (
                    f" | test (iw, K={cfg.iw_samples}) {summary['test_bpd_iw']:.4f}"
                    if cfg.iw_samples and "test_bpd_iw" in summary
                    else ""
                )
                print(
                    f"done: step {step} | train {last_train_bpd:.4f} bpd | test {summary['test_bpd']:.4f} bpd{iw} | "
                    f"{summary['images_per_s']:.0f} img/s | {summary['wall_s']:.1f} s | {n_params:,} params | {out}"
                )
    except KeyboardInterrupt:
        if interrupted:  # a second signal while summary.json and the plot of a stopped run were written
            what = f"interrupted at step {step}: {saved}; summary.json or bpd_curve.png may be missing"
        else:
            what = (
                f"interrupted after the training steps (step {step}): {saved}; the final evaluation, samples "
                "or summary.json may be missing"
            )
        summary["interrupted"] = True
        print(f"{what}: run the same command with --resume to write them", file=sys.stderr)
    finally:
        stop.quiet = True
        _close(bar, old_det, metrics if master else None, writer, own_group)
    summary["model"] = model
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flowlib.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every TrainConfig and ModelConfig field is a flag; see the module docstring.",
    )
    g = p.add_argument_group("training (TrainConfig; preset defaults from flowlib.presets)")
    for f in dataclasses.fields(TrainConfig):
        if f.name != "model":
            cli.add_field(g, f, None, choices=sorted(presets.PRESETS) if f.name == "preset" else CHOICES.get(f.name))
    cli.add_model_arguments(p.add_argument_group("model (ModelConfig overrides of the preset)"))
    return p


def main(argv=None) -> int:
    """Command-line entry point; exit code 0 done, 1 diverged or a write failed, 2 usage error, 130 interrupted.

    ``--resume`` continues with the settings saved in ``last.pt``; flags given now replace them,
    and :func:`train` refuses those outside :data:`RESUME_MAY_CHANGE` that differ.
    """
    from flowlib.models import ModelConfig

    parser = build_parser()
    args = vars(parser.parse_args(argv))
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    overrides = {k: v for k, v in args.items() if v is not None and k not in model_fields and k != "preset"}
    model = {k: v for k, v in args.items() if v is not None and k in model_fields}
    last = Path(args["out"] if args["out"] is not None else TrainConfig.out) / "last.pt"
    try:
        if args["resume"] and str(args["out"]).strip() and last.exists():
            ckpt = rundir.load_checkpoint(last)
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            cfg = TrainConfig(**{**{k: v for k, v in ckpt["config"].items() if k in known}, **overrides})
            if args["preset"] is not None:
                cfg.preset = args["preset"]
            saved_model = json.loads(rundir.strict_json(ckpt["model_config"]))
            changed = {k: v for k, v in model.items() if json.loads(rundir.strict_json(v)) != saved_model.get(k)}
            if changed:
                cfg.model = {**cfg.model, **changed}
        else:
            cfg = TrainConfig.for_preset(args["preset"] or "tiny", **overrides, model=model)
        summary = train(cfg)
    except (ConfigError, data.DataError) as e:
        parser.error(str(e))
    except (NonFiniteError, rundir.WriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # before train() installed its handlers, or a second Ctrl-C during start-up
        if "aborted during start-up" not in str(e):
            print("aborted before training started: nothing was written", file=sys.stderr)
        return 130
    return 130 if summary["interrupted"] else 0


if __name__ == "__main__":
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a late Ctrl-C: no traceback while Python shuts down
    sys.exit(code)
