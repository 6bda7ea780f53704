"""Volume-preserving rearrangements of an image: the 2x2 squeeze and a spatial flip.

Both are permutations of the entries of ``x``, so their log-determinant is exactly 0.
"""

from __future__ import annotations

from torch import Tensor

from ..core import Flow, check_input, sample_shape

__all__ = ["squeeze2d", "unsqueeze2d", "Squeeze", "Flip"]


def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``.

    Output channel ``4c + 2i + j`` holds ``x[:, c, i::2, j::2]``.
    """
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // 2, 2, W // 2, 2)  # [B, C, H/2, i, W/2, j]
    x = x.permute(0, 1, 3, 5, 2, 4)  # [B, C, i, j, H/2, W/2]
    return x.reshape(B, 4 * C, H // 2, W // 2)  # [B, 4C, H/2, W/2]


def unsqueeze2d(y: Tensor) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze2d`: ``[B, 4C, H, W] -> [B, C, 2H, 2W]``."""
    B, C4, H, W = y.shape
    y = y.reshape(B, C4 // 4, 2, 2, H, W)  # [B, C, i, j, H, W]
    y = y.permute(0, 1, 4, 2, 5, 3)  # [B, C, H, i, W, j]
    return y.reshape(B, C4 // 4, 2 * H, 2 * W)  # [B, C, 2H, 2W]


class Squeeze(Flow):
    """Squeeze (space-to-depth, RealNVP/Glow): trade resolution for channels.

    Formula: ``y[b, 4c + 2i + j, h, w] = x[b, c, 2h + i, 2w + j]``.
    Inverse: depth-to-space (:func:`unsqueeze2d`).
    Log-determinant: 0 (a permutation of the entries).
    Cost: one copy, ``O(B C H W)``.
    Shapes: ``x: [B, C, H, W]`` (``H, W`` even) ``-> y: [B, 4C, H/2, W/2]``; ``out_shape``
    gives ``(4C, H/2, W/2)``.
    Reference: Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2017.
    Taught in ``notebooks/05_cifar10.ipynb`` (the multi-scale model).
    """

    def __init__(self, shape):
        super().__init__(shape)
        C, H, W = sample_shape(self.shape, "Squeeze", fixed_size=True)
        if H % 2 or W % 2:
            raise ValueError(f"Squeeze needs even H and W, got shape {self.shape}")
        self.out_shape = (4 * C, H // 2, W // 2)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        return unsqueeze2d(y)

    def inverse(self, y: Tensor) -> Tensor:
        # The inverse's input has the squeezed shape, not ``self.shape``.
        check_input(y, self.out_shape, self.label, "inverse")
        return self._inverse(y)


class Flip(Flow):
    """Spatial flip of both image axes (used between convolutional Sylvester layers).

    Formula: ``y[b, c, h, w] = x[b, c, H - 1 - h, W - 1 - w]``.
    Inverse: the same flip.
    Log-determinant: 0 (a permutation).
    Cost: one copy, ``O(B C H W)``.
    Shapes: ``[B, C, H, W]`` in and out.
    Reference: the Sylvester model of "The Convolution Exponential and Generalized
    Sylvester Flows", Hoogeboom, Garcia Satorras, Tomczak & Welling, 2020.
    Taught in ``notebooks/05_cifar10.ipynb``.
    """

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(-2, -1), x.new_zeros(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        return y.flip(-2, -1)
