"""Element-wise bijections: the S-Log gate of Karami et al. (2019).

* :func:`slog_forward` / :func:`slog_inverse` - the functional gate (used inside
  :class:`flowlib.layers.coupling.ConfCoupling`).
* :class:`SLogGate` - the gate as a layer, registered as ``"slog"``.

Squeeze and split live with the multi-scale model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Flow, sample_shape
from .registry import register

__all__ = ["slog_forward", "slog_inverse", "SLogGate"]


def slog_forward(x: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
    """S-Log gate ``y = sign(x) log(1 + alpha |x|) / alpha`` and its element-wise log-derivative.

    ``alpha > 0`` must broadcast against ``x``. Returns ``(y, log_deriv)`` with
    ``log_deriv = log dy/dx = -log(1 + alpha |x|)``, both shaped like ``x``.
    """
    u = torch.log1p(alpha * x.abs())  # log(1 + alpha |x|) >= 0
    return torch.sign(x) * u / alpha, -u


def slog_inverse(y: Tensor, alpha: Tensor) -> Tensor:
    """Inverse of :func:`slog_forward`: ``x = sign(y) (exp(alpha |y|) - 1) / alpha``.

    Uses ``expm1`` so that small ``|y|`` keeps full relative precision. The inverse
    grows like ``exp(alpha |y|)``: outputs of the forward gate are ``log``-sized, so
    round trips stay exact; feeding arbitrary large ``y`` overflows, as it must.
    """
    return torch.sign(y) * torch.expm1(alpha * y.abs()) / alpha


@register("slog")
class SLogGate(Flow):
    """S-Log gate with a learnable positive slope per channel.

    Formula: ``y = sign(x) log(1 + alpha_c |x|) / alpha_c`` with
    ``alpha_c = exp(log_alpha_c) > 0`` (any real ``log_alpha`` is valid): identity-like
    near 0 (slope 1), logarithmic for ``|x| >> 1/alpha`` - it compresses heavy tails.
    Inverse: ``x = sign(y) (exp(alpha_c |y|) - 1) / alpha_c`` (closed form).
    Log-determinant: ``sum -log(1 + alpha_c |x|)`` over all elements of a sample.
    Cost: ``O(D)`` element-wise ops per sample, forward and inverse.
    Shapes: ``[B, C, *]`` (images ``[B, C, H, W]``); ``alpha`` runs along axis 1.
    Reference: Invertible Convolutional Flow, Karami, Schuurmans, Sohl-Dickstein,
    Dinh & Duckworth, NeurIPS 2019 (Sec. 4, "S-Log gate").
    Taught in ``notebooks/03_invertible_convolutions.ipynb``.

    Arguments:
        shape: sample shape ``(C, ...)``; ``C`` must be fixed.
        alpha: initial slope of every channel (``> 0``).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("slog", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, alpha: float = 1.0):
        super().__init__(shape)
        sample_shape(self.shape, self.label, ndim=None)
        if not alpha > 0:
            raise ValueError(f"{self.label} needs alpha > 0, got {alpha}")
        self.log_alpha = nn.Parameter(torch.full((self.shape[0],), math.log(alpha)))

    def alpha(self, x: Tensor) -> Tensor:
        """``alpha`` shaped ``[1, C, 1, ...]`` to broadcast against ``x``."""
        return self.log_alpha.exp().to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_deriv = slog_forward(x, self.alpha(x))
        return y, log_deriv.flatten(1).sum(1)

    def _inverse(self, y: Tensor) -> Tensor:
        return slog_inverse(y, self.alpha(y))
