"""Data sets that need no download, and one entry point over every data set flowlib trains on.

* :func:`load_digits` (scikit-learn's bundled 8x8 digits) and :func:`load_synthetic`
  (generated smooth blobs and stripes) make CPU runs and tests possible.
* :func:`load_dataset` dispatches over :data:`DATASETS` (``cifar10`` through
  :func:`flowlib.data.load_cifar10`).

>>> images, labels = load_synthetic(4)
>>> images.dtype, tuple(images.shape), labels.tolist()
(torch.uint8, (4, 3, 8, 8), [0, 1, 2, 3])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .cifar import DataError, load_cifar10

__all__ = ["DATASETS", "load_digits", "load_synthetic", "load_dataset"]

DATASETS = ("cifar10", "digits", "synthetic")


def load_digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits as uint8 ``[N, 1, 8, 8]`` images.

    The 17 grey levels 0..16 are scaled by 255/16 and rounded. The 1,797 images are split
    by a fixed permutation into 1,500 train and 297 test images.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    order = np.random.default_rng(0).permutation(len(images))
    idx = order[:1500] if split == "train" else order[1500:]
    return torch.from_numpy(images[idx]), torch.from_numpy(d.target[idx].astype(np.int64))


def load_synthetic(n: int = 2000, shape=(3, 8, 8), seed: int = 0) -> tuple[Tensor, Tensor]:
    """Generated images with learnable structure: a coloured Gaussian blob on oriented stripes.

    Image ``i`` has label ``i % 10``; the label fixes the stripe orientation and frequency and
    the blob colour, while the blob position, stripe phase and a little pixel noise are random.
    Deterministic for a given ``(n, shape, seed)``.
    """
    C, H, W = shape
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")  # [H, W]
    angle = labels.float() * (torch.pi / 10)  # stripe orientation per class
    freq = 0.5 + 0.25 * (labels % 3).float()  # cycles per image side
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    proj = xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]  # [n, H, W]
    stripes = 0.5 + 0.3 * torch.sin(2 * torch.pi * freq[:, None, None] * proj + phase[:, None, None])
    centre = 0.25 + 0.5 * torch.rand(n, 2, generator=g)  # [n, 2]
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    blob = torch.exp(-d2 / 0.05)  # [n, H, W]
    hue = torch.arange(C).float() / max(C, 1)  # [C]
    colour = 0.5 + 0.5 * torch.cos(2 * torch.pi * (labels.float()[:, None] / 10 + hue))  # [n, C]
    img = 0.6 * stripes[:, None] + 0.4 * blob[:, None] * colour[:, :, None, None]  # [n, C, H, W]
    img = img + 0.02 * torch.randn(n, C, H, W, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def load_dataset(name: str, root=None, split: str = "train", download: bool = False) -> tuple[Tensor, Tensor]:
    """Dispatch over ``"cifar10"``, ``"digits"`` and ``"synthetic"``.

    ``cifar10`` reads the directory :func:`find_cifar10` gives for ``root`` (``None``: the
    conventions ``$FLOWLIB_DATA``, then ``~/.cache/flowlib``). ``synthetic`` has 2,000 train
    images (seed 0) and 500 test images (seed 1) of shape 3x8x8.
    """
    if name == "cifar10":
        return load_cifar10(root, split, download=download)
    if name == "digits":
        return load_digits(split)
    if name == "synthetic":
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return load_synthetic(2000, seed=0) if split == "train" else load_synthetic(500, seed=1)
    raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
