"""Coupling layers: half the channels ``x_a`` pass through and condition a bijection of the rest.

All three split ``x = (x_a, x_b)`` along channels (``C // 2`` and ``C - C // 2``
channels; ``swap=True`` exchanges the roles), run a conditioner network
(:mod:`flowlib.nets`, in the layer's ``conditioner_dtype``, :mod:`flowlib.precision`) on ``x_a``
and transform ``x_b`` with the predicted parameters; the log-determinant is that
of the ``x_b`` map, because the Jacobian is block triangular.

* :class:`AffineCoupling` (``"affine_coupling"``) - RealNVP/Glow: ``y_b = x_b * s + t``.
* :class:`ExpCoupling` (``"exp_coupling"``) - Xiao & Liu: ``y_b = expm(A) x_b + t`` per pixel.
* :class:`ConfCoupling` (``"conf_coupling"``) - Karami et al.: data-adaptive circular
  convolution, scale, shift and S-Log gate.
* :func:`adaptive_circular_conv` / :func:`adaptive_circular_deconv` - per-sample depthwise
  circular convolution by FFT, used by :class:`ConfCoupling`.

Taught in ``notebooks/03_invertible_convolutions.ipynb``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core import Flow, half_sizes, merge_halves, sample_shape, split_halves
from ..functional import torus_kernel_spectrum
from ..linalg import expm
from ..nets import make_net
from ..precision import conditioned
from .elementwise import slog_forward, slog_inverse
from .registry import register

__all__ = [
    "AffineCoupling",
    "ExpCoupling",
    "ConfCoupling",
    "adaptive_circular_conv",
    "adaptive_circular_deconv",
]


def _bounded_log_scale(raw: Tensor, bound: float) -> Tensor:
    """``bound * tanh(raw / bound)``: slope 1 at 0, values in ``(-bound, bound)``."""
    return bound * torch.tanh(raw / bound)


class _Coupling(Flow):
    """Shared split / conditioner / merge; subclasses transform ``x_b`` given the net output ``h``."""

    def __init__(self, shape, net: str = "conv", swap: bool = False, **net_kwargs):
        super().__init__(shape)
        sample_shape(self.shape, self.label)
        channels = self.shape[0]
        if channels < 2:
            raise ValueError(
                f"{self.label} needs >= 2 channels to split into a conditioning and a transformed half, "
                f"got shape {self.shape}; squeeze the image first (C, H, W) -> (4C, H/2, W/2)."
            )
        self.swap = bool(swap)
        self.c_a, self.c_b = half_sizes(channels, self.swap)  # x_a conditions, x_b is transformed
        self.net = make_net(net, self.c_a, self._net_channels(), **net_kwargs)
        self.conditioner_dtype = None  # flowlib.precision.set_conditioner_dtype

    def _net_channels(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def condition(self, x_a: Tensor) -> Tensor:
        """The conditioner output ``net(x_a)``, run under conditioner autocast, in ``x_a``'s dtype."""
        return conditioned(self.net, x_a, self.conditioner_dtype)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = split_halves(x, self.swap)
        y_b, logdet = self._transform(x_b, self.condition(x_a))
        return merge_halves(x_a, y_b, self.swap), logdet

    def _inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = split_halves(y, self.swap)
        return merge_halves(y_a, self._untransform(y_b, self.condition(y_a)), self.swap)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, split={self.c_a}->{self.c_b}, swap={self.swap}"


@register("affine_coupling", role="coupling")
class AffineCoupling(_Coupling):
    """Affine coupling: ``y_a = x_a``, ``y_b = x_b * s(x_a) + t(x_a)``.

    Formula: the net predicts ``(r, t)``; ``log s = b tanh(r / b)`` with ``b = scale_bound``
    (default 2). We use this bounded exponential rather than Glow's ``sigmoid(r + 2)``:
    it starts at the identity (``r = 0 -> s = 1``) like the zero-initialised net, keeps
    ``s`` in ``(e^-b, e^b)`` so neither direction can blow up, and has slope 1 at 0.
    Inverse: ``x_b = (y_b - t) / s`` (``t, s`` recomputed from ``y_a = x_a``).
    Log-determinant: ``sum log s`` over the ``C_b H W`` transformed entries.
    Cost: one conditioner pass plus ``O(C H W)``, forward and inverse alike.
    Shapes: ``[B, C, H, W]``, ``C >= 2``.
    Reference: Density estimation using Real NVP, Dinh, Sohl-Dickstein & Bengio, 2017;
    Glow, Kingma & Dhariwal, 2018.
    Taught in ``notebooks/03_invertible_convolutions.ipynb``.

    Arguments:
        shape: ``(C, H, W)``.
        net: conditioner, ``"conv"`` (kwarg ``hidden``) or ``"densenet"`` (``depth``,
            ``growth``, ``intermediate``, ``gated``), see :func:`flowlib.nets.make_net`.
        swap: transform the first half instead of the second.
        scale_bound: ``b`` above.

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("affine_coupling", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, net: str = "conv", swap: bool = False, scale_bound: float = 2.0, **net_kwargs):
        super().__init__(shape, net=net, swap=swap, **net_kwargs)
        self.scale_bound = float(scale_bound)

    def _net_channels(self) -> int:
        return 2 * self.c_b

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(log s, t)``, each ``[B, C_b, H, W]``, from the conditioner output ``h``."""
        raw, t = h.chunk(2, dim=1)  # 2 x [B, C_b, H, W]
        return _bounded_log_scale(raw, self.scale_bound), t

    def _transform(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_s, t = self.params(h)
        return x_b * log_s.exp() + t, log_s.flatten(1).sum(1)

    def _untransform(self, y_b: Tensor, h: Tensor) -> Tensor:
        log_s, t = self.params(h)
        return (y_b - t) * torch.exp(-log_s)


@register("exp_coupling", role="coupling")
class ExpCoupling(_Coupling):
    """Matrix exponential coupling: ``y_b[:, :, i, j] = expm(A_ij(x_a)) x_b[:, :, i, j] + t_ij(x_a)``.

    Formula: at each pixel the net predicts a ``C_b x C_b`` matrix ``R`` and a shift ``t``;
    ``A = m tanh(R)`` bounds every entry by the coefficient
    ``m = m_max sigmoid(coefficient_logit) in (0, m_max)`` (a learnable scalar; any real logit is
    valid). This is Xiao & Liu's stabilisation: ``||A||_1 <= m C_b < m_max C_b`` so
    ``expm`` and its inverse stay well conditioned, and the number of squarings
    ``s = ceil(log2(m_max C_b))`` is fixed at construction (no device sync, compilable).
    With a diagonal ``A`` it is exactly an affine coupling with
    ``log s = diag A``: the layer generalises it to mixing between channels.
    Inverse: ``x_b = expm(-A) (y_b - t)``.
    Log-determinant: ``log |det expm(A)| = tr A``, summed over the ``H W`` pixels.
    Cost: conditioner with ``C_b^2 + C_b`` outputs plus ``expm`` of ``B H W`` matrices of
    size ``C_b`` (``O(B H W C_b^3 (10 + s))`` flops in float32, ``s <= log2(m C_b)`` squarings):
    keep ``C_b`` small (it is ``C / 2`` after the squeeze, e.g. 6 for CIFAR at the first level).
    Shapes: ``[B, C, H, W]``, ``C >= 2``.
    Reference: Generative Flows with Matrix Exponential, Xiao & Liu, ICML 2020
    (Sec. 4.2; Table 6 reports the learnt coefficients ``m``, see :attr:`coefficient`).
    Taught in ``notebooks/01_matrix_exponential.ipynb`` and ``03_invertible_convolutions.ipynb``.

    Arguments:
        shape: ``(C, H, W)``.
        net, swap, **net_kwargs: as in :class:`AffineCoupling`.
        coefficient: initial value of ``m`` (``0 < coefficient < coefficient_max``).
        coefficient_max: the bound ``m_max`` on ``m``.

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("exp_coupling", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(
        self,
        shape,
        net: str = "conv",
        swap: bool = False,
        coefficient: float = 1.0,
        coefficient_max: float = 4.0,
        **net_kwargs,
    ):
        super().__init__(shape, net=net, swap=swap, **net_kwargs)
        if not 0 < coefficient < coefficient_max:
            raise ValueError(
                f"{self.label} needs 0 < coefficient < coefficient_max, got {coefficient} and {coefficient_max}"
            )
        self.coefficient_max = float(coefficient_max)
        ratio = coefficient / coefficient_max
        self.coefficient_logit = nn.Parameter(torch.tensor(math.log(ratio / (1 - ratio))))  # sigmoid^-1(m / m_max)
        self.max_squarings = max(0, math.ceil(math.log2(coefficient_max * self.c_b)))

    def _net_channels(self) -> int:
        return self.c_b * self.c_b + self.c_b

    @property
    def coefficient(self) -> Tensor:
        """The bound ``m = m_max sigmoid(coefficient_logit)`` on the entries of ``A``."""
        return self.coefficient_max * torch.sigmoid(self.coefficient_logit)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(A, t)`` from the conditioner output ``h``: ``A`` is ``[B, H, W, C_b, C_b]``, ``t`` ``[B, C_b, H, W]``."""
        n = self.c_b
        raw, t = h.split([n * n, n], dim=1)
        raw = raw.unflatten(1, (n, n)).permute(0, 3, 4, 1, 2)  # [B, H, W, C_b, C_b]
        return self.coefficient.to(h.dtype) * torch.tanh(raw), t

    @staticmethod
    def _per_pixel(matrix: Tensor, x: Tensor) -> Tensor:
        """Per-pixel product ``matrix[b, i, j] @ x[b, :, i, j]``; ``matrix`` ``[B, H, W, n, n]``."""
        return torch.einsum("bhwij,bjhw->bihw", matrix, x)  # [B, n, H, W]

    def _transform(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        A, t = self.params(h)
        logdet = A.diagonal(dim1=-2, dim2=-1).flatten(1).sum(1)  # sum of tr(A) over pixels
        return self._per_pixel(expm(A, max_squarings=self.max_squarings), x_b) + t, logdet

    def _untransform(self, y_b: Tensor, h: Tensor) -> Tensor:
        A, t = self.params(h)
        return self._per_pixel(expm(-A, max_squarings=self.max_squarings), y_b - t)


def adaptive_circular_conv(x: Tensor, kernel: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample depthwise circular cross-correlation by FFT, and its log-determinant.

    ``y[b, c, i, j] = sum_{u,v} kernel[b, c, u, v] x[b, c, i+u-k//2, j+v-k//2]`` (indices mod
    ``H, W``), i.e. ``conv2d`` with circular padding, one kernel per sample and channel.
    In the Fourier domain ``y_hat = conj(K_hat) x_hat``, so
    ``log |det| = sum_{c, freq} log |K_hat|`` (per sample).

    Arguments:
        x: ``[B, n, H, W]``.
        kernel: ``[B, n, k, k]`` with odd ``k``.

    Returns:
        ``(y [B, n, H, W], logdet [B])``.
    """
    H, W = x.shape[-2:]
    spectrum = torus_kernel_spectrum(kernel, H, W, onesided=True)  # [B, n, H, W//2+1]
    y = torch.fft.irfft2(spectrum.conj() * torch.fft.rfft2(x), s=(H, W))
    # rfft2 keeps W//2+1 of the W frequencies of the last axis; the others are conjugates.
    weight = torch.full((W // 2 + 1,), 2.0, dtype=x.dtype, device=x.device)
    weight[0] = 1.0
    if W % 2 == 0:
        weight[-1] = 1.0
    logdet = (spectrum.abs().log() * weight).flatten(1).sum(1)
    return y, logdet


def adaptive_circular_deconv(y: Tensor, kernel: Tensor) -> Tensor:
    """Inverse of :func:`adaptive_circular_conv`: ``x_hat = y_hat / conj(K_hat)``."""
    H, W = y.shape[-2:]
    spectrum = torus_kernel_spectrum(kernel, H, W, onesided=True)
    return torch.fft.irfft2(torch.fft.rfft2(y) / spectrum.conj(), s=(H, W))


@register("conf_coupling", role="coupling")
class ConfCoupling(_Coupling):
    """CONF coupling: ``y_b = slog( s(x_a) * (w(x_a) ⋆ x_b) + t(x_a) )``.

    Formula: ``w(x_a) ⋆`` is a data-adaptive invertible convolution: a depthwise circular
    ``k x k`` cross-correlation with one kernel per sample and channel, applied by FFT
    (:func:`adaptive_circular_conv`). The net predicts ``(r, t, q)`` per pixel;
    ``log s = b tanh(r / b)`` (as in :class:`AffineCoupling`); the kernel logits ``p`` are
    the spatial mean of ``q`` (global pooling followed by the net's last, linear conv) and
    ``w = delta + (1 - margin) p / (1 + ||p||_1)``. Since the perturbation has
    ``l1``-norm ``< 1 - margin``, every Fourier coefficient obeys
    ``|w_hat| >= 1 - ||w - delta||_1 > margin``: the convolution is never singular, for any
    parameters. It starts at ``w = delta`` (zero-initialised net). ``slog`` is the S-Log
    gate with a learnable per-channel ``alpha = exp(log_alpha) > 0``
    (:func:`flowlib.layers.elementwise.slog_forward`).
    Inverse: ``z = slog^{-1}(y_b)``, ``u = (z - t) / s``, ``x_b = IFFT(FFT(u) / conj(w_hat))``.
    Log-determinant: ``sum log |w_hat| + sum log s - sum log(1 + alpha |z|)``.
    Cost: conditioner pass plus 2 real FFTs of ``[B, C_b, H, W]`` (``O(B C_b H W log HW)``)
    and the kernel's FFT, forward and inverse alike.
    Shapes: ``[B, C, H, W]``, ``C >= 2``, any ``H, W`` (kernels wrap around small images).
    Reference: Invertible Convolutional Flow, Karami, Schuurmans, Sohl-Dickstein, Dinh &
    Duckworth, NeurIPS 2019 (Sec. 4: data-adaptive convolution coupling, S-Log gate).
    Taught in ``notebooks/03_invertible_convolutions.ipynb``.

    Arguments:
        shape: ``(C, H, W)``.
        net, swap, scale_bound, **net_kwargs: as in :class:`AffineCoupling`.
        kernel_size: odd ``k``.
        margin: lower bound on ``|w_hat|``, in ``(0, 1)``.
        alpha: initial S-Log slope (``> 0``).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("conf_coupling", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(
        self,
        shape,
        net: str = "conv",
        swap: bool = False,
        scale_bound: float = 2.0,
        kernel_size: int = 3,
        margin: float = 0.1,
        alpha: float = 1.0,
        **net_kwargs,
    ):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"{self.name} needs an odd kernel_size >= 1, got {kernel_size}")
        if not 0 < margin < 1:
            raise ValueError(f"{self.name} needs 0 < margin < 1, got {margin}")
        if not alpha > 0:
            raise ValueError(f"{self.name} needs alpha > 0, got {alpha}")
        self.kernel_size = kernel_size
        super().__init__(shape, net=net, swap=swap, **net_kwargs)
        self.scale_bound = float(scale_bound)
        self.margin = float(margin)
        self.log_alpha = nn.Parameter(torch.full((self.c_b,), math.log(alpha)))

    def _net_channels(self) -> int:
        return self.c_b * (2 + self.kernel_size**2)

    def params(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log s [B, C_b, H, W], t [B, C_b, H, W], kernel [B, C_b, k, k])`` from the net output ``h``."""
        n, k = self.c_b, self.kernel_size
        raw, t, q = h.split([n, n, n * k * k], dim=1)
        p = q.mean(dim=(2, 3)).unflatten(1, (n, k * k))  # [B, C_b, k*k] kernel logits
        perturbation = (1 - self.margin) * p / (1 + p.abs().sum(-1, keepdim=True))
        delta = torch.zeros(k * k, dtype=h.dtype, device=h.device)
        delta[k * k // 2] = 1.0
        kernel = (delta + perturbation).unflatten(2, (k, k))  # [B, C_b, k, k]
        return _bounded_log_scale(raw, self.scale_bound), t, kernel

    def alpha(self, x: Tensor) -> Tensor:
        """S-Log slopes shaped ``[1, C_b, 1, 1]``."""
        return self.log_alpha.exp().to(x.dtype).view(1, -1, 1, 1)

    def _transform(self, x_b: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        log_s, t, kernel = self.params(h)
        u, logdet_conv = adaptive_circular_conv(x_b, kernel)
        z = u * log_s.exp() + t
        y_b, log_deriv = slog_forward(z, self.alpha(z))
        return y_b, logdet_conv + log_s.flatten(1).sum(1) + log_deriv.flatten(1).sum(1)

    def _untransform(self, y_b: Tensor, h: Tensor) -> Tensor:
        log_s, t, kernel = self.params(h)
        z = slog_inverse(y_b, self.alpha(y_b))
        return adaptive_circular_deconv((z - t) * torch.exp(-log_s), kernel)
