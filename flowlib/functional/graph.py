"""The graph convolution exponential: ``exp(M) x`` with ``M x = x W0 + (A x) W1`` on node features.

Permutation-equivariant counterpart of :mod:`flowlib.functional.convolution` (Hoogeboom et al.
2020): the same series (:func:`~flowlib.functional.series.exp_series`), a message-passing step
instead of a convolution. Taught in ``notebooks/02_convolution_exponential.ipynb`` (graph section).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .series import DEFAULT_TOL, MAX_TERMS, exp_series

__all__ = [
    "normalize_adjacency",
    "grid_adjacency",
    "graph_conv_exp",
    "inv_graph_conv_exp",
    "graph_conv_exp_logdet",
    "graph_conv_exp_norm_bound",
    "adjacency_eigenvalue_range",
]


def normalize_adjacency(adjacency: Tensor) -> Tensor:
    """``A / sqrt(||A||_1 ||A||_inf)`` so that ``||A_norm||_2 <= 1``.

    ``||A||_2 <= sqrt(||A||_1 ||A||_inf)`` (Hoelder), so the normalised matrix has
    spectral norm at most 1. For a symmetric 0/1 adjacency this is division by the
    maximum degree. An all-zero matrix is returned unchanged. Raises ``ValueError``
    for a non-square or non-finite matrix.
    """
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be a square [N, N] matrix, got shape {list(adjacency.shape)}")
    if not torch.isfinite(adjacency).all():
        raise ValueError("adjacency has NaN/Inf entries")
    one = adjacency.abs().sum(0).amax()  # max column sum
    inf = adjacency.abs().sum(1).amax()  # max row sum
    scale = torch.sqrt(one * inf)
    return adjacency / torch.where(scale > 0, scale, torch.ones_like(scale))


def grid_adjacency(height: int, width: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """0/1 adjacency ``[H*W, H*W]`` of the 4-neighbour grid graph, pixels in raster order (no self loops)."""
    index = torch.arange(height * width).reshape(height, width)  # [H, W]: node id of each pixel
    adjacency = torch.zeros(height * width, height * width, dtype=dtype)
    right = (index[:, :-1].reshape(-1), index[:, 1:].reshape(-1))
    down = (index[:-1, :].reshape(-1), index[1:, :].reshape(-1))
    for a, b in (right, down):
        adjacency[a, b] = 1
        adjacency[b, a] = 1
    return adjacency


def _graph_check(x: Tensor, adjacency: Tensor, self_weight: Tensor, neighbour_weight: Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"graph_conv_exp expects node features x of shape [B, N, C], got {list(x.shape)}")
    N, C = x.shape[1:]
    if adjacency.shape != (N, N):
        raise ValueError(
            f"graph_conv_exp expects an adjacency of shape [N, N] = [{N}, {N}], got {list(adjacency.shape)}"
        )
    for name, w in (("self_weight", self_weight), ("neighbour_weight", neighbour_weight)):
        if w.shape != (C, C):
            raise ValueError(f"graph_conv_exp expects {name} of shape [C, C] = [{C}, {C}], got {list(w.shape)}")


def adjacency_eigenvalue_range(adjacency: Tensor) -> Tensor | None:
    """An interval ``[lo, hi]`` (shape ``[2]``) holding every eigenvalue of a symmetric adjacency, else ``None``.

    ``lo, hi`` are the extreme eigenvalues (one float64 ``eigvalsh`` of the ``N x N``
    matrix, ``O(N^3)``: layers call it once at construction), widened outwards by
    ``1e-6`` of the spectral radius so that rounding (e.g. storing them in float32)
    cannot move them inwards; :func:`graph_conv_exp_norm_bound` stays a guaranteed bound
    and is loose by at most that ``1e-6``. Symmetry is checked exactly (``A == A^T``),
    which :func:`normalize_adjacency` preserves.
    """
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(f"adjacency must be a square [N, N] matrix, got shape {list(adjacency.shape)}")
    if not torch.equal(adjacency, adjacency.T):
        return None
    eigenvalues = torch.linalg.eigvalsh(adjacency.double())  # ascending
    margin = 1e-6 * eigenvalues.abs().max()
    return torch.stack([eigenvalues[0] - margin, eigenvalues[-1] + margin]).to(adjacency.dtype)


def graph_conv_exp_norm_bound(
    adjacency: Tensor,
    self_weight: Tensor,
    neighbour_weight: Tensor,
    eigenvalue_range: Tensor | None = None,
) -> Tensor:
    """Guaranteed upper bound on ``||M||_2`` for the graph convolution ``M x = x W0 + (A x) W1``.

    Symmetric ``A`` (pass ``eigenvalue_range = adjacency_eigenvalue_range(A)``): the bound is
    the exact norm. With ``A = U diag(lambda) U^T``, ``M = I (x) W0^T + A (x) W1^T`` is
    block-diagonal in the eigenbasis with blocks ``W0^T + lambda_i W1^T``, so
    ``||M||_2 = max_i sigma_max(W0 + lambda_i W1)``; ``lambda -> ||W0 + lambda W1||_2``
    is convex, so the maximum over the eigenvalues is attained at ``lambda_min`` or
    ``lambda_max``: two ``C x C`` spectral norms per call.

    Otherwise (directed graphs): ``||W0||_2 + sqrt(||A||_1 ||A||_inf) ||W1||_2``
    (triangle inequality and Hoelder; ``sqrt(||A||_1 ||A||_inf) = 1`` after
    :func:`normalize_adjacency`), a guaranteed but looser bound.

    Examples
    --------
    >>> A = normalize_adjacency(grid_adjacency(3, 3, torch.float64))
    >>> w0, w1 = torch.randn(2, 2, 2, dtype=torch.float64)
    >>> M = torch.kron(torch.eye(9, dtype=torch.float64), w0.T.contiguous()) + torch.kron(A, w1.T.contiguous())
    >>> exact = graph_conv_exp_norm_bound(A, w0, w1, adjacency_eigenvalue_range(A))
    >>> bool(torch.isclose(exact, torch.linalg.matrix_norm(M, ord=2)))
    True
    """
    if eigenvalue_range is not None:
        blocks = self_weight + eigenvalue_range[:, None, None] * neighbour_weight  # [2, C, C]
        return torch.linalg.matrix_norm(blocks, ord=2).amax()
    a_norm = torch.sqrt(adjacency.abs().sum(0).amax() * adjacency.abs().sum(1).amax())
    return torch.linalg.matrix_norm(self_weight, ord=2) + a_norm * torch.linalg.matrix_norm(neighbour_weight, ord=2)


def graph_conv_exp(
    x: Tensor,
    adjacency: Tensor,
    self_weight: Tensor,
    neighbour_weight: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """Graph convolution exponential ``exp(M) x`` with ``M x = x W0 + (A x) W1`` (Hoogeboom et al. 2020).

    Parameters
    ----------
    x : Tensor, shape ``[B, N, C]`` (node features).
    adjacency : Tensor, shape ``[N, N]`` (already normalised, e.g. :func:`normalize_adjacency`).
    self_weight, neighbour_weight : Tensor, shape ``[C, C]`` (``W0`` and ``W1``).
    terms, tol, max_terms : as in :func:`conv_exp` (fixed terms, or adaptive until the
        newest term is below ``tol * max |x|``; :class:`SeriesNotConverged` beyond ``max_terms``).

    Returns
    -------
    Tensor, shape ``[B, N, C]``.

    Notes
    -----
    On ``vec(x)`` (row-major ``[N, C]``) ``M = I_N (x) W0^T + A (x) W1^T``, so permuting
    the nodes of ``x`` and of ``A`` (``P A P^T``) permutes ``exp(M) x`` the same way:
    the map is permutation equivariant. Each term costs one ``[N, N] x [N, C]``
    product and two ``[C, C]`` products per sample (dense ``A``: ``O(B N^2 C)``);
    the truncation error after ``n`` terms is at most ``b^(n+1)/(n+1)! e^b ||x||``
    with ``b = graph_conv_exp_norm_bound(...)`` (see :func:`conv_exp_terms`).
    Inverse: :func:`inv_graph_conv_exp`; log-determinant: :func:`graph_conv_exp_logdet`.

    Examples
    --------
    >>> A = normalize_adjacency(grid_adjacency(2, 3, torch.float64))
    >>> x = torch.randn(2, 6, 3, dtype=torch.float64)
    >>> w0, w1 = 0.1 * torch.randn(2, 3, 3, dtype=torch.float64)
    >>> torch.allclose(inv_graph_conv_exp(graph_conv_exp(x, A, w0, w1), A, w0, w1), x)
    True
    """
    _graph_check(x, adjacency, self_weight, neighbour_weight)

    def apply(t: Tensor) -> Tensor:
        return t @ self_weight + torch.matmul(adjacency, t) @ neighbour_weight  # [B, N, C]

    def describe() -> str:
        bound = graph_conv_exp_norm_bound(adjacency.detach(), self_weight.detach(), neighbour_weight.detach())
        return f"graph_conv_exp (||M|| bound {float(bound):.3g}); scale the weights down or pass terms= explicitly"

    return exp_series(apply, x, terms, tol, max_terms, describe)


def inv_graph_conv_exp(
    y: Tensor,
    adjacency: Tensor,
    self_weight: Tensor,
    neighbour_weight: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """Inverse of :func:`graph_conv_exp`: ``exp(-M) y``, the same series with ``-W0`` and ``-W1``."""
    return graph_conv_exp(y, adjacency, -self_weight, -neighbour_weight, terms=terms, tol=tol, max_terms=max_terms)


def graph_conv_exp_logdet(adjacency: Tensor, self_weight: Tensor, neighbour_weight: Tensor) -> Tensor:
    """``log |det exp(M)| = tr(M) = N tr(W0) + tr(A) tr(W1)``.

    ``tr(I_N (x) W0^T) = N tr(W0)`` and ``tr(A (x) W1^T) = tr(A) tr(W1)`` (trace of a
    Kronecker product); ``tr(A) = 0`` for a graph without self loops.
    """
    N = adjacency.shape[0]
    trace_a = torch.diagonal(adjacency).sum()
    return N * torch.diagonal(self_weight).sum() + trace_a * torch.diagonal(neighbour_weight).sum()
