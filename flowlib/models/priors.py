"""Priors of the multi-scale flow: the conditional split prior and the final Gaussian.

Both are written as *standardising* maps, so the model's latents are always standard
normal noise ``eps``: for ``z ~ N(mu, sigma^2)`` we return ``eps = (z - mu) / sigma`` and
``log N(z; mu, sigma) = log N(eps; 0, 1) - sum log sigma``. Sampling at temperature
``T`` draws ``eps ~ N(0, T^2)`` and runs the inverse, ``z = mu + sigma eps``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..core import half_sizes, merge_halves, split_halves, standard_normal_logp
from ..nets import make_net
from ..precision import conditioned

__all__ = ["SplitPrior", "GaussianPrior"]


class SplitPrior(nn.Module):
    """Factor out half the channels with a learned conditional Gaussian prior (Glow's split).

    Formula: ``z = (z1, z2)`` (first ``C // 2`` and last ``C - C // 2`` channels);
    ``p(z2 | z1) = N(mu(z1), sigma(z1)^2)`` with ``(mu, r) = net(z1)``,
    ``log sigma = 2 tanh(r / 2)`` (bounded, as the affine coupling's scale). The net's
    last convolution is zero-initialised, so the prior starts as ``N(0, 1)``. With
    ``learned=False`` it is a fixed ``N(0, 1)`` (RealNVP's factoring out).
    ``forward`` returns ``z1`` (which continues through the flow), ``eps = (z2 - mu) / sigma``
    and ``log p(z2 | z1) = log N(eps) - sum log sigma``.
    Inverse: ``z2 = mu(z1) + sigma(z1) eps``, ``z = cat(z1, z2)``.
    Log-determinant: the ``- sum log sigma`` of the standardisation is part of ``log p``.
    Cost: one conditioner pass on ``z1``.
    Shapes: ``z: [B, C, H, W] -> z1: [B, C // 2, H, W]``, ``eps: [B, C - C // 2, H, W]``, ``log p: [B]``.
    Reference: Glow: Generative Flow with Invertible 1x1 Convolutions, Kingma & Dhariwal, 2018
    (learned prior on split); Density estimation using Real NVP, Dinh et al., 2017 (multi-scale).
    Taught in ``notebooks/05_cifar10.ipynb``.

    Arguments:
        shape: ``(C, H, W)`` of ``z``.
        learned: use the conditional Gaussian (else ``N(0, 1)``).
        net, **net_kwargs: the conditioner, see :func:`flowlib.nets.make_net`.
    """

    def __init__(self, shape, learned: bool = True, net: str = "conv", **net_kwargs):
        super().__init__()
        C, H, W = shape
        if C < 2:
            raise ValueError(f"SplitPrior needs >= 2 channels to split, got shape {tuple(shape)}")
        kept, factored = half_sizes(C)
        self.out_shape = (kept, H, W)
        self.latent_shape = (factored, H, W)
        self.net = make_net(net, kept, 2 * factored, **net_kwargs) if learned else None
        self.conditioner_dtype = None  # flowlib.precision.set_conditioner_dtype

    def params(self, z1: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, log sigma)``, each ``[B, C - C // 2, H, W]`` (zeros when not learned)."""
        if self.net is None:
            zeros = z1.new_zeros(z1.shape[0], *self.latent_shape)
            return zeros, zeros
        h = conditioned(self.net, z1, self.conditioner_dtype)
        mu, raw = h.chunk(2, dim=1)  # 2 x [B, C2, H, W]
        return mu, 2.0 * torch.tanh(raw / 2.0)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z1, z2 = split_halves(z)
        mu, log_sigma = self.params(z1)
        eps = (z2 - mu) * torch.exp(-log_sigma)
        return z1, eps, standard_normal_logp(eps) - log_sigma.flatten(1).sum(1)

    def inverse(self, z1: Tensor, eps: Tensor) -> Tensor:
        mu, log_sigma = self.params(z1)
        return merge_halves(z1, mu + torch.exp(log_sigma) * eps)  # [B, C, H, W]


class GaussianPrior(nn.Module):
    """The prior of the last level: ``N(mean_c, exp(log_scale_c)^2)`` per channel, or ``N(0, 1)``.

    Formula: ``eps = (z - mean) exp(-log_scale)``, ``log p(z) = log N(eps) - H W sum_c log_scale_c``;
    ``mean`` and ``log_scale`` are ``[C, 1, 1]`` parameters starting at 0 (learned), or fixed zeros.
    Inverse: ``z = mean + exp(log_scale) eps``.
    Log-determinant: part of ``log p`` as above.
    Cost: ``O(B C H W)``.
    Shapes: ``z, eps: [B, C, H, W]``, ``log p: [B]``.
    Reference: Glow, Kingma & Dhariwal, 2018 (learned top prior).
    Taught in ``notebooks/05_cifar10.ipynb``.
    """

    def __init__(self, shape, learned: bool = True):
        super().__init__()
        C = shape[0]
        self.latent_shape = tuple(shape)
        for name in ("mean", "log_scale"):
            zeros = torch.zeros(C, 1, 1)
            if learned:
                self.register_parameter(name, nn.Parameter(zeros))
            else:
                self.register_buffer(name, zeros)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        eps = (z - self.mean) * torch.exp(-self.log_scale)
        log_det = self.log_scale.sum() * (z.shape[2] * z.shape[3])
        return eps, standard_normal_logp(eps) - log_det

    def inverse(self, eps: Tensor) -> Tensor:
        return self.mean + torch.exp(self.log_scale) * eps
