"""Emerging convolution: two masked autoregressive k x k convolutions, inverted pixel by pixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Flow, sample_shape
from .registry import register

__all__ = ["Emerging"]


def _raster_mask(C: int, k: int) -> Tensor:
    """``[C, C, k, k]`` mask of taps that see only earlier pixels (raster order) or lower channels.

    For ``y = conv2d(x, K, padding=k // 2)`` output pixel ``p`` reads input pixel
    ``p + (a - r, b - r)`` through tap ``(a, b)`` (``r = k // 2``). Allowed: rows
    above (``a < r``), the same row to the left (``a == r, b < r``) and, at the
    centre tap, channels ``j <= i`` (lower triangular, diagonal included).
    """
    r = k // 2
    mask = torch.zeros(C, C, k, k)
    mask[:, :, :r, :] = 1
    mask[:, :, r, :r] = 1
    mask[:, :, r, r] = torch.tril(torch.ones(C, C))
    return mask


@register("emerging", role="mixing")
class Emerging(Flow):
    """Emerging convolution: composition of two masked autoregressive ``k x k`` convolutions.

    Formula: ``y = conv(conv(x, K1), K2')`` (zero padding ``k // 2``). ``K1`` is
    masked so that output pixel ``p`` depends only on input pixels before ``p`` in
    raster order and, at ``p`` itself, on channels ``j <= i`` with diagonal
    ``exp(logs1[i])``. ``K2'`` has the reversed mask (pixels after ``p``, channels
    ``j >= i``); it is stored as a raster-masked ``K2`` with
    ``K2'[i, j, a, b] = K2[C-1-i, C-1-j, k-1-a, k-1-b]``, i.e. ``conv(x, K2')`` is
    ``flip(conv(flip(x), K2))`` with ``flip`` reversing channels, rows and columns.
    Each factor has a triangular Jacobian in (raster pixel, channel) order; the
    composition has a full ``k' = 2k - 1`` receptive field.

    Inverse: exact back-substitution, one pixel at a time. For ``K1`` in raster
    order: ``x[:, :, p] = D^{-1} (y[:, :, p] - sum_{taps} K1_tap x[:, :, p + tap])``,
    where the sum only reads already-solved pixels (the others are still zero)
    and ``D`` is the lower-triangular ``C x C`` centre tap. ``D^{-1}`` is folded in
    up front, so each step is one ``[B, C k^2] x [C k^2, C]`` product; the loop runs
    over pixels only (vectorised over batch and channels). ``K2'`` is solved the
    same way on the flipped tensor (reverse raster order).

    Log-determinant: ``H * W * (sum(logs1) + sum(logs2))`` (product of diagonals).

    Cost: forward two convolutions, ``O(B C^2 k^2 H W)``, fully parallel. Inverse:
    the same flops but ``2 H W`` *sequential* steps: this is the "expensive to
    invert" layer of notebook 03 (sampling is ``O(H W)`` kernel launches).
    Parameters ``2 (C^2 k^2 + C)`` (about half of the kernel entries are masked out).

    Shapes: ``x, y: [B, C, H, W]`` (any ``H, W``), ``logdet: [B]``.

    Reference: Hoogeboom, van den Berg & Welling, "Emerging Convolutions for
    Generative Normalizing Flows", ICML 2019. Taught in notebook 03.

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("emerging", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, kernel_size: int = 3, init_scale: float = 0.05):
        super().__init__(shape)
        sample_shape(shape, "emerging")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"emerging needs an odd kernel_size >= 1, got {kernel_size}")
        C, k = int(shape[0]), kernel_size
        self.kernel_size = k
        mask = _raster_mask(C, k)
        centre = torch.zeros(C, C, k, k)
        centre[:, :, k // 2, k // 2] = torch.eye(C)
        self.register_buffer("mask", mask - centre)  # the centre diagonal comes from logs
        self.register_buffer("centre", centre)
        self.register_buffer("eye", torch.eye(C))
        self.K1 = nn.Parameter(init_scale * torch.randn(C, C, k, k))
        self.K2 = nn.Parameter(init_scale * torch.randn(C, C, k, k))
        self.logs1 = nn.Parameter(torch.zeros(C))
        self.logs2 = nn.Parameter(torch.zeros(C))

    def _kernel(self, K: Tensor, logs: Tensor) -> Tensor:
        """Masked raster kernel with the centre diagonal replaced by ``exp(logs)``."""
        return K * self.mask + self.centre * torch.exp(logs)[:, None, None, None]

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pad = self.kernel_size // 2
        h = F.conv2d(x, self._kernel(self.K1, self.logs1), padding=pad)
        y = F.conv2d(h, self._kernel(self.K2, self.logs2).flip(0, 1, 2, 3), padding=pad)
        return y, self.logdet(x)

    def logdet(self, x: Tensor) -> Tensor:
        """``H * W * (sum(logs1) + sum(logs2))`` broadcast to ``[B]``."""
        return (x.shape[2] * x.shape[3] * (self.logs1.sum() + self.logs2.sum())).expand(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        h = self._solve_raster(y.flip(1, 2, 3), self._kernel(self.K2, self.logs2)).flip(1, 2, 3)
        return self._solve_raster(h, self._kernel(self.K1, self.logs1))

    def _solve_raster(self, y: Tensor, kernel: Tensor) -> Tensor:
        """Solve ``conv2d(x, kernel, padding=k // 2) = y`` for ``x`` with a raster-masked ``kernel``."""
        B, C, H, W = y.shape
        k, r = self.kernel_size, self.kernel_size // 2
        centre_inv = torch.linalg.solve_triangular(kernel[:, :, r, r], self.eye, upper=False)  # D^{-1}, [C, C]
        z = torch.einsum("ij,bjhw->bhwi", centre_inv, y)  # D^{-1} y, [B, H, W, C]
        # Off-centre taps pre-multiplied by D^{-1}; the centre tap reads a still-zero pixel.
        M = torch.einsum("ij,jkab->abki", centre_inv, kernel).reshape(k * k * C, C)  # [k*k*C, C]
        x_pad = y.new_zeros(B, H + 2 * r, W + 2 * r, C)  # channels last: a patch is contiguous per row
        for h in range(H):
            for w in range(W):
                patch = x_pad[:, h : h + k, w : w + k, :].reshape(B, k * k * C)  # [B, k*k*C] (copy)
                x_pad[:, h + r, w + r, :] = z[:, h, w, :] - patch @ M
        return x_pad[:, r : r + H, r : r + W, :].permute(0, 3, 1, 2).contiguous()  # [B, C, H, W]
