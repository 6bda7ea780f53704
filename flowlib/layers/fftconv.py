"""Invertible periodic (circular) convolution, diagonalised per frequency by the 2-D FFT."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Flow, sample_shape
from ..functional import torus_kernel_spectrum
from .registry import register

__all__ = ["Periodic", "circular_kernel_spectrum"]


def circular_kernel_spectrum(kernel: Tensor, H: int, W: int) -> Tensor:
    """Per-frequency ``C x C`` matrices of the circular convolution with ``kernel``.

    The layer computes (like ``conv2d`` with circular padding ``r = k // 2``)::

        y[i, h, w] = sum_{j, a, b} kernel[i, j, a, b] x[j, (h + a - r) mod H, (w + b - r) mod W]

    so by the convolution theorem ``fft2(y)[:, u, v] = K(u, v) fft2(x)[:, u, v]`` with
    ``K(u, v)[i, j] = sum_{a, b} kernel[i, j, a, b] exp(2 pi i (u (a - r) / H + v (b - r) / W))``,
    the conjugate of the kernel's spectrum on the torus (:func:`flowlib.functional.torus_kernel_spectrum`).
    Taps that wrap around (``k > H``) simply add up. Returns ``[H, W, C, C]`` complex.
    Cost one FFT of ``C^2 H W`` values; differentiable.
    """
    return torus_kernel_spectrum(kernel, H, W).conj().permute(2, 3, 0, 1)  # [H, W, C_out, C_in]


@register("periodic", role="mixing")
class Periodic(Flow):
    """Invertible multi-channel periodic convolution, solved frequency by frequency.

    Formula: ``y = x (*) kernel``, a ``k x k`` circular (periodic-boundary)
    convolution with ``C`` in and out channels, ``kernel: [C, C, k, k]`` starting at
    the identity (centre tap ``I``) plus small noise. Computed as
    ``y = real(ifft2(K(u, v) fft2(x)(u, v)))`` with ``K`` from
    :func:`circular_kernel_spectrum`: the 2-D DFT block-diagonalises the
    ``CHW x CHW`` convolution matrix into ``H W`` blocks of ``C x C``.

    Inverse: solve ``K(u, v) x_hat(u, v) = y_hat(u, v)`` for every frequency
    (one batched ``torch.linalg.solve`` of ``H W`` complex ``C x C`` systems),
    then ``x = real(ifft2(x_hat))``: exact, parallel, no iteration.

    Log-determinant: ``sum_{u, v} log |det K(u, v)|`` (the same for every sample);
    conjugate frequencies give conjugate ``K``, so the sum is real.

    Invertibility: singular only where some ``det K(u, v) = 0`` (measure zero;
    at the real frequencies ``u in {0, H/2}``, ``v in {0, W/2}`` this is one real
    equation, elsewhere two).

    Cost: forward and inverse ``O(B C H W log(HW) + B C^2 H W)`` plus
    ``O(C^2 k^2 H W + C^3 H W)`` for the spectrum and its ``H W`` LU factorisations;
    parameters ``C^2 k^2``.

    Shapes: ``x, y: [B, C, H, W]`` (``H, W`` may vary between calls); ``logdet: [B]``.

    Reference: Karami, Schuurmans, Sohl-Dickstein, Dinh & Duckworth, "Invertible
    Convolutional Flow", NeurIPS 2019; Hoogeboom, van den Berg & Welling,
    "Emerging Convolutions for Generative Normalizing Flows", ICML 2019 (periodic
    convolutions). Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("periodic", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, kernel_size: int = 3, init_scale: float = 0.05):
        super().__init__(shape)
        sample_shape(shape, "periodic")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"periodic needs an odd kernel_size >= 1, got {kernel_size}")
        C, k = int(shape[0]), kernel_size
        kernel = init_scale * torch.randn(C, C, k, k) / math.sqrt(C * k * k)
        kernel[:, :, k // 2, k // 2] += torch.eye(C)
        self.kernel = nn.Parameter(kernel)

    def spectrum(self, H: int, W: int) -> Tensor:
        """``K(u, v)`` of the current kernel, ``[H, W, C, C]`` complex."""
        return circular_kernel_spectrum(self.kernel, H, W)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        K = self.spectrum(x.shape[2], x.shape[3])
        x_hat = torch.fft.fft2(x).permute(2, 3, 1, 0)  # [H, W, C, B]
        y = torch.fft.ifft2((K @ x_hat).permute(3, 2, 0, 1)).real  # [B, C, H, W]
        return y, self._logdet(K, x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        K = self.spectrum(y.shape[2], y.shape[3])
        y_hat = torch.fft.fft2(y).permute(2, 3, 1, 0)  # [H, W, C, B]
        return torch.fft.ifft2(torch.linalg.solve(K, y_hat).permute(3, 2, 0, 1)).real  # [B, C, H, W]

    def logdet(self, x: Tensor) -> Tensor:
        """``sum_{u, v} log |det K(u, v)|`` broadcast to ``[B]``, without transforming ``x``."""
        return self._logdet(self.spectrum(x.shape[2], x.shape[3]), x.shape[0])

    @staticmethod
    def _logdet(K: Tensor, batch: int) -> Tensor:
        return torch.linalg.slogdet(K).logabsdet.sum().expand(batch)
