"""Convolution exponential and graph convolution exponential layers: ``convexp``, ``graph_convexp``.

Both compute ``exp(M) x`` for a linear map ``M`` that is never built as a matrix:
the power series ``x + M x + M^2 x / 2! + ...`` only needs applications of ``M``
(a convolution, or a message-passing step on a graph). Invertibility, the inverse
(``exp(-M)``) and the log-determinant (``tr M``) come for free; see
:mod:`flowlib.functional`. Taught in ``notebooks/02_convolution_exponential.ipynb``.

Conditioning. Each layer rescales its weights so that a cheap *upper bound* ``b`` of
``||M||_2`` never exceeds ``rho`` (``RHO = 0.5`` by default)::

    K_eff = K * min(1, rho / b(K))

The rescaling is part of the parametrisation (differentiable, applied on every
call), so it also holds after any optimiser step or random perturbation. Then the
series truncated after ``n`` terms has error at most
``rho^(n+1) / (n+1)! * e^rho * ||x||`` (:func:`flowlib.linalg.taylor_remainder_bound`),
and the number of terms is fixed once at construction by
:func:`flowlib.functional.conv_exp_terms`: with ``rho = 0.5`` that is 7 terms for the
training tolerance ``1e-6`` (below the rounding error of a chain of float32
convolutions) and 11 terms for the evaluation tolerance ``1e-12``. Why ``0.5``:
one layer then scales volumes by at most ``e^(0.5 D)`` and its Jacobian has
singular values in ``[e^-0.5, e^0.5]`` (well conditioned inverse), while a larger
``rho`` buys little expressivity per layer (layers stack) and costs terms
(``rho = 1``: 9 / 15 terms; ``rho = 2``: 14 / 20).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..core import Flow
from ..linalg import operator_norm_bound
from .linear import Conv1x1LU
from .registry import register

__all__ = ["ConvExp", "GraphConvExp", "RHO", "TRAIN_TOL", "EVAL_TOL"]

RHO = 0.5  # bound on ||M||_2 enforced by the rescaling of the weights
TRAIN_TOL = 1e-6  # series tolerance (relative to ||x||) in training mode: 7 terms at rho = 0.5
EVAL_TOL = 1e-12  # series tolerance in eval mode (float64 checks, sampling): 11 terms at rho = 0.5


def _rescale(weight: Tensor, bound: Tensor, rho: float) -> Tensor:
    """``weight * min(1, rho / bound)`` (differentiable; ``bound = 0`` leaves ``weight`` unchanged)."""
    return weight * torch.clamp(rho / bound.clamp_min(1e-12), max=1.0)


@register("convexp")
class ConvExp(Flow):
    """Convolution exponential after a PLU 1x1 convolution (Hoogeboom et al. 2020).

    Formula: ``y = exp(M) (Q x)`` where ``Q`` is a PLU-parametrised 1x1 convolution
    (:class:`flowlib.layers.linear.Conv1x1LU`) and ``M`` the zero-padded ``k x k``
    convolution with ``K_eff = K * min(1, rho / operator_norm_bound(K))`` (so
    ``||M||_2 <= rho``), computed by the series ``sum_{i<=n} M^i Q x / i!`` with
    ``n = conv_exp_terms(rho, tol)`` fixed at construction (``train_terms`` in
    training mode, ``eval_terms`` in eval mode).

    Inverse: ``x = Q^{-1} exp(-M) y``: the same series with ``-K_eff``, then the
    inverse 1x1 convolution. Truncation error of each series ``<= tol * ||.||_2``.

    Log-determinant: ``H W tr(K_eff[:, :, c, c]) + H W sum(logs_Q)`` (exact for
    ``exp(M)``; the truncated series differs by at most the tolerance).

    Cost: ``n`` convolutions ``C -> C`` with a ``k x k`` kernel plus one 1x1
    convolution: ``O(n B C^2 k^2 H W)``; memory ``n`` activations for autograd.
    Parameters ``C^2 k^2 + C^2 + C``.

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Hoogeboom, Garcia Satorras, Tomczak & Welling, "The Convolution
    Exponential and Generalized Sylvester Flows", NeurIPS 2020. Taught in notebook 02.

    Arguments:
        shape: ``(C, H, W)``; ``H`` and ``W`` may be ``None``.
        kernel_size: odd ``k`` (default 3).
        rho: bound enforced on ``||M||_2`` (default :data:`RHO`).
        train_tol, eval_tol: series tolerances that fix the number of terms.
        init_scale: standard deviation of the initial kernel entries.
    """

    def __init__(
        self,
        shape,
        kernel_size: int = 3,
        rho: float = RHO,
        train_tol: float = TRAIN_TOL,
        eval_tol: float = EVAL_TOL,
        init_scale: float = 0.05,
    ):
        super().__init__(shape)
        if len(shape) != 3 or shape[0] is None:
            raise ValueError(f"convexp needs shape=(C, H, W) with a fixed channel count, got shape={tuple(shape)}")
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"convexp needs an odd kernel_size (same padding), got {kernel_size}")
        if not 0 < rho:
            raise ValueError(f"convexp needs rho > 0, got {rho}")
        C = int(shape[0])
        self.rho = float(rho)
        self.train_terms = Fn.conv_exp_terms(self.rho, train_tol)
        self.eval_terms = Fn.conv_exp_terms(self.rho, eval_tol)
        self.mixing = Conv1x1LU(shape)
        self.kernel = nn.Parameter(init_scale * torch.randn(C, C, kernel_size, kernel_size))

    @property
    def terms(self) -> int:
        """Number of series terms used in the current mode."""
        return self.train_terms if self.training else self.eval_terms

    def effective_kernel(self) -> Tensor:
        """``K_eff = K * min(1, rho / operator_norm_bound(K))``, shape ``[C, C, k, k]``."""
        return _rescale(self.kernel, operator_norm_bound(self.kernel), self.rho)

    def transform(self, x: Tensor) -> Tensor:
        """``exp(M) Q x`` without the log-determinant (used by :class:`~flowlib.layers.sylvester.ConvSylvester`)."""
        mixed, _ = self.mixing._forward(x)
        return Fn.conv_exp(mixed, self.effective_kernel(), terms=self.terms)

    def inverse_transform(self, y: Tensor) -> Tensor:
        """``Q^{-1} exp(-M) y``."""
        return self.mixing._inverse(Fn.inv_conv_exp(y, self.effective_kernel(), terms=self.terms))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kernel = self.effective_kernel()
        mixed, logdet = self.mixing._forward(x)
        y = Fn.conv_exp(mixed, kernel, terms=self.terms)
        logdet = logdet + Fn.conv_exp_logdet(kernel, x.shape[2], x.shape[3])
        return y, logdet

    def _inverse(self, y: Tensor) -> Tensor:
        return self.inverse_transform(y)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rho={self.rho}, train_terms={self.train_terms}, eval_terms={self.eval_terms}"


@register("graph_convexp")
class GraphConvExp(Flow):
    """Graph convolution exponential (Hoogeboom et al. 2020): ``y = exp(M) x`` on node features.

    Formula: ``M x = x W0 + (A_norm x) W1`` for node features ``x [N, C]``, with a
    per-node (self) weight ``W0`` and a neighbour weight ``W1`` (both ``C x C``,
    shared by all nodes) and ``A_norm = A / sqrt(||A||_1 ||A||_inf)`` (so
    ``||A_norm||_2 <= 1``; for an undirected 0/1 graph: ``A`` divided by the maximum
    degree). The weights are rescaled by ``min(1, rho / (||W0||_F + ||W1||_F))``, which
    bounds ``||M||_2 <= rho``; the series uses a fixed number of terms as in
    :class:`ConvExp`. Permuting the nodes of ``x`` and ``A`` permutes ``y``
    (equivariance) and leaves the log-determinant unchanged.

    Inverse: ``x = exp(-M) y`` (the series with ``-W0, -W1``).

    Log-determinant: ``tr M = N tr(W0) + tr(A_norm) tr(W1)`` (``M = I (x) W0^T +
    A_norm (x) W1^T`` on row-major ``vec(x)``; ``tr(A_norm) = 0`` without self loops).

    Cost: ``n`` terms of ``O(B (N^2 C + N C^2))`` (dense adjacency); parameters ``2 C^2``.

    Shapes: ``x, y: [B, N, C]`` with ``shape=(N, C)`` and ``adjacency [N, N]``; or
    ``x, y: [B, C, H, W]`` with ``shape=(C, H, W)`` and no adjacency: the ``H W``
    pixels are the nodes of the 4-neighbour grid graph and the channels their
    features. ``logdet: [B]``.

    Reference: Hoogeboom, Garcia Satorras, Tomczak & Welling, "The Convolution
    Exponential and Generalized Sylvester Flows", NeurIPS 2020. Taught in notebook 02
    (graph section); used by :mod:`flowlib.graphs`.

    Arguments:
        shape: ``(N, C)`` (with ``adjacency``) or ``(C, H, W)`` (grid graph).
        adjacency: ``[N, N]`` tensor (weighted or 0/1, directed or not), required for ``(N, C)``.
        rho, train_tol, eval_tol: as in :class:`ConvExp`.
        init_scale: standard deviation of the initial weight entries.
    """

    def __init__(
        self,
        shape,
        adjacency: Tensor | None = None,
        rho: float = RHO,
        train_tol: float = TRAIN_TOL,
        eval_tol: float = EVAL_TOL,
        init_scale: float = 0.1,
    ):
        super().__init__(shape)
        if any(s is None for s in shape) or len(shape) not in (2, 3):
            raise ValueError(
                "graph_convexp needs shape=(N, C) for graphs or (C, H, W) for images, all sizes fixed; "
                f"got {tuple(shape)}"
            )
        self.image = len(shape) == 3
        if self.image:
            C, H, W = (int(s) for s in shape)
            if adjacency is not None and tuple(adjacency.shape) != (H * W, H * W):
                raise ValueError(
                    f"graph_convexp on images of shape {tuple(shape)} needs an adjacency over the H*W = {H * W} "
                    f"pixels, shape [{H * W}, {H * W}], got {list(adjacency.shape)} (or pass none: 4-neighbour grid)"
                )
            if adjacency is None:
                adjacency = Fn.grid_adjacency(H, W)
            N = H * W
        else:
            N, C = (int(s) for s in shape)
            if adjacency is None:
                raise ValueError("graph_convexp with shape=(N, C) needs adjacency=<[N, N] tensor>")
        if not isinstance(adjacency, Tensor):
            adjacency = torch.as_tensor(adjacency)
        if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
            raise ValueError(f"graph_convexp needs a square adjacency [N, N], got shape {list(adjacency.shape)}")
        if adjacency.shape[0] != N:
            raise ValueError(
                f"graph_convexp: adjacency has {adjacency.shape[0]} nodes but shape={tuple(shape)} has N = {N}; "
                f"pass an [{N}, {N}] adjacency"
            )
        self.rho = float(rho)
        self.train_terms = Fn.conv_exp_terms(self.rho, train_tol)
        self.eval_terms = Fn.conv_exp_terms(self.rho, eval_tol)
        self.register_buffer("adjacency", Fn.normalize_adjacency(adjacency.to(torch.get_default_dtype())))
        self.self_weight = nn.Parameter(init_scale * torch.randn(C, C))
        self.neighbour_weight = nn.Parameter(init_scale * torch.randn(C, C))

    @property
    def terms(self) -> int:
        """Number of series terms used in the current mode."""
        return self.train_terms if self.training else self.eval_terms

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        """``(W0, W1)`` after the rescaling that guarantees ``||M||_2 <= rho``."""
        bound = self.self_weight.norm() + self.neighbour_weight.norm()  # >= ||M||_2 since ||A_norm||_2 <= 1
        factor = torch.clamp(self.rho / bound.clamp_min(1e-12), max=1.0)
        return self.self_weight * factor, self.neighbour_weight * factor

    def _to_nodes(self, x: Tensor) -> Tensor:
        if not self.image:
            return x
        return x.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C]

    def _from_nodes(self, h: Tensor, like: Tensor) -> Tensor:
        if not self.image:
            return h
        return h.transpose(1, 2).reshape(like.shape)  # [B, H*W, C] -> [B, C, H, W]

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        w0, w1 = self.effective_weights()
        h = Fn.graph_conv_exp(self._to_nodes(x), self.adjacency, w0, w1, terms=self.terms)
        logdet = Fn.graph_conv_exp_logdet(self.adjacency, w0, w1)
        return self._from_nodes(h, x), logdet.expand(x.shape[0])

    def _inverse(self, y: Tensor) -> Tensor:
        w0, w1 = self.effective_weights()
        h = Fn.inv_graph_conv_exp(self._to_nodes(y), self.adjacency, w0, w1, terms=self.terms)
        return self._from_nodes(h, y)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, rho={self.rho}, train_terms={self.train_terms}, eval_terms={self.eval_terms}"
