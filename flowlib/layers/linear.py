"""Per-channel affine and 1x1-convolution layers: ``actnorm``, ``conv1x1``, ``conv1x1_lu``, ``conv1x1_exp``.

All act on the channel axis of an image batch ``[B, C, H, W]`` with one ``C x C``
matrix (or a diagonal) shared by every pixel, so ``log |det J| = H W log |det W|``.
Each exposes ``logdet(x)``: the log-determinant alone, without computing ``y``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core import Flow, sample_shape
from ..linalg import expm
from .registry import register

__all__ = ["ActNorm", "Conv1x1", "Conv1x1LU", "Conv1x1Exp"]


def _pixels(x: Tensor) -> int:
    """Number of positions sharing the channel transform: ``H * W`` (any trailing axes)."""
    return math.prod(x.shape[2:])


def _random_orthogonal(C: int) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(C, C, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix: Haar-distributed


def _apply_channels(W: Tensor, x: Tensor) -> Tensor:
    """``y[b, :, p] = W @ x[b, :, p]`` for every position ``p``."""
    B, C = x.shape[:2]
    return torch.matmul(W, x.reshape(B, C, -1)).reshape(x.shape)  # [B, C, H*W] -> [B, C, H, W]


@register("actnorm")
class ActNorm(Flow):
    """Activation normalisation (Glow): a per-channel affine map with data-dependent init.

    Formula: ``y[b, c, h, w] = (x[b, c, h, w] + bias[c]) * exp(logs[c])``.

    Inverse: ``x = y * exp(-logs) - bias``.

    Log-determinant: ``H * W * sum_c logs[c]`` (the same for every sample).

    Initialisation: on the first forward pass in training mode, ``bias`` and
    ``logs`` are set from that batch so that the output has zero mean and unit
    variance per channel: ``bias = -mean``, ``logs = -log(std + eps)``. Under
    ``torch.distributed`` the batch sums (count, sum, sum of squares) are
    all-reduced first so that every rank gets the same initial parameters. The
    buffer ``initialized`` records that this happened; it is saved in the
    ``state_dict`` so a resumed checkpoint does not re-initialise. A Python mirror
    of that flag is read in ``forward`` so that it never synchronises with the device.

    Cost: ``O(B C H W)``; parameters ``2 C``.

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
    Convolutions", NeurIPS 2018. Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("actnorm", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, eps: float = 1e-6):
        super().__init__(shape)
        C = sample_shape(shape, "actnorm", ndim=None)[0]  # (C, H, W); (C, N) for GraphActNorm
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(C))
        self.logs = nn.Parameter(torch.zeros(C))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False  # mirror of the buffer, read without a device sync

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``bias`` and ``logs`` so that ``self(x)`` has zero mean and unit variance per channel."""
        dims = [0] + list(range(2, x.dim()))
        xd = x.detach().to(torch.float64)
        total = xd.sum(dims)  # [C]
        count = torch.full_like(total, x.numel() / x.shape[1])  # [C]
        stats = torch.stack([count, total, (xd * xd).sum(dims)])  # [3, C]: count, sum, sum of squares
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        count, total, squares = stats
        if count[0] == 0:  # also under DDP: the batches of all ranks were empty
            raise ValueError(
                f"{self.label} cannot initialise from an empty batch (input shape {list(x.shape)}): its "
                "data-dependent init needs at least one sample; run the first training forward on real data"
            )
        mean = total / count
        var = (squares / count - mean * mean).clamp_min(0)
        self.bias.copy_(-mean)
        self.logs.copy_(-torch.log(var.sqrt() + self.eps))
        self.initialized.fill_(True)
        self._initialized = True

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not self._initialized:
            self.initialize(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x + self.bias.view(shape)) * torch.exp(self.logs).view(shape)
        return y, self.logdet(x)

    def _inverse(self, y: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        return y * torch.exp(-self.logs).view(shape) - self.bias.view(shape)

    def logdet(self, x: Tensor) -> Tensor:
        """``H * W * sum(logs)`` broadcast to ``[B]``."""
        return (_pixels(x) * self.logs.sum()).expand(x.shape[0])


class _ChannelMatrix(Flow):
    """Shared machinery: subclasses give ``weight()``, ``inverse_weight()`` and ``log_abs_det()``."""

    def weight(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse_weight(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_abs_det(self) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _apply_channels(self.weight(), x), self.logdet(x)

    def _inverse(self, y: Tensor) -> Tensor:
        return _apply_channels(self.inverse_weight(), y)

    def logdet(self, x: Tensor) -> Tensor:
        """``H * W * log |det W|`` broadcast to ``[B]``."""
        return (_pixels(x) * self.log_abs_det()).expand(x.shape[0])


@register("conv1x1", role="mixing")
class Conv1x1(_ChannelMatrix):
    """Invertible 1x1 convolution with an unconstrained ``C x C`` matrix (Glow).

    Formula: ``y[b, :, h, w] = W x[b, :, h, w]``; ``W`` starts as a random rotation.

    Inverse: ``x = W^{-1} y`` with ``W^{-1}`` from ``torch.linalg.inv`` (``O(C^3)``,
    once per call, then a 1x1 convolution).

    Log-determinant: ``H * W * log |det W|`` (``torch.linalg.slogdet``, ``O(C^3)``).

    Invertibility: ``W`` is singular on a measure-zero set that training can
    approach (``log |det W| -> -inf``); :class:`Conv1x1LU` and :class:`Conv1x1Exp`
    avoid that by construction.

    Cost: ``O(B C^2 H W + C^3)``; parameters ``C^2``.

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
    Convolutions", NeurIPS 2018. Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("conv1x1", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape):
        super().__init__(shape)
        self.W = nn.Parameter(_random_orthogonal(sample_shape(shape, "conv1x1")[0]))

    def weight(self) -> Tensor:
        return self.W

    def inverse_weight(self) -> Tensor:
        return torch.linalg.inv(self.W)

    def log_abs_det(self) -> Tensor:
        return torch.linalg.slogdet(self.W).logabsdet


@register("conv1x1_lu", role="mixing")
class Conv1x1LU(_ChannelMatrix):
    """1x1 convolution with an LU-parametrised matrix (Glow, "LU decomposed").

    Formula: ``W = P L (U + diag(sign * exp(logs)))`` with ``P`` a fixed permutation
    (buffer), ``L`` unit lower triangular, ``U`` strictly upper triangular and
    ``sign`` a fixed +-1 buffer; initialised as the PLU factors of a random rotation.

    Inverse: ``W^{-1} = U'^{-1} L^{-1} P^T`` with two triangular solves
    (``U' = U + diag(sign * exp(logs))``), then a 1x1 convolution.

    Log-determinant: ``H * W * sum(logs)`` (``O(C)``). ``W`` is invertible for any
    parameter values, but ``logs -> -inf`` can still drive it towards singularity.

    Cost: ``O(B C^2 H W + C^3)`` (building ``W`` is ``O(C^3)`` matmuls, no
    decomposition); parameters ``C^2 + C`` (the triangles of two ``C x C`` matrices).

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
    Convolutions", NeurIPS 2018. Taught in notebook 03 (invertible convolutions).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("conv1x1_lu", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape):
        super().__init__(shape)
        C = sample_shape(shape, "conv1x1_lu")[0]
        P, L, U = torch.linalg.lu(_random_orthogonal(C))
        s = torch.diagonal(U)
        self.register_buffer("P", P)
        self.register_buffer("sign", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(C, C), -1))
        self.register_buffer("eye", torch.eye(C))
        self.L = nn.Parameter(L * self.lower_mask)
        self.U = nn.Parameter(torch.triu(U, 1))
        self.logs = nn.Parameter(torch.log(s.abs()))

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.L * self.lower_mask + self.eye
        upper = self.U * self.lower_mask.T + torch.diag(self.sign * torch.exp(self.logs))
        return lower, upper

    def weight(self) -> Tensor:
        lower, upper = self._factors()
        return self.P @ lower @ upper

    def inverse_weight(self) -> Tensor:
        lower, upper = self._factors()
        inv_l_pt = torch.linalg.solve_triangular(lower, self.P.T, upper=False, unitriangular=True)  # L^{-1} P^T
        return torch.linalg.solve_triangular(upper, inv_l_pt, upper=True)

    def log_abs_det(self) -> Tensor:
        return self.logs.sum()


@register("conv1x1_exp", role="mixing")
class Conv1x1Exp(_ChannelMatrix):
    """1x1 convolution whose matrix is a matrix exponential (Xiao & Liu 2020).

    Formula: ``W = expm(A)`` with an unconstrained ``A`` (``C x C``), computed by
    :func:`flowlib.linalg.expm`; ``A`` starts small (``W`` near the identity).

    Inverse: ``W^{-1} = expm(-A)``: no solve or decomposition.

    Log-determinant: ``H * W * trace(A)`` (``O(C)``, exact).

    Stability: ``det expm(A) = exp(tr A) > 0`` for every ``A``, so ``W`` is
    invertible for any parameter value and training cannot collapse to a
    singular ``W`` the way the plain parametrisation (``det W`` crossing 0) or PLU
    (``logs -> -inf`` after a large step) can; the inverse is also as well
    conditioned as the forward (``||W^{-1}|| = ||expm(-A)|| <= exp(||A||)``).

    Cost: ``O(B C^2 H W)`` plus two ``expm`` calls of ``O((m + s) C^3)`` each
    (``m`` Taylor terms, ``s`` squarings); parameters ``C^2``.

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Xiao & Liu, "Generative Flows with Matrix Exponential", ICML 2020.
    Taught in notebook 01 (matrix exponential).

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("conv1x1_exp", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(self, shape, init_scale: float = 0.1):
        super().__init__(shape)
        C = sample_shape(shape, "conv1x1_exp")[0]
        self.A = nn.Parameter(init_scale * torch.randn(C, C) / math.sqrt(C))

    # A fixed cap on squarings keeps the forward free of device syncs (torch.compile, CUDA graphs);
    # 2^16 covers any ||A||_1 whose exponential does not overflow float32 anyway.
    max_squarings = 16

    def weight(self) -> Tensor:
        return expm(self.A, max_squarings=self.max_squarings)

    def inverse_weight(self) -> Tensor:
        return expm(-self.A, max_squarings=self.max_squarings)

    def log_abs_det(self) -> Tensor:
        return torch.diagonal(self.A).sum()
