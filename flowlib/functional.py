"""Stateless operations the layers wrap: the convolution exponential and its inverse.

The convolution exponential (Hoogeboom et al., 2020) is ``exp(M) x`` where ``M`` is
the matrix of a same-padded convolution with ``kernel``. ``M`` is never built: the
series ``x + Mx + M^2 x / 2! + ...`` only needs convolutions. The inverse is the
same series with ``-kernel`` and the log-determinant is ``tr(M)``.
Taught in ``notebooks/02_convolution_exponential.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .linalg import operator_norm_bound, taylor_remainder_bound

__all__ = [
    "conv_exp",
    "inv_conv_exp",
    "conv_exp_logdet",
    "conv_exp_terms",
    "conv_matrix",
    "SeriesNotConverged",
]

DEFAULT_TOL = 1e-8
MAX_TERMS = 50


class SeriesNotConverged(RuntimeError):
    """Raised when the adaptive series has not converged within ``max_terms`` terms."""


def _check(x: Tensor, kernel: Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"conv_exp expects x of shape [B, C, H, W], got {list(x.shape)}")
    if kernel.dim() != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[1] != x.shape[1]:
        raise ValueError(
            f"conv_exp expects a kernel of shape [C, C, k, k] with C = {x.shape[1]} (the channels of x), "
            f"got {list(kernel.shape)}"
        )
    if kernel.shape[-1] % 2 == 0 or kernel.shape[-2] % 2 == 0:
        raise ValueError(f"conv_exp needs an odd kernel size (same padding), got {list(kernel.shape[-2:])}")


def conv_exp_terms(norm: float, tol: float = DEFAULT_TOL, max_terms: int = MAX_TERMS) -> int:
    """Fewest series terms ``n`` with ``norm^(n+1)/(n+1)! * e^norm <= tol``.

    With ``norm >= ||M||_2`` this bounds the truncation error of
    ``conv_exp(x, kernel, terms=n)`` by ``tol * ||x||`` (see
    :func:`flowlib.linalg.taylor_remainder_bound`). Layers call it once to pick a
    fixed number of terms, so training never synchronises with the device.
    """
    for n in range(max_terms + 1):
        if taylor_remainder_bound(norm, n) <= tol:
            return n
    raise SeriesNotConverged(
        f"a series with ||M|| <= {norm:.3g} needs more than {max_terms} terms for tolerance {tol:g}; "
        "scale the kernel down (or raise max_terms)"
    )


def conv_exp(
    x: Tensor,
    kernel: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """``exp(M) x`` for the same-padded convolution ``M`` with ``kernel``, by its power series.

    Parameters
    ----------
    x : Tensor, shape ``[B, C, H, W]``
    kernel : Tensor, shape ``[C, C, k, k]``, ``k`` odd (cross-correlation, as ``F.conv2d``).
    terms : int, optional
        Use exactly this many terms (no device synchronisation: what layers use
        during training). If ``None``, add terms until the newest one is below
        ``tol`` times ``max |x|`` (checked after every term).
    tol : float
        Tolerance of the adaptive mode (relative to ``max |x|``).
    max_terms : int
        Cap of the adaptive mode: :class:`SeriesNotConverged` is raised beyond it.

    Returns
    -------
    Tensor, shape ``[B, C, H, W]``.

    Notes
    -----
    ``exp(M) x = sum_k M^k x / k!``. Each term is one convolution of the previous
    one: cost ``n`` convolutions, memory two activations (plus autograd's ``n``).
    The error after ``n`` terms is at most ``||M||^(n+1)/(n+1)! e^||M|| ||x||``
    with ``||M||_2 <= operator_norm_bound(kernel)``; :func:`conv_exp_terms` turns
    that into a number of terms. The inverse is ``exp(-M)``: :func:`inv_conv_exp`.

    Examples
    --------
    >>> x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    >>> k = 0.1 * torch.randn(3, 3, 3, 3, dtype=torch.float64)
    >>> torch.allclose(inv_conv_exp(conv_exp(x, k), k), x)
    True
    """
    _check(x, kernel)
    padding = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    result, term = x, x
    if terms is not None:
        for i in range(1, terms + 1):
            term = F.conv2d(term, kernel, padding=padding) / i
            result = result + term
        return result
    scale = x.detach().abs().max().clamp_min(torch.finfo(x.dtype).tiny)
    for i in range(1, max_terms + 1):
        term = F.conv2d(term, kernel, padding=padding) / i
        result = result + term
        if term.detach().abs().max() <= tol * scale:
            return result
    bound = float(operator_norm_bound(kernel.detach()))
    raise SeriesNotConverged(
        f"conv_exp did not converge to tol={tol:g} in {max_terms} terms "
        f"(kernel operator norm bound {bound:.3g}); scale the kernel down or pass terms= explicitly"
    )


def inv_conv_exp(
    y: Tensor,
    kernel: Tensor,
    terms: int | None = None,
    tol: float = DEFAULT_TOL,
    max_terms: int = MAX_TERMS,
) -> Tensor:
    """Inverse of :func:`conv_exp`: ``exp(M)^{-1} y = exp(-M) y``, the same series with ``-kernel``."""
    return conv_exp(y, -kernel, terms=terms, tol=tol, max_terms=max_terms)


def conv_exp_logdet(kernel: Tensor, height: int, width: int) -> Tensor:
    """``log |det exp(M)| = tr(M) = H * W * tr(kernel[:, :, centre, centre])``.

    Every pixel's output channel ``c`` depends on its own input channel ``c``
    through the centre tap, so each of the ``H*W*C`` diagonal entries of ``M`` is
    ``kernel[c, c, centre, centre]`` (zero padding does not touch the centre tap).
    """
    ci, cj = kernel.shape[-2] // 2, kernel.shape[-1] // 2
    return height * width * torch.diagonal(kernel[:, :, ci, cj]).sum()


def conv_matrix(kernel: Tensor, height: int, width: int) -> Tensor:
    """The explicit ``(C*H*W) x (C*H*W)`` matrix of the same-padded convolution with ``kernel``.

    Column ``j`` is the convolution of the ``j``-th basis image (flattened in
    ``[C, H, W]`` order). Only for small images: used by tests and notebook 02 to
    compare :func:`conv_exp` with a dense ``expm``.
    """
    channels = kernel.shape[1]
    n = channels * height * width
    basis = torch.eye(n, dtype=kernel.dtype, device=kernel.device).reshape(n, channels, height, width)
    padding = (kernel.shape[-2] // 2, kernel.shape[-1] // 2)
    columns = F.conv2d(basis, kernel, padding=padding)  # [n, C, H, W]: image of basis vector j
    return columns.reshape(n, n).T

