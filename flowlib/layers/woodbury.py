"""Woodbury transformation: low-rank-plus-identity maps along channels and along space."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Flow, sample_shape
from .registry import register

__all__ = ["Woodbury"]


def _low_rank_inverse(U: Tensor, V: Tensor, z: Tensor) -> Tensor:
    """``(I + U V)^{-1} z = z - U (I_d + V U)^{-1} V z`` for ``z: [..., n, m]`` (Woodbury identity)."""
    d = U.shape[1]
    core = torch.eye(d, dtype=U.dtype, device=U.device) + V @ U  # [d, d]
    return z - U @ torch.linalg.solve(core, V @ z)


def _low_rank_logdet(U: Tensor, V: Tensor) -> Tensor:
    """``log |det(I_n + U V)| = log |det(I_d + V U)|`` (Sylvester's determinant identity), ``O(d^3)``."""
    d = U.shape[1]
    return torch.linalg.slogdet(torch.eye(d, dtype=U.dtype, device=U.device) + V @ U).logabsdet


@register("woodbury", role="mixing")
class Woodbury(Flow):
    """Woodbury transformation: identity plus low rank, once along channels and once along space.

    Formula: with ``x`` viewed as ``X: [C, N]`` per sample (``N = H W``),
    ``W_c = I_C + U_c V_c`` (``U_c: [C, d_c]``, ``V_c: [d_c, C]``),
    ``W_s = I_N + U_s V_s`` (``U_s: [N, d_s]``, ``V_s: [d_s, N]``), and
    ``Y = W_c X W_s^T``: the channel map acts at every pixel, then the spatial map
    mixes all pixels of each channel.

    Inverse: ``X = W_c^{-1} Y W_s^{-T}`` with the Woodbury identity
    ``(I + U V)^{-1} = I - U (I_d + V U)^{-1} V``: only ``d x d`` solves.

    Log-determinant: ``N log |det(I_{d_c} + V_c U_c)| + C log |det(I_{d_s} + V_s U_s)|``
    (Sylvester's determinant identity; ``O(d_c^3 + d_s^3 + (C d_c + N d_s) d)``).

    Invertibility: singular only where ``det(I_d + V U) = 0``, a measure-zero set;
    the factors start small (``init_scale``) so the map starts near the identity.

    Cost: ``O(B C N (d_c + d_s))`` forward and inverse (both fully parallel);
    parameters ``2 (C d_c + N d_s)``.

    Shapes: ``x, y: [B, C, H, W]`` with fixed ``H, W``; ``logdet: [B]``.

    Reference: Lu & Huang, "Woodbury Transformations for Deep Generative Flows",
    NeurIPS 2020. Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("woodbury", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(
        self, shape, channel_rank: int | None = None, spatial_rank: int | None = None, init_scale: float = 0.05
    ):
        super().__init__(shape)
        sample_shape(shape, "woodbury", fixed_size=True)  # its spatial factors are [H*W, d]
        C, N = int(shape[0]), int(shape[1]) * int(shape[2])
        d_c = min(C, 8) if channel_rank is None else channel_rank
        d_s = min(N, 16) if spatial_rank is None else spatial_rank
        if not (1 <= d_c <= C and 1 <= d_s <= N):
            raise ValueError(
                f"woodbury needs 1 <= channel_rank <= C={C} and 1 <= spatial_rank <= H*W={N}, got {d_c} and {d_s}"
            )
        self.Uc = nn.Parameter(init_scale * torch.randn(C, d_c) / math.sqrt(d_c))
        self.Vc = nn.Parameter(init_scale * torch.randn(d_c, C) / math.sqrt(C))
        self.Us = nn.Parameter(init_scale * torch.randn(N, d_s) / math.sqrt(d_s))
        self.Vs = nn.Parameter(init_scale * torch.randn(d_s, N) / math.sqrt(N))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, C, H, W = x.shape
        X = x.reshape(B, C, H * W)  # [B, C, N]
        X = X + self.Uc @ (self.Vc @ X)  # W_c X
        Y = X + (X @ self.Vs.T) @ self.Us.T  # (W_c X) W_s^T
        return Y.reshape(B, C, H, W), self.logdet(x)

    def _inverse(self, y: Tensor) -> Tensor:
        B, C, H, W = y.shape
        Y = y.reshape(B, C, H * W)  # [B, C, N]
        X = _low_rank_inverse(self.Us, self.Vs, Y.transpose(1, 2)).transpose(1, 2)  # Y W_s^{-T}
        X = _low_rank_inverse(self.Uc, self.Vc, X)  # W_c^{-1} (Y W_s^{-T})
        return X.reshape(B, C, H, W)

    def logdet(self, x: Tensor) -> Tensor:
        """``N log|det W_c| + C log|det W_s|`` broadcast to ``[B]``."""
        C, N = x.shape[1], x.shape[2] * x.shape[3]
        value = N * _low_rank_logdet(self.Uc, self.Vc) + C * _low_rank_logdet(self.Us, self.Vs)
        return value.expand(x.shape[0])
