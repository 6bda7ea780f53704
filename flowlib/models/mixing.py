"""The mixing layers of the multi-scale flow, built in one place for the model and its dequantizer.

:func:`make_mixing` builds a registered mixing layer; for ``convexp`` it can add the
official model's per-pixel biases around it (:class:`PixelBias`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import Flow, Sequential, sample_shape
from ..layers import make

__all__ = ["PixelBias", "make_mixing"]


class PixelBias(Flow):
    """A learned bias per channel and pixel: ``y = x + b``.

    Formula: ``y[n, c, h, w] = x[n, c, h, w] + b[c, h, w]``, ``b`` zero-initialised.
    Inverse: ``x = y - b``.
    Log-determinant: 0 (a translation).
    Cost: ``O(B C H W)``; ``C H W`` parameters.
    Shapes: ``[B, C, H, W]`` in and out (``H, W`` fixed).
    Reference: the pre- and post-transform biases of the ``ConvExp`` module in the code of
    "The Convolution Exponential and Generalized Sylvester Flows", Hoogeboom et al., 2020.

    >>> layer = PixelBias((2, 3, 3))
    >>> y, logdet = layer(torch.ones(4, 2, 3, 3))
    >>> bool((y == 1).all()), logdet.shape
    (True, torch.Size([4]))
    """

    def __init__(self, shape):
        super().__init__(shape)
        sample_shape(self.shape, "PixelBias", fixed_size=True)
        self.bias = nn.Parameter(torch.zeros(self.shape))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x + self.bias, x.new_zeros(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        return y - self.bias


def make_mixing(name: str, shape, convexp_bias: bool = False, **kwargs) -> Flow:
    """The mixing layer ``name`` (a registered layer) at ``shape``, with its keyword arguments.

    With ``convexp_bias`` and ``name == "convexp"`` it is ``PixelBias -> convexp -> PixelBias``
    (``y = exp(M) Q (x + b_pre) + b_post``), as the official ``ConvExp`` module; other
    mixing layers are returned as they are (the official code has no such biases there).

    >>> make_mixing("convexp", (4, 8, 8), convexp_bias=True, kernel_size=3)[0].bias.shape
    torch.Size([4, 8, 8])
    """
    layer = make(name, shape=shape, **kwargs)
    if convexp_bias and name == "convexp":
        return Sequential(PixelBias(shape), layer, PixelBias(shape))
    return layer
