"""Convolution exponential and graph convolution exponential layers: ``convexp``, ``graph_convexp``.

Both compute ``exp(M) x`` for a linear map ``M`` that is never built as a matrix:
the power series ``x + M x + M^2 x / 2! + ...`` only needs applications of ``M``
(a convolution, or a message-passing step on a graph). Invertibility, the inverse
(``exp(-M)``) and the log-determinant (``tr M``) come for free; see
:mod:`flowlib.functional`. Taught in ``notebooks/02_convolution_exponential.ipynb``.

Conditioning. Each layer rescales its weights so that a guaranteed *upper bound*
``b >= ||M||_2`` never exceeds ``rho`` (``RHO = 0.95`` by default)::

    K_eff = K * min(1, rho / b(K))

The rescaling is part of the parametrisation (differentiable, applied on every
call), so it also holds after any optimiser step or random perturbation. Where it
is active the map does not depend on the scale of ``K`` (gradients are orthogonal
to ``K``), so under Adam the raw kernel's norm drifts upwards and ``K_eff`` tends to
stay on the surface ``b = rho`` once it has reached it (seen in the one-layer fit
of ``tests/test_convexp.py``: the raw kernel's bound grows to ~1.3 within 60 steps
while ``K_eff``'s stays at ``rho``). Then the
series truncated after ``n`` terms has error at most
``rho^(n+1) / (n+1)! * e^rho * ||x||`` (:func:`flowlib.linalg.taylor_remainder_bound`),
and the number of terms is fixed once at construction by
:func:`flowlib.functional.conv_exp_terms`: with ``rho = 0.95`` that is 9 terms for the
training tolerance ``1e-6`` (below the rounding error of a chain of float32
convolutions) and 14 terms for the evaluation tolerance ``1e-12``.

Which bound. ``convexp`` uses :func:`flowlib.functional.conv_spectral_norm_bound`:
the exact spectral norm of the circular convolution on the ``(H + k // 2) x
(W + k // 2)`` torus (FFT of the kernel, per-frequency ``C x C`` singular values),
which contains the zero-padded map, so it is a guarantee, not an estimate. Measured
(float64, dense truth from ``conv_matrix``): bound / true ``||M||_2`` = 1.004-1.010
for random ``C = 12`` kernels on ``16 x 16`` and 1.01-1.035 for ``C = 48`` on
``8 x 8``, exactly 1 for centre-tap and single-off-centre-tap kernels; the sum of
per-tap Frobenius norms (:func:`flowlib.linalg.operator_norm_bound`, used before)
is 5x (``C = 12``) to 10x (``C = 48``) the true norm, which capped the true
``||M||_2`` at ~0.10 with ``rho = 0.5``; now it reaches ~0.93 with ``rho = 0.95``
(the official code's spectral normalisation coefficient). The alternative, a power
iteration with a persistent vector (as in the official code), costs ~1 ms per layer
instead of 4-10 ms but gives a *lower* estimate of the norm (a safety factor can
only guess the gap), so the guaranteed FFT bound was chosen. Time per call of the
bound (forward + backward, one CPU thread, one layer, idle core): 4 ms for ``C = 12``
at ``16 x 16``, 10 ms for ``C = 48`` at ``8 x 8``, i.e. 15-25% of the layer's own
forward + backward at batch 32 (:class:`ConvExp` states the totals). For an image size ``None`` in the
layer's shape the bound is computed for the size of each input (so ``K_eff``
depends on the resolution, and the inverse, which sees the same size, matches).

``graph_convexp`` uses the exact ``||M||_2`` for a symmetric adjacency (its two
extreme eigenvalues, computed once at construction) and a guaranteed looser bound
for a directed one (:func:`flowlib.functional.graph_conv_exp_norm_bound`).

Explicit term counts. ``train_terms=`` / ``eval_terms=`` override the derived
counts, e.g. the official code's 6 training and 13 evaluation terms:
``make("convexp", shape, train_terms=6, eval_terms=13)``. The tolerances are then
not enforced (no error bound then beyond ``taylor_remainder_bound(rho, n)``: 3.6e-4
for 6 terms at ``rho = 0.95``, 1.4e-11 for 13).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..core import Flow, sample_shape
from .linear import Conv1x1LU
from .registry import register

__all__ = ["ConvExp", "GraphConvExp", "RHO", "TRAIN_TOL", "EVAL_TOL"]

RHO = 0.95  # bound on ||M||_2 enforced by the rescaling of the weights
TRAIN_TOL = 1e-6  # series tolerance (relative to ||x||) in training mode: 9 terms at rho = 0.95
EVAL_TOL = 1e-12  # series tolerance in eval mode (float64 checks, sampling): 14 terms at rho = 0.95


def _series_terms(rho: float, tol: float, terms: int | None, name: str) -> int:
    """``terms`` if given (an explicit override, checked ``>= 1``), else ``conv_exp_terms(rho, tol)``."""
    if terms is None:
        return Fn.conv_exp_terms(rho, tol)
    if isinstance(terms, bool) or not isinstance(terms, int) or terms < 1:
        raise ValueError(f"{name} must be an integer >= 1 (series terms), got {terms!r}; or None to derive it from rho")
    return terms


@register("convexp", role="mixing")
class ConvExp(Flow):
    """Convolution exponential after a PLU 1x1 convolution (Hoogeboom et al. 2020).

    Formula: ``y = exp(M) (Q x)`` where ``Q`` is a PLU-parametrised 1x1 convolution
    (:class:`flowlib.layers.linear.Conv1x1LU`) and ``M`` the zero-padded ``k x k``
    convolution with ``K_eff = K * min(1, rho / b)``, ``b =
    conv_spectral_norm_bound(K, H, W) >= ||M||_2`` (so ``||M||_2 <= rho``), computed
    by the series ``sum_{i<=n} M^i Q x / i!`` with ``n = conv_exp_terms(rho, tol)``
    fixed at construction (``train_terms`` in training mode, ``eval_terms`` in eval
    mode; 9 and 14 at the default ``rho = 0.95``).

    Inverse: ``x = Q^{-1} exp(-M) y``: the same series with ``-K_eff``, then the
    inverse 1x1 convolution. Truncation error of each series ``<= tol * ||.||_2``
    (with derived term counts).

    Log-determinant: ``H W tr(K_eff[:, :, c, c]) + H W sum(logs_Q)`` (exact for
    ``exp(M)``; the truncated series differs by at most the tolerance).

    Cost: ``n`` convolutions ``C -> C`` with a ``k x k`` kernel plus one 1x1
    convolution: ``O(n B C^2 k^2 H W)``; memory ``n`` activations for autograd; plus
    the bound, independent of the batch. Parameters ``C^2 k^2 + C^2 + C``. Measured
    on the shared 2-core CPU under load (one thread, float32, batch 32, forward +
    backward, 2026-12-01): ``C = 12`` at ``16 x 16``: 83 ms with the default 9 terms,
    63 ms with the official 6, of which the bound is 14 ms; ``C = 48`` at ``8 x 8``:
    119 ms / 87 ms, bound 31 ms (on an idle core the bound takes 4 ms and 10 ms).

    Shapes: ``x, y: [B, C, H, W]``, ``logdet: [B]``.

    Reference: Hoogeboom, Garcia Satorras, Tomczak & Welling, "The Convolution
    Exponential and Generalized Sylvester Flows", NeurIPS 2020. Taught in notebook 02.

    Arguments:
        shape: ``(C, H, W)``; ``H`` and ``W`` may be ``None`` (the bound then uses each input's size).
        kernel_size: odd ``k`` (default 3).
        rho: bound enforced on ``||M||_2`` (default :data:`RHO` = 0.95).
        train_tol, eval_tol: series tolerances that fix the number of terms.
        train_terms, eval_terms: explicit term counts (integers >= 1) that override the
            tolerances: no error bound then beyond ``taylor_remainder_bound(rho, n)``.
            The official code uses 6 and 13.
        init_scale: standard deviation of the initial kernel entries.

    Example:

    >>> import flowlib
    >>> layer = flowlib.layers.make("convexp", shape=(4, 8, 8))
    >>> x = torch.randn(2, 4, 8, 8); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))

    The official code's term counts instead of the derived ones:

    >>> layer = flowlib.layers.make("convexp", shape=(3, 8, 8), train_terms=6, eval_terms=13)
    >>> layer.terms, layer.eval().terms
    (6, 13)
    """

    def __init__(
        self,
        shape,
        kernel_size: int = 3,
        rho: float = RHO,
        train_tol: float = TRAIN_TOL,
        eval_tol: float = EVAL_TOL,
        init_scale: float = 0.05,
        train_terms: int | None = None,
        eval_terms: int | None = None,
    ):
        super().__init__(shape)
        sample_shape(shape, "convexp")
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"convexp needs an odd kernel_size (same padding), got {kernel_size}")
        if not 0 < rho:
            raise ValueError(f"convexp needs rho > 0, got {rho}")
        C = int(shape[0])
        self.rho = float(rho)
        self.train_terms = _series_terms(self.rho, train_tol, train_terms, "train_terms")
        self.eval_terms = _series_terms(self.rho, eval_tol, eval_terms, "eval_terms")
        self.mixing = Conv1x1LU(shape)
        self.kernel = nn.Parameter(init_scale * torch.randn(C, C, kernel_size, kernel_size))

    @property
    def terms(self) -> int:
        """Number of series terms used in the current mode."""
        return self.train_terms if self.training else self.eval_terms

    def effective_kernel(self, height: int | None = None, width: int | None = None) -> Tensor:
        """``K_eff = K * min(1, rho / conv_spectral_norm_bound(K, H, W))``, shape ``[C, C, k, k]``.

        ``height, width`` default to the layer's shape; they are required where it has ``None``.
        """
        height = self.shape[1] if height is None else height
        width = self.shape[2] if width is None else width
        if height is None or width is None:
            raise ValueError(
                f"convexp with shape={self.shape} has no fixed image size: call effective_kernel(height, width)"
            )
        bound = Fn.conv_spectral_norm_bound(self.kernel, int(height), int(width))
        return Fn.rescale_to_bound(self.kernel, bound, self.rho)

    def transform(self, x: Tensor) -> Tensor:
        """``exp(M) Q x`` without the log-determinant (used by :class:`~flowlib.layers.sylvester.ConvSylvester`)."""
        mixed, _ = self.mixing._forward(x)
        return Fn.conv_exp(mixed, self.effective_kernel(*x.shape[-2:]), terms=self.terms)

    def inverse_transform(self, y: Tensor) -> Tensor:
        """``Q^{-1} exp(-M) y``."""
        return self.mixing._inverse(Fn.inv_conv_exp(y, self.effective_kernel(*y.shape[-2:]), terms=self.terms))

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kernel = self.effective_kernel(*x.shape[-2:])
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
    degree). The weights are rescaled by ``min(1, rho / b)`` with ``b =
    graph_conv_exp_norm_bound(...) >= ||M||_2``, which bounds ``||M||_2 <= rho``: for a
    symmetric adjacency ``b`` is the exact ``||M||_2 = max(sigma_max(W0 + lambda W1))``
    over the extreme eigenvalues ``lambda`` of ``A_norm`` (computed once at
    construction, buffer ``eigenvalue_range``); for a directed graph the guaranteed
    ``||W0||_2 + ||W1||_2`` (looser). The series uses a fixed number of terms as in
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
        rho, train_tol, eval_tol, train_terms, eval_terms: as in :class:`ConvExp`
            (explicit term counts: no error bound then).
        init_scale: standard deviation of the initial weight entries.

    Example:

    >>> import flowlib
    >>> adjacency = flowlib.functional.grid_adjacency(2, 3)  # 6 nodes
    >>> layer = flowlib.layers.make("graph_convexp", shape=(6, 4), adjacency=adjacency)
    >>> x = torch.randn(2, 6, 4); y, logdet = layer(x)
    >>> torch.allclose(layer.inverse(y), x, atol=1e-5), logdet.shape
    (True, torch.Size([2]))
    """

    def __init__(
        self,
        shape,
        adjacency: Tensor | None = None,
        rho: float = RHO,
        train_tol: float = TRAIN_TOL,
        eval_tol: float = EVAL_TOL,
        init_scale: float = 0.1,
        train_terms: int | None = None,
        eval_terms: int | None = None,
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
        if not 0 < rho:
            raise ValueError(f"graph_convexp needs rho > 0, got {rho}")
        self.rho = float(rho)
        self.train_terms = _series_terms(self.rho, train_tol, train_terms, "train_terms")
        self.eval_terms = _series_terms(self.rho, eval_tol, eval_terms, "eval_terms")
        self.register_buffer("adjacency", Fn.normalize_adjacency(adjacency.to(torch.get_default_dtype())))
        self.register_buffer("eigenvalue_range", Fn.adjacency_eigenvalue_range(self.adjacency))  # None: directed
        self.self_weight = nn.Parameter(init_scale * torch.randn(C, C))
        self.neighbour_weight = nn.Parameter(init_scale * torch.randn(C, C))

    @property
    def terms(self) -> int:
        """Number of series terms used in the current mode."""
        return self.train_terms if self.training else self.eval_terms

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        """``(W0, W1)`` after the rescaling that guarantees ``||M||_2 <= rho``."""
        bound = Fn.graph_conv_exp_norm_bound(
            self.adjacency, self.self_weight, self.neighbour_weight, self.eigenvalue_range
        )
        return Fn.rescale_to_bound(self.self_weight, bound, self.rho), Fn.rescale_to_bound(
            self.neighbour_weight, bound, self.rho
        )

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
