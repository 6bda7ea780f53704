"""Device-resident batches: the whole uint8 data set on the device, order and flips drawn there.

>>> b = batches(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), batch_size=4)
>>> tuple(next(b).shape), b.steps_per_epoch
((4, 1, 2, 2), 2)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GPUBatches", "batches"]


class GPUBatches:
    """Endless random uint8 batches drawn on the device, epoch by epoch, with horizontal flips.

    The whole set stays on ``device``; at the start of each epoch one ``randperm`` and one
    Bernoulli flip mask are drawn there from a dedicated generator, and each batch is an index
    gather plus ``torch.where(flip, x.flip(-1), x)``: no per-image Python work, no host copies.

    With ``world_size > 1`` every rank draws the same permutation (same seed) and takes the
    slice ``perm[rank::world_size]``, so the ranks see disjoint data. Incomplete final batches
    are dropped. :meth:`state_dict` / :meth:`load_state_dict` restore the exact data order.

    Arguments:
        images: uint8 ``[N, C, H, W]``.
        batch_size: images per batch (per rank).
        device: where the set and the generator live (default: the images' device).
        flip: random horizontal flips with probability 1/2.
        seed: seed of the data-order generator.
    """

    def __init__(
        self,
        images: Tensor,
        batch_size: int,
        device=None,
        flip: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {list(images.shape)}")
        self.images = images.to(device) if device is not None else images
        self.device = self.images.device
        self.batch_size, self.flip, self.rank, self.world_size = batch_size, flip, rank, world_size
        self.per_rank = len(images) // world_size
        self.steps_per_epoch = self.per_rank // batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch size {batch_size} is larger than the {self.per_rank} images available per rank; "
                "use a smaller batch size"
            )
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.epoch, self.index = 0, 0
        self._epoch_state = self.generator.get_state()
        self._draw()

    def _draw(self) -> None:
        """Draw this epoch's order and flips from the generator."""
        n = len(self.images)
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        flips = torch.rand(n, generator=self.generator, device=self.device) < 0.5
        self._perm = perm[self.rank :: self.world_size][: self.per_rank]
        self._flips = flips[self.rank :: self.world_size][: self.per_rank]

    def __iter__(self):
        return self

    def __next__(self) -> Tensor:
        if self.index == self.steps_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
            self._epoch_state = self.generator.get_state()
            self._draw()
        sl = slice(self.index * self.batch_size, (self.index + 1) * self.batch_size)
        self.index += 1
        x = self.images[self._perm[sl]]  # [B, C, H, W] uint8
        if self.flip:
            x = torch.where(self._flips[sl, None, None, None], x.flip(-1), x)
        return x

    def state_dict(self) -> dict:
        """Generator state at the start of the current epoch, the epoch and the batch index in it."""
        return {"generator": self._epoch_state.clone(), "epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())
        self._epoch_state = state["generator"].cpu().clone()
        self.epoch, self.index = state["epoch"], state["index"]
        self._draw()


def batches(images: Tensor, batch_size: int, device=None, flip: bool = True, seed: int = 0) -> GPUBatches:
    """Shorthand for :class:`GPUBatches` (single process)."""
    return GPUBatches(images, batch_size, device=device, flip=flip, seed=seed)
