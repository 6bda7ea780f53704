"""From discrete pixels to a continuous density: dequantization and preprocessing.

A flow is a density on ``R^D``, the data are integers ``x in {0, ..., K - 1}^D``
(``K = 2^n_bits``). With noise ``u in [0, 1)^D`` drawn from ``q(u | x)``::

    log P(x) >= E_q[ log p(x + u) - log q(u | x) ]          (Jensen; equality iff q = p(. | x))
    log p(x + u) = log p_v(v) - D log K,   v = (x + u) / K in [0, 1)^D

* :class:`UniformDequantizer` - ``q = U[0, 1)^D``, ``log q = 0`` (Theis et al. 2016).
* :class:`FlowDequantizer` - variational dequantization (Ho et al. 2019, Flow++):
  ``u = sigmoid(s)``, ``s`` from a conditional flow of standard noise given ``x``.
* :class:`Preprocess` - ``v -> v - 1/2`` or ``v -> logit(a + (1 - 2a) v)``, with its log-determinant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import Flow, half_sizes, merge_halves, split_halves, standard_normal_logp
from ..nets import DenseBlock, make_net
from ..precision import conditioned
from .mixing import make_mixing
from .reshape import unsqueeze2d

__all__ = ["Preprocess", "UniformDequantizer", "FlowDequantizer", "ConditionalAffineCoupling", "context_encoder"]


class Preprocess(Flow):
    """Map dequantized data ``v in [0, 1)^D`` to the flow's input space.

    Formula: ``"centered"``: ``y = v - 1/2`` (as Hoogeboom et al.'s ``(x + u - 128) / 256``);
    ``"logit"``: ``y = logit(p)``, ``p = a + (1 - 2a) v`` (RealNVP, ``a = alpha``).
    Inverse: ``v = y + 1/2``; ``v = (sigmoid(y) - a) / (1 - 2a)``.
    Log-determinant: 0; ``sum [log(1 - 2a) - log p - log(1 - p)]``.
    Cost: ``O(D)`` element-wise.
    Shapes: ``[B, C, H, W]`` in and out.
    Reference: Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2017 (logit).
    Taught in ``notebooks/05_cifar10.ipynb``.
    """

    def __init__(self, shape, kind: str = "centered", alpha: float = 0.05):
        super().__init__(shape)
        if kind not in ("centered", "logit"):
            raise ValueError(f"Preprocess kind must be 'centered' or 'logit', got {kind!r}")
        self.kind = kind
        self.alpha = float(alpha)

    def _forward(self, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "centered":
            return v - 0.5, v.new_zeros(v.shape[0])
        p = self.alpha + (1 - 2 * self.alpha) * v
        y = torch.log(p) - torch.log1p(-p)
        logdet = math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return y, logdet.flatten(1).sum(1)

    def _inverse(self, y: Tensor) -> Tensor:
        if self.kind == "centered":
            return y + 0.5
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, kind={self.kind!r}"


class UniformDequantizer(nn.Module):
    """``u ~ U[0, 1)^D``, ``log q(u | x) = 0``: the bound is ``log p(x + u)`` (Theis et al. 2016)."""

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return u, x.new_zeros(x.shape[0])


class ConditionalAffineCoupling(nn.Module):
    """Affine coupling whose conditioner also sees a context (the image, for dequantization).

    Formula: ``y_a = s_a``, ``y_b = s_b exp(l) + t`` with ``(r, t) = net(cat(s_a, h))`` and
    ``l = 2 tanh(r / 2)``; ``h`` is the context, ``swap`` exchanges the halves.
    Inverse: ``s_b = (y_b - t) exp(-l)`` (not needed to sample ``u``, which runs forward).
    Log-determinant: ``sum l``.
    Cost: one conditioner pass on ``C_a + C_h`` channels.
    Shapes: ``s: [B, C, H, W]``, ``h: [B, C_h, H, W]``, ``logdet: [B]``.
    Reference: Flow++, Ho, Chen, Srinivas, Duan & Abbeel, 2019 (conditional dequantization flow).
    Taught in ``notebooks/05_cifar10.ipynb``.
    """

    def __init__(self, channels: int, context_channels: int, swap: bool, net: str, **net_kwargs):
        super().__init__()
        self.swap = swap
        c_a, c_b = half_sizes(channels, swap)
        self.net = make_net(net, c_a + context_channels, 2 * c_b, **net_kwargs)
        self.conditioner_dtype = None  # flowlib.precision.set_conditioner_dtype

    def forward(self, s: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        s_a, s_b = split_halves(s, self.swap)
        inp = torch.cat([s_a, h], dim=1)  # [B, C_a + C_h, H, W]
        raw, t = conditioned(self.net, inp, self.conditioner_dtype).chunk(2, dim=1)  # 2 x [B, C_b, H, W]
        log_s = 2.0 * torch.tanh(raw / 2.0)
        y_b = s_b * torch.exp(log_s) + t
        return merge_halves(s_a, y_b, self.swap), log_s.flatten(1).sum(1)  # [B, C, H, W], [B]


def context_encoder(kind: str, channels: int, context: int, gated: bool = True) -> nn.Module:
    """The dequantizer's image encoder ``[B, C, H, W] -> [B, context, H/2, W/2]``.

    ``"conv"``: 3x3 conv, ReLU, 2x2 stride-2 conv, ReLU, 3x3 conv (flowlib's small encoder,
    ``9 C h + 13 h^2`` weights and ``3 h`` biases for ``h = context``: 14,272 at ``C = 3``, ``h = 32``).
    ``"densenet"``: dense block (depth 4, growth 32) at full resolution, 2x2 stride-2 conv,
    dense block (depth 4, growth 32) (:class:`flowlib.nets.DenseBlock`, gated output
    convolutions if ``gated``), as the official code: 230,192 parameters at ``C = 3``,
    ``context = 32``, gated.

    >>> context_encoder("densenet", 3, 32)(torch.zeros(1, 3, 8, 8)).shape
    torch.Size([1, 32, 4, 4])
    """
    if kind == "conv":
        return nn.Sequential(
            nn.Conv2d(channels, context, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(context, context, 2, stride=2),  # [B, context, H/2, W/2]
            nn.ReLU(),
            nn.Conv2d(context, context, 3, padding=1),
        )
    if kind == "densenet":
        return nn.Sequential(
            DenseBlock(channels, context, depth=4, growth=32, gated=gated),
            nn.Conv2d(context, context, 2, stride=2),  # [B, context, H/2, W/2]
            DenseBlock(context, context, depth=4, growth=32, gated=gated),
        )
    raise ValueError(f"unknown context encoder {kind!r}; choose 'conv' or 'densenet'")


class FlowDequantizer(nn.Module):
    """Variational dequantization: noise ``u ~ q(u | x)`` from a conditional flow (Flow++).

    Formula: ``eps ~ N(0, 1)`` of shape ``[B, 4C, H/2, W/2]`` (the squeezed image); a context
    ``h = E(x / K - 1/2)`` (:func:`context_encoder`: ``context`` channels at ``H/2 x W/2``);
    ``s = f_x(eps)`` with [a first ``mixing`` layer, if ``first_mixing``] then ``n_subflows``
    x [conditional affine coupling (:class:`ConditionalAffineCoupling`), ``mixing`` layer];
    ``u = unsqueeze(sigmoid(s))``.
    Density: ``log q(u | x) = log N(eps) - log |det df_x/deps| - sum log sigmoid'(s)``
    with ``log sigmoid'(s) = -softplus(-s) - softplus(s)``.
    Inverse: not needed (``u`` is only ever sampled).
    Cost: a small image encoder plus ``n_subflows`` conditioner passes at half resolution.
    Shapes: ``x: [B, C, H, W]`` (integers as floats) ``-> u: [B, C, H, W]`` in ``(0, 1)``, ``log q: [B]``.
    Reference: Flow++: Improving Flow-Based Generative Models with Variational Dequantization
    and Architecture Design, Ho, Chen, Srinivas, Duan & Abbeel, ICML 2019; the layout (context
    encoder at half resolution, couplings on the squeezed noise) follows Hoogeboom et al. 2020.
    Taught in ``notebooks/05_cifar10.ipynb``.

    Arguments:
        shape: ``(C, H, W)`` of the images (``H, W`` even).
        n_bits: bits per pixel (``K = 2^n_bits``).
        n_subflows: number of coupling + mixing pairs.
        context: channels of the image encoding.
        mixing: registered layer name after each coupling, or ``"none"`` (alternate halves).
        net, **net_kwargs: the couplings' conditioner, see :func:`flowlib.nets.make_net`.
        encoder: the context encoder, ``"conv"`` or ``"densenet"`` (:func:`context_encoder`;
            its gate follows ``net_kwargs["gated"]``, default gated).
        first_mixing: one more ``mixing`` layer before the first coupling (the official layout).
        mixing_kwargs: keyword arguments of every mixing layer.
        convexp_bias: per-pixel biases around ``convexp`` mixing layers (:func:`~flowlib.models.mixing.make_mixing`).
    """

    def __init__(
        self,
        shape,
        n_bits: int,
        n_subflows: int,
        context: int,
        mixing: str,
        net: str,
        *,
        encoder: str = "conv",
        first_mixing: bool = False,
        mixing_kwargs: dict | None = None,
        convexp_bias: bool = False,
        **net_kwargs,
    ):
        super().__init__()
        C, H, W = shape
        self.noise_shape = (4 * C, H // 2, W // 2)
        self.levels = 2.0**n_bits
        self.encoder = context_encoder(encoder, C, context, gated=net_kwargs.get("gated", True))
        self.conditioner_dtype = None  # flowlib.precision.set_conditioner_dtype
        self.couplings = nn.ModuleList(
            ConditionalAffineCoupling(4 * C, context, swap=(mixing == "none" and k % 2 == 1), net=net, **net_kwargs)
            for k in range(n_subflows)
        )
        n_mixings = 0 if mixing == "none" else n_subflows + int(first_mixing)
        self.mixings = nn.ModuleList(
            make_mixing(mixing, self.noise_shape, convexp_bias, **(mixing_kwargs or {})) for _ in range(n_mixings)
        )
        self.first_mixing = n_mixings > n_subflows  # mixings[0] then runs before the first coupling

    def transform(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """The bijection ``eps -> u`` for the images ``x``, and its log-determinant ``[B]``."""
        image = x / self.levels - 0.5
        h = conditioned(self.encoder, image, self.conditioner_dtype)
        s, logdet = eps, 0
        mixings = iter(self.mixings)
        if self.first_mixing:
            s, logdet = next(mixings)(s)
        for coupling in self.couplings:
            s, ld = coupling(s, h)
            logdet = logdet + ld
            if len(self.mixings):
                s, ld = next(mixings)(s)
                logdet = logdet + ld
        logdet = logdet - (F.softplus(-s) + F.softplus(s)).flatten(1).sum(1)  # log sigmoid'(s)
        return unsqueeze2d(torch.sigmoid(s)), logdet

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        eps = torch.randn((x.shape[0], *self.noise_shape), generator=generator, dtype=x.dtype, device=x.device)
        u, logdet = self.transform(eps, x)
        return u, standard_normal_logp(eps) - logdet
