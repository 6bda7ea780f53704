"""What a run carries from step to step, and its checkpoints: written whole, restored exactly.

A checkpoint (``last.pt``, ``best.pt``) is a plain dict: model, optimizer and scheduler state,
:class:`Progress`, the settings (``config``, ``model_config``), every rank's RNG state and the
data order. Restoring it and running on gives the same numbers, bit for bit, as never stopping.

>>> Progress().step, Progress().best
(0, inf)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from flowlib import rundir

from .config import ConfigError, NonFiniteError, TrainConfig
from .runtime import Runtime

__all__ = ["Progress", "Checkpointer"]


@dataclass
class Progress:
    """The loop's counters; the first four travel in every checkpoint."""

    step: int = 0
    best: float = math.inf  # best full test bpd so far (best.pt holds that model)
    train_bpd: float = math.nan  # the last logged train bpd
    diverge_streak: int = 0  # logged train bpds in a row above the divergence bound
    last_saved: int | None = None  # the step last.pt holds (None: none written by this run or before it)
    skips: int = 0  # non-finite steps in a row (on_nonfinite="skip")
    interrupted: bool = False
    aborted: bool = False  # a second Ctrl-C: nothing more is written
    train_time: float = 0.0  # seconds inside training steps


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


class Checkpointer:
    """Writes and restores the checkpoints of one run (the model, its optimizer, scheduler and data order)."""

    def __init__(self, cfg: TrainConfig, rt: Runtime, model: nn.Module, opt, sched, batches):
        self.cfg, self.rt, self.model, self.opt, self.sched, self.batches = cfg, rt, model, opt, sched, batches
        self.names = {p: n for n, p in model.named_parameters()}

    def _nonfinite(self) -> list[str]:
        bad = [f"parameter {n}" for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        return bad + [
            f"optimizer state {k!r} of {self.names.get(p, '?')}"
            for p, state in self.opt.state.items()
            for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()
        ]

    def save(self, path: Path, progress: Progress) -> None:
        """Collective (every rank's RNG is gathered); rank 0 writes, never non-finite parameters or optimizer state."""
        bad = self._nonfinite()
        if bad:
            raise NonFiniteError(
                f"step {progress.step}: {bad[0]} is not finite; not writing {path} "
                f"(last good checkpoint: step {progress.last_saved})"
            )
        states = [None] * self.rt.world
        if self.rt.ddp:
            dist.all_gather_object(states, _rng_state(self.rt.device))
        else:
            states = [_rng_state(self.rt.device)]
        if self.rt.master:
            checkpoint = {
                "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "step": progress.step,
                "best_test_bpd": progress.best,
                "train_bpd": progress.train_bpd,
                "diverge_streak": progress.diverge_streak,
                "config": asdict(self.cfg),
                "model_config": asdict(self.model.config),
                "rng": {"ranks": states, "data": self.batches.state_dict()},
            }
            rundir.atomic_write(path, lambda f: torch.save(checkpoint, f))

    def _load_model(self, state: dict) -> None:
        """The checkpoint's parameters into the model, or a :class:`ConfigError` saying which do not fit."""
        try:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            problem = "; ".join(
                f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        except RuntimeError as e:  # a parameter of another shape
            problem = str(e).splitlines()[-1].strip()
        if problem:
            raise ConfigError(
                f"cannot resume: the parameters in {self.cfg.out}/last.pt do not fit the model this flowlib "
                f"builds from its settings ({problem}); it was written by another version of flowlib. Resume "
                "with that version, or start afresh with --overwrite"
            )

    def restore(self, checkpoint: dict) -> Progress:
        """Load ``checkpoint`` into the model, optimizer, scheduler, data order and RNG; its :class:`Progress`.

        With another number of DDP processes the model and data order are the same, the
        per-rank noise is drawn afresh.
        """
        self._load_model(checkpoint["model"])
        self.opt.load_state_dict(checkpoint["optimizer"])
        self.sched.load_state_dict(checkpoint["scheduler"])
        self.batches.load_state_dict(checkpoint["rng"]["data"])
        step = checkpoint["step"]
        states = checkpoint["rng"]["ranks"]
        if len(states) == self.rt.world:
            _set_rng_state(states[self.rt.rank], self.rt.device)
        else:
            torch.manual_seed(self.cfg.seed + 1000 * step + self.rt.rank)
        return Progress(
            step=step,
            best=checkpoint["best_test_bpd"],
            train_bpd=checkpoint.get("train_bpd", math.nan),
            diverge_streak=checkpoint.get("diverge_streak", 0),
            last_saved=step,
        )
