"""Where a training run executes: device, DDP processes and the global torch switches, set and restored.

:func:`runtime` is the one place that touches process-wide state for a run; everything it
changes comes back when the block ends (normally or by an exception):

* the device (``--device auto|cuda|cpu``, :func:`flowlib.devices.resolve_device`) and, when
  launched by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment), the DDP process group
  (NCCL on CUDA, gloo on the CPU; destroyed at the end if the run created it);
* TF32 matmuls and convolutions and ``cudnn.benchmark`` on CUDA (TF32: ~3x faster, ample for flows);
* ``torch.use_deterministic_algorithms`` with ``--deterministic``;
* shape-only input validation (:func:`flowlib.validation`): no device syncs in the forward pass.

>>> from flowlib.train import TrainConfig
>>> with runtime(TrainConfig(device="cpu")) as rt:
...     rt.device, rt.world, rt.master
(device(type='cpu'), 1, True)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

import flowlib
from flowlib.devices import DeviceError, resolve_device

from .config import ConfigError, TrainConfig

__all__ = ["Runtime", "runtime"]


@dataclass(frozen=True)
class Runtime:
    """The device and the DDP layout of a run (``world == 1`` without DDP)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    channels_last: bool = False  # CUDA with --channels-last: inputs and weights in NHWC

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        """Rank 0: the process that logs and writes files."""
        return self.rank == 0

    @property
    def rng_devices(self) -> list:
        """The devices whose RNG ``torch.random.fork_rng`` must fork besides the CPU's."""
        return [self.device] if self.device.type == "cuda" else []

    def mean_over_ranks(self, values: list) -> list[float]:
        """``values`` (floats or 0-d tensors) as floats, averaged over the DDP ranks: one device sync.

        The last value is summed instead (a flag: any rank asking to stop makes it positive).
        """
        flags = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device) for v in values])
        if self.ddp:
            dist.all_reduce(flags)
            flags[:-1] /= self.world
        return flags.tolist()


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def runtime(cfg: TrainConfig) -> Iterator[Runtime]:
    """The :class:`Runtime` of ``cfg``; process-wide switches set for the block and restored after it."""
    try:
        device = resolve_device(cfg.device)
    except DeviceError as e:
        raise ConfigError(str(e)) from None
    ddp = _launched_by_torchrun()
    own_group = ddp and not dist.is_initialized()
    if ddp and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    old = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
    )
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = not cfg.deterministic
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
        if cfg.batch_size % world:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} DDP processes")
        with flowlib.validation("shape"):
            yield Runtime(device, rank, world, channels_last=device.type == "cuda" and cfg.channels_last)
    finally:
        matmul_tf32, cudnn_tf32, benchmark, deterministic = old
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul_tf32, cudnn_tf32
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(deterministic)
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
