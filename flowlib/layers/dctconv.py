"""Invertible symmetric convolution, diagonalised per frequency by the 2-D DCT-II."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Flow, sample_shape
from .registry import register

__all__ = ["DCTConv", "dct_matrix", "symmetric_kernel_spectrum"]


def dct_matrix(n: int, dtype=torch.float32, device=None) -> Tensor:
    """Orthonormal DCT-II matrix ``D: [n, n]``, ``D[k, m] = a_k cos(pi (m + 1/2) k / n)``.

    ``a_0 = sqrt(1/n)``, ``a_k = sqrt(2/n)``; ``D D^T = I`` so the inverse DCT is ``D^T``.
    """
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    m = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    D = torch.cos(math.pi * (m + 0.5) * k / n) * math.sqrt(2.0 / n)
    D[0] /= math.sqrt(2.0)
    return D.to(dtype)


def symmetric_kernel_spectrum(weight: Tensor, H: int, W: int) -> Tensor:
    """Per-DCT-frequency ``C x C`` matrices ``Lambda(u, v)`` of the symmetric convolution with ``weight``.

    ``weight: [C, C, r + 1, r + 1]`` holds the taps at offsets ``|m| = a``, ``|n| = b`` of
    an even-symmetric ``(2r + 1) x (2r + 1)`` kernel ``h[:, :, m, n] = weight[:, :, |m|, |n|]``,
    whose DCT-II eigenvalues are ``sum_{m, n} h[m, n] cos(pi u m / H) cos(pi v n / W)``:
    ``Lambda(u, v) = sum_{a, b} weight[:, :, a, b] c_a(u) c_b(v)`` with ``c_0 = 1`` and
    ``c_a(u) = 2 cos(pi u a / H)``. Returns ``[H, W, C, C]`` (real).
    """
    r1 = weight.shape[-1]
    a = torch.arange(r1, dtype=weight.dtype, device=weight.device)[:, None]

    def cosines(n: int) -> Tensor:
        u = torch.arange(n, dtype=weight.dtype, device=weight.device)[None, :]
        return torch.cos(math.pi * a * u / n) * torch.where(a == 0, 1.0, 2.0)  # [r + 1, n]

    return torch.einsum("ijab,au,bv->uvij", weight, cosines(H), cosines(W))


@register("dct", role="mixing")
class DCTConv(Flow):
    """Invertible multi-channel symmetric convolution, solved per DCT frequency (CONF, DCT form).

    Formula: ``y = x (*) h`` where ``h[:, :, m, n] = weight[:, :, |m|, |n|]`` is an
    even-symmetric ``(2r + 1) x (2r + 1)`` kernel with ``C`` in and out channels,
    applied with *half-sample symmetric* boundary extension (``x[-1] = x[0]``,
    ``x[H] = x[H - 1]``, i.e. ``numpy.pad(mode="symmetric")``). The orthonormal 2-D
    DCT-II ``D_H x D_W^T`` diagonalises that operator, so
    ``y = D_H^T [Lambda(u, v) (D_H x D_W^T)(u, v)] D_W`` with the ``C x C`` matrices of
    :func:`symmetric_kernel_spectrum`. (Whole-sample symmetric extension,
    ``x[-1] = x[1]`` as in ``numpy.pad(mode="reflect")``, is diagonalised by the DCT-I
    instead; with the DCT-II every boundary pixel is mirrored including itself.)
    The DCT has no torch primitive: it is two products with cached ``[H, H]`` and
    ``[W, W]`` matrices (built in float64 once per size, dtype and device).

    Inverse: ``x = D_H^T [Lambda(u, v)^{-1} (D_H y D_W^T)(u, v)] D_W``: one batched
    real ``torch.linalg.solve`` of ``H W`` systems of size ``C x C``.

    Log-determinant: ``sum_{u, v} log |det Lambda(u, v)|`` (orthonormal DCTs have
    ``|det| = 1``), the same for every sample.

    Invertibility: singular where some ``det Lambda(u, v) = 0``, a measure-zero set
    (one real equation per frequency: training can cross it, as with ``conv1x1``).
    ``weight`` starts at the identity (``weight[:, :, 0, 0] = I``) plus small noise.

    Cost: forward and inverse ``O(B C H W (H + W) + B C^2 H W)`` plus
    ``O(C^2 r^2 H W + C^3 H W)`` for ``Lambda`` and its factorisations; parameters
    ``C^2 (r + 1)^2``.

    Shapes: ``x, y: [B, C, H, W]``; ``logdet: [B]``.

    Reference: Karami, Schuurmans, Sohl-Dickstein, Dinh & Duckworth, "Invertible
    Convolutional Flow", NeurIPS 2019 (symmetric convolution via the DCT); Martucci,
    "Symmetric convolution and the discrete sine and cosine transforms", IEEE TSP
    1994. Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("dct", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, radius: int = 1, init_scale: float = 0.05):
        super().__init__(shape)
        sample_shape(shape, "dct")
        if radius < 0:
            raise ValueError(f"dct needs radius >= 0 (kernel size 2 * radius + 1), got {radius}")
        C = int(shape[0])
        weight = init_scale * torch.randn(C, C, radius + 1, radius + 1) / math.sqrt(C * (2 * radius + 1) ** 2)
        weight[:, :, 0, 0] += torch.eye(C)
        self.weight = nn.Parameter(weight)
        self._dct_cache: dict[tuple, Tensor] = {}

    def _dct(self, n: int) -> Tensor:
        """The ``[n, n]`` DCT-II matrix in the weight's dtype and device, built once per size."""
        key = (n, self.weight.dtype, self.weight.device)
        if key not in self._dct_cache:  # built in float64, then cast: no float32 round trip
            self._dct_cache[key] = dct_matrix(n, self.weight.dtype, self.weight.device)
        return self._dct_cache[key]

    def _dct_matrices(self, H: int, W: int) -> tuple[Tensor, Tensor]:
        return self._dct(H), self._dct(W)

    def spectrum(self, H: int, W: int) -> Tensor:
        """``Lambda(u, v)`` of the current weight, ``[H, W, C, C]``."""
        return symmetric_kernel_spectrum(self.weight, H, W)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        D_H, D_W = self._dct_matrices(x.shape[2], x.shape[3])
        Lam = self.spectrum(x.shape[2], x.shape[3])
        x_hat = torch.einsum("uh,bchw,vw->uvcb", D_H, x, D_W)  # [H, W, C, B]
        y = torch.einsum("uh,uvcb,vw->bchw", D_H, Lam @ x_hat, D_W)  # [B, C, H, W]
        return y, self._logdet(Lam, x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        D_H, D_W = self._dct_matrices(y.shape[2], y.shape[3])
        Lam = self.spectrum(y.shape[2], y.shape[3])
        y_hat = torch.einsum("uh,bchw,vw->uvcb", D_H, y, D_W)  # [H, W, C, B]
        return torch.einsum("uh,uvcb,vw->bchw", D_H, torch.linalg.solve(Lam, y_hat), D_W)  # [B, C, H, W]

    def logdet(self, x: Tensor) -> Tensor:
        """``sum_{u, v} log |det Lambda(u, v)|`` broadcast to ``[B]``, without transforming ``x``."""
        return self._logdet(self.spectrum(x.shape[2], x.shape[3]), x.shape[0])

    @staticmethod
    def _logdet(Lam: Tensor, batch: int) -> Tensor:
        return torch.linalg.slogdet(Lam).logabsdet.sum().expand(batch)
